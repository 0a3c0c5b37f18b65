"""Exportable stand-ins for what ``torch.export`` cannot keep dynamic, and the exporters'
shared pieces (used by :mod:`avse.export` and :mod:`avse.export_stream`).

:class:`ScanRNN` stands in for ``nn.LSTM`` / ``nn.GRU``, :class:`OverlapAddISTFT` for the
STFT decoder's ``torch.istft`` (which fixes the length).

``torch.export`` in this torch freezes the time axis of ``nn.LSTM``: the traced graph only
runs at the example length ("You marked t as dynamic but your code specialized it"). The
stand-ins below compute the same recurrence with ``torch._higher_order_ops.scan``, which
``torch.export`` keeps as a loop over a dynamic length and the ONNX exporter writes as an
ONNX ``Scan``. :func:`swap_rnns` replaces every ``nn.LSTM`` / ``nn.GRU`` of a model (a copy)
by one, weights shared, so the exported graph computes what the model computes.
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from contextlib import redirect_stderr, redirect_stdout

import torch
import torch.nn.functional as F
from torch import nn

ROI_SIZE = 88
"""Height and width of the mouth ROIs of the example input (the crops' size)."""

SUPPORTED = (nn.LSTM, nn.GRU)


def _lstm_cell(x_proj, h, c, w_hh, b_hh):
    gates = x_proj + h @ w_hh.t() + b_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(x_proj, h, w_hh, b_hh):
    hr, hz, hn = (h @ w_hh.t() + b_hh).chunk(3, dim=-1)
    xr, xz, xn = x_proj.chunk(3, dim=-1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


class ScanRNN(nn.Module):
    """``nn.LSTM`` / ``nn.GRU`` (batch-first or not, any layers, bi- or unidirectional, no
    projection, zero initial state) as scans; ``forward`` returns ``(output, None)``: callers
    of the swapped modules in avse read only the output."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        if not isinstance(rnn, SUPPORTED) or getattr(rnn, "proj_size", 0):
            raise TypeError(f"cannot stand in for {type(rnn).__name__}")
        self.rnn = rnn
        self.kind = "lstm" if isinstance(rnn, nn.LSTM) else "gru"

    def _weights(self, layer: int, reverse: bool):
        sfx = f"_l{layer}" + ("_reverse" if reverse else "")
        r = self.rnn
        zeros = torch.zeros(getattr(r, "weight_ih" + sfx).shape[0], dtype=r.weight_ih_l0.dtype,
                            device=r.weight_ih_l0.device)
        b_ih = getattr(r, "bias_ih" + sfx) if r.bias else zeros
        b_hh = getattr(r, "bias_hh" + sfx) if r.bias else zeros
        return getattr(r, "weight_ih" + sfx), b_ih, getattr(r, "weight_hh" + sfx), b_hh

    def _direction(self, x, layer: int, reverse: bool):
        """x ``[T, B, D]`` -> ``[T, B, H]``.

        The scan is the ``scan`` higher-order op called directly, its weights passed as
        inputs: ``torch._higher_order_ops.scan.scan`` compiles its loop with dynamo, whose
        cache (one code object for every scan) compares a later scan's dynamic length with
        an earlier one's static length (the intra-chunk RNN's chunk size, the intra-frame
        RNN's frequency steps) and ties the length axis to the example's.
        """
        from torch._higher_order_ops.scan import scan_op

        w_ih, b_ih, w_hh, b_hh = self._weights(layer, reverse)
        proj = x @ w_ih.t() + b_ih  # the input projection of every step at once
        if reverse:
            proj = proj.flip(0)
        h0 = x.new_zeros(x.shape[1], self.rnn.hidden_size)
        if self.kind == "lstm":
            def step(h, c, xt, w, b):
                h, c = _lstm_cell(xt, h, c, w, b)
                return [h, c, h.clone()]
            ys = scan_op(step, [h0, h0.clone()], [proj], (w_hh, b_hh))[-1]
        else:
            def step(h, xt, w, b):
                h = _gru_cell(xt, h, w, b)
                return [h, h.clone()]
            ys = scan_op(step, [h0], [proj], (w_hh, b_hh))[-1]
        return ys.flip(0) if reverse else ys

    def forward(self, x, hx=None):
        if hx is not None:
            raise ValueError("ScanRNN runs from a zero initial state only")
        if self.rnn.batch_first:
            x = x.transpose(0, 1)
        for layer in range(self.rnn.num_layers):
            outs = [self._direction(x, layer, False)]
            if self.rnn.bidirectional:
                outs.append(self._direction(x, layer, True))
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        return (x.transpose(0, 1) if self.rnn.batch_first else x), None


def swap_rnns(model: nn.Module) -> tuple[nn.Module, int]:
    """``(copy of model with every nn.LSTM / nn.GRU wrapped in ScanRNN, how many)``; the
    model itself is returned untouched when it has none."""
    names = [n for n, m in model.named_modules() if isinstance(m, SUPPORTED)]
    if not names:
        return model, 0
    model = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, ScanRNN(getattr(parent, child)))
    return model, len(names)


class OverlapAddISTFT(nn.Module):
    """The inverse STFT of :class:`~avse.models.decoders.STFTDecoder` without ``torch.istft``
    (which ``torch.export`` cannot keep dynamic): feats ``[B, 2F, L]`` (real; imag) ->
    wav ``[B, length]``.

    Each frame's inverse real DFT is one matrix product (the ``irfft`` basis: the imaginary
    parts of the DC and Nyquist bins are ignored, as ``irfft``), times the window (zero-padded
    to ``n_fft``, centred); the frames are overlap-added by a transposed convolution with the
    identity kernel (stride ``hop``), divided by the overlap-added squared window, and the
    ``n_fft // 2`` samples of the centring padding dropped; trimmed or zero-padded to
    ``length``. Equal to ``torch.istft(..., center=True, length=length)`` to float rounding.
    """

    def __init__(self, n_fft: int, hop: int, win: int):
        super().__init__()
        self.n_fft, self.hop, self.n_freq = int(n_fft), int(hop), int(n_fft) // 2 + 1
        n = torch.arange(self.n_fft, dtype=torch.float64)
        k = torch.arange(self.n_freq, dtype=torch.float64)
        angle = 2 * torch.pi * torch.outer(n, k) / self.n_fft  # [n_fft, F]
        weight = torch.full((self.n_freq,), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if self.n_fft % 2 == 0:
            weight[-1] = 1.0
        left = (self.n_fft - int(win)) // 2
        window = torch.zeros(self.n_fft, dtype=torch.float64)
        window[left:left + int(win)] = torch.hann_window(int(win), dtype=torch.float64)
        basis = torch.cat((torch.cos(angle) * weight, -torch.sin(angle) * weight), dim=1)
        basis = basis / self.n_fft * window[:, None]  # irfft, then the window
        self.register_buffer("basis", basis.float(), persistent=False)  # [n_fft, 2F]
        self.register_buffer("window_sq", window.square().float()[None, :, None],
                             persistent=False)  # [1, n_fft, 1]
        self.register_buffer("eye", torch.eye(self.n_fft)[:, None, :], persistent=False)

    def forward(self, feats: torch.Tensor, length) -> torch.Tensor:
        frames = torch.matmul(self.basis, feats.float())  # [B, n_fft, L], windowed
        wav = F.conv_transpose1d(frames, self.eye, stride=self.hop)  # [B, 1, n_fft + hop (L-1)]
        envelope = F.conv_transpose1d(self.window_sq.expand(1, -1, feats.shape[-1]), self.eye,
                                      stride=self.hop)
        start = self.n_fft // 2
        wav = (wav / envelope)[:, 0, start:]
        # zero-pad by `length` then crop: the same trim or pad, with no branch on the length
        return F.pad(wav, (0, length))[:, :length].to(feats.dtype)


def swap_istft(model: nn.Module) -> tuple[nn.Module, int]:
    """``(copy of model with its STFTDecoder replaced by OverlapAddISTFT, how many)``; the
    model itself when it has none."""
    from avse.models.decoders import STFTDecoder

    if not isinstance(getattr(model, "decoder", None), STFTDecoder):
        return model, 0
    model = copy.deepcopy(model)
    dec = model.decoder
    model.decoder = OverlapAddISTFT(dec.n_fft, dec.hop, dec.win).to(dec.window.device)
    return model, 1


class ExportError(RuntimeError):
    """The model cannot be exported in the asked format; the message names the reason."""


def _reason(err: BaseException) -> str:
    """The first informative line of an exporter error, with its first listed cause (the
    guard that ties a length to the example's, for a length axis that is not dynamic)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    head = next((line for line in lines
                 if not line.startswith(("Traceback", "File ", "The above"))), "")
    head = head.split(" For more information")[0]
    cause = next((line[2:] for line in lines if line.startswith("- ")), "")
    text = f"{type(err).__name__}: {head}" + (f" {cause}" if cause else "")
    return text if len(text) <= 400 else text[:397] + "..."


def _quiet(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the exporters' progress prints and warnings held back."""
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def onnx_session(path: str, threads: int = 1):
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
