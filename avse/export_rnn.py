"""An exportable stand-in for ``nn.LSTM`` / ``nn.GRU`` (used by :mod:`avse.export`).

``torch.export`` in this torch freezes the time axis of ``nn.LSTM``: the traced graph only
runs at the example length ("You marked t as dynamic but your code specialized it"). The
stand-ins below compute the same recurrence with ``torch._higher_order_ops.scan``, which
``torch.export`` keeps as a loop over a dynamic length and the ONNX exporter writes as an
ONNX ``Scan``. :func:`swap_rnns` replaces every ``nn.LSTM`` / ``nn.GRU`` of a model (a copy)
by one, weights shared, so the exported graph computes what the model computes.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

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
        """x ``[T, B, D]`` -> ``[T, B, H]``."""
        from torch._higher_order_ops.scan import scan

        w_ih, b_ih, w_hh, b_hh = self._weights(layer, reverse)
        proj = x @ w_ih.t() + b_ih  # the input projection of every step at once
        if reverse:
            proj = proj.flip(0)
        h0 = x.new_zeros(x.shape[1], self.rnn.hidden_size)
        if self.kind == "lstm":
            def step(carry, xt):
                h, c = _lstm_cell(xt, carry[0], carry[1], w_hh, b_hh)
                return (h, c), h.clone()
            _, ys = scan(step, (h0, h0.clone()), proj)
        else:
            def step(h, xt):
                h = _gru_cell(xt, h, w_hh, b_hh)
                return h, h.clone()
            _, ys = scan(step, h0, proj)
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
