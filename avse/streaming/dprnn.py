"""Streaming stepper of the causal AV-DPRNN separator (:class:`DPRNNSeparator`, ``causal=True``).

The offline separator cuts the fused frames into chunks of K frames with hop h = K/2: chunk c
covers the frames ``[(c - 1) h, (c + 1) h)``, so frame t sits at position ``t mod h`` of chunk
``floor(t / h) + 1`` (its first half) and at position ``t mod h + h`` of chunk ``floor(t / h)``
(its second half). In the causal form the intra RNN runs forward along the positions of a
chunk and the inter RNN forward along the chunks at each position, so the item (c, p) of a
block needs only (c, p - 1) (intra) and (c - 1, p) (inter) of the same block. The stepper
keeps, per block (layer):

======================  ================================================================
state                   shape (batch first; zeros at the start of a stream)
======================  ================================================================
``frames``              ``[B]`` int64, frames seen (the position in the chunk pattern)
``intra_h`` (``_c``)    ``[B, R, 2, H]``: the intra RNN state of the two open chunks
                        (0: the chunk whose first half is filling, 1: the one whose second
                        half is); ``_c`` for LSTMs only
``inter_h`` (``_c``)    ``[B, R, 2, h, H]``: the inter RNN state of each chunk position
                        ``p = half h + offset`` after the last chunk that reached it
======================  ================================================================

Chunk 0's first half (the K/2 zero frames before the signal) is run at :meth:`~DPRNNStepper.
init_state`, whose states the first step takes in place of the zeros. A step cuts its new
frames at the multiples of h (within one run, the frames are consecutive positions of both
open chunks, and no position is reached twice) and, per run and layer, calls the intra RNN
once over the run of both chunks (a batch of 2 B sequences) and the inter RNN once on all
the run's (chunk, position) items (a batch of single steps); each frame's two chunk outputs
are summed (the overlap-add) and go through the mask head. The masks equal the offline
causal separator's on the same frames (eval mode), whatever the block sizes. Under
``torch.export`` the step is traced in a fixed-graph form (frame by frame, positions as
index tensors of the frame count), the same math. Speed at the reference size (N=256, B=64,
H=128, K=100, R=6), one thread, blocks of 8 frames (160 samples, 10 ms), on a 2-core AMD
EPYC: 4.7 to 5.8 ms per block (RTF 0.47 to 0.58) at load 2, about 9 ms (RTF 0.9, CPU 0.55)
at load 4; the whole causal model (egs/voxceleb2/hparams/dprnn_causal.yaml,
benchmarks/stream.py): RTF 0.54 at load 2.

Example
-------
>>> import torch
>>> from avse.models.separators.dprnn import DPRNNSeparator
>>> sep = DPRNNSeparator(in_dim=8, visual_dim=4, bottleneck=8, hidden=8, chunk_size=6,
...                      num_layers=2, causal=True).eval()
>>> stepper = DPRNNStepper(sep)
>>> state = stepper.init_state(1)
>>> mask, state = stepper.step(state, torch.rand(1, 8, 5), torch.randn(1, 4, 5))
>>> mask.shape, int(state["frames"])
(torch.Size([1, 8, 5]), 5)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import mask_activation
from avse.models.fusion import ConcatFusion, FiLMFusion
from avse.models.separators.dprnn import DPRNNSeparator
from avse.models.separators.tcn import ChannelNorm
from avse.streaming.registry import register_stepper

__all__ = ["DPRNNStepper"]

_FIX = "build the model with AVSEModel(..., causal=True) (e.g. a *_causal.yaml) and train it so"


def _conv1x1(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``Conv1d`` on channels-last rows ``x [..., C]``."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


def _front(sep: DPRNNSeparator, feats: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """The separator's front per frame on channels-last rows: feats ``[B, l, N]``, held visual
    columns ``vis [B, l, Dv]`` -> ``[B, l, B']``: cLN, bottleneck, concat / FiLM fusion (its
    alignment is the identity on one column per frame) and its projection."""
    norm = sep.norm
    if not isinstance(norm, ChannelNorm):
        raise ValueError(f"{type(sep).__name__}: front norm {type(norm).__name__} is not per frame")
    x = F.layer_norm(feats, feats.shape[-1:], norm.weight.view(-1), norm.bias.view(-1), norm.eps)
    x = _conv1x1(sep.bottleneck, x)
    fusion = sep.fusion
    if isinstance(fusion, ConcatFusion):
        x = _conv1x1(fusion.audio_proj, x) + _conv1x1(fusion.visual_proj, vis)
    else:  # FiLM
        x = torch.addcmul(x + _conv1x1(fusion.beta, vis), x, _conv1x1(fusion.gamma, vis))
    if not isinstance(sep.fusion_proj, nn.Identity):
        x = _conv1x1(sep.fusion_proj, x)
    return x


def _linear_norm(linear: nn.Linear, norm: nn.LayerNorm, y: torch.Tensor) -> torch.Tensor:
    """``norm(linear(y))`` as functional calls (a step makes many small ones)."""
    y = F.linear(y, linear.weight, linear.bias)
    return F.layer_norm(y, y.shape[-1:], norm.weight, norm.bias, norm.eps)


def _lstm(rnn: nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """A one-layer unidirectional batch-first ``nn.LSTM`` from state ``(h, c)`` ``[M, H]``
    over x ``[M, n, D]`` -> (y ``[M, n, H]``, h, c): the input projection of all n steps in
    one product, then per step one product and the gates. On a few short sequences this is
    several times faster than the module call (whose CPU kernels pay a set-up per call)."""
    m, n, d = x.shape
    hid = rnn.hidden_size
    bias = rnn.bias_ih_l0 + rnn.bias_hh_l0 if rnn.bias else None
    proj = F.linear(x.transpose(0, 1), rnn.weight_ih_l0, bias)  # [n, M, 4H], time first
    w_hh = rnn.weight_hh_l0.t()
    i, f, g, o = slice(0, hid), slice(hid, 2 * hid), slice(2 * hid, 3 * hid), slice(3 * hid, None)
    ys = []
    for t in range(n):
        gates = torch.addmm(proj[t], h, w_hh)
        s = torch.sigmoid(gates)
        c = torch.addcmul(s[:, f] * c, s[:, i], torch.tanh(gates[:, g]))
        h = s[:, o] * torch.tanh(c)
        ys.append(h)
    return (torch.stack(ys, dim=1) if n > 1 else h.unsqueeze(1)), h, c


def _rnn(rnn: nn.Module, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
    """``rnn`` (one layer, unidirectional, batch first) over x ``[M, n, D]`` from ``h`` (and
    ``c`` for an LSTM) ``[M, H]`` -> (y ``[M, n, H]``, h, c). An LSTM on 1 or 2 steps runs
    as :func:`_lstm` (measured faster on CPU there; the module call from 4 steps on)."""
    if isinstance(rnn, nn.LSTM):
        if x.shape[1] <= 2 and not rnn.proj_size:
            return _lstm(rnn, x, h, c)
        y, (hn, cn) = rnn(x, (h.unsqueeze(0), c.unsqueeze(0)))
        return y, hn[0], cn[0]
    y, hn = rnn(x, h.unsqueeze(0))
    return y, hn[0], None


def _internal(state: dict) -> dict:
    """The public state (batch first) as the step computes on it: the batch axis of the RNN
    states second to last (``[R, 2, B, H]``, ``[R, 2, h, B, H]``); views."""
    return {k: v if k == "frames" else v.movedim(0, -2) for k, v in state.items()}


def _public(state: dict) -> dict:
    """The inverse of :func:`_internal` (contiguous tensors, batch axis first)."""
    return {k: v if k == "frames" else v.movedim(-2, 0).contiguous() for k, v in state.items()}


@register_stepper(DPRNNSeparator)
class DPRNNStepper(nn.Module):
    """``step(state, feats [B, N, l], vis [B, Dv, l]) -> (mask [B, N, l], state)`` of a causal
    :class:`~avse.models.separators.dprnn.DPRNNSeparator` (``vis``: one held visual column per
    audio frame). Refused: ``causal=False`` (bidirectional RNNs, global norms) and fusions
    that are not per frame (cross attention)."""

    def __init__(self, separator: DPRNNSeparator):
        super().__init__()
        name = type(separator).__name__
        if not getattr(separator, "causal", False):
            raise ValueError(f"{name} with causal=False (bidirectional RNNs, global layer norm) "
                             f"has no streaming form; {_FIX}")
        if not isinstance(separator.fusion, (ConcatFusion, FiLMFusion)):
            raise ValueError(f"{name}: the fusion {type(separator.fusion).__name__} is not per "
                             "frame, so it has no streaming form (use concat or film)")
        self.separator = separator
        self.hop = separator.hop
        self.lstm = isinstance(separator.blocks[0].intra_rnn, nn.LSTM)
        self.hidden = separator.blocks[0].intra_rnn.hidden_size
        self._mask_act = mask_activation(separator.mask_act)
        self.fixed_graph = False  # True: the export form of step() in eager mode too
        self._padding = None  # the RNN states after chunk 0's first half (init_state)

    # ------------------------------------------------------------------ state
    def _zeros(self, batch: int, device, dtype) -> dict:
        """Zero states in the internal layout (batch axis second to last)."""
        r, h, hid = len(self.separator.blocks), self.hop, self.hidden
        state = {"frames": torch.zeros(batch, dtype=torch.long, device=device)}
        for kind in ("h", "c") if self.lstm else ("h",):
            state["intra_" + kind] = torch.zeros(r, 2, batch, hid, device=device, dtype=dtype)
            state["inter_" + kind] = torch.zeros(r, 2, h, batch, hid, device=device, dtype=dtype)
        return state

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """Zeros (``frames`` 0). The RNN states before frame 0, with chunk 0's first half (h
        zero frames) run, are taken at the first step (where ``frames`` is 0); they are
        computed here from the current weights (batch 1, kept for the steps)."""
        param = next(self.separator.parameters())
        device = param.device if device is None else device
        self._padding = self._padding_state(device, param.dtype)
        return _public({k: v if k == "frames" else v.to(dtype)
                        for k, v in self._zeros(batch, device, param.dtype).items()})

    def _padding_state(self, device, dtype) -> dict:
        """The RNN states (batch 1) after chunk 0's first half: h zero frames."""
        state = self._zeros(1, device, dtype)
        zeros = torch.zeros(1, 1, self.hop, self.separator.bottleneck_dim, device=device,
                            dtype=dtype)
        with torch.no_grad():
            self._run(zeros, state, 0)
        self._close_half(state)
        del state["frames"]
        return state

    def _start(self, state: dict, graph: bool) -> dict:
        """``state`` with its RNN states replaced by :meth:`_padding_state`'s where no frame
        has been seen (a new stream; a ``where`` on ``frames == 0`` in the graph form)."""
        if getattr(self, "_padding", None) is None:
            self._padding = self._padding_state(state["frames"].device,
                                                next(self.separator.parameters()).dtype)
        if graph:
            first = (state["frames"] == 0).view(-1, 1)  # [B, 1]: batch axis second to last
            return {k: v if k == "frames" else
                    torch.where(first, self._padding[k].to(v.dtype), v)
                    for k, v in state.items()}
        if int(state["frames"][0]) != 0:
            return state
        return {k: v if k == "frames" else self._padding[k].to(v.dtype).expand_as(v)
                for k, v in state.items()}

    @staticmethod
    def _close_half(state: dict) -> None:
        """A multiple of h reached: the older chunk is complete, the newer one becomes the
        older, and a new chunk (zero intra state) opens (in place on the step's copies)."""
        for key in ("intra_h", "intra_c"):
            if key in state:
                state[key][:, 1] = state[key][:, 0]
                state[key][:, 0] = 0

    # ------------------------------------------------------------------ step
    def _run(self, x: torch.Tensor, state: dict, q0: int) -> torch.Tensor:
        """Run frames at positions ``q0 .. q0 + n - 1`` of the open chunks through the blocks.

        x ``[a, B, n, D]`` (a = 2: the newer chunk's first-half items, then the older chunk's
        second-half ones; a = 1: the newer only) -> the last block's ``[a, B, n, D]``;
        ``state``'s RNN tensors are updated in place (the caller's copies).
        """
        a, batch, n, d = x.shape
        lstm = self.lstm
        for r, block in enumerate(self.separator.blocks):
            c0 = state["intra_c"][r, :a].reshape(a * batch, -1) if lstm else None
            y, hn, cn = _rnn(block.intra_rnn, x.reshape(a * batch, n, d),
                             state["intra_h"][r, :a].reshape(a * batch, -1), c0)
            x = x + _linear_norm(block.intra_linear, block.intra_norm, y).view(a, batch, n, d)
            state["intra_h"][r, :a] = hn.view(a, batch, -1)
            if lstm:
                state["intra_c"][r, :a] = cn.view(a, batch, -1)
            # inter: one step for each (chunk, position) item, from that position's state
            items = x.transpose(1, 2).reshape(a * n * batch, 1, d)
            c0 = state["inter_c"][r, :a, q0:q0 + n].reshape(a * n * batch, -1) if lstm else None
            y, hn, cn = _rnn(block.inter_rnn, items,
                             state["inter_h"][r, :a, q0:q0 + n].reshape(a * n * batch, -1), c0)
            y = _linear_norm(block.inter_linear, block.inter_norm, y).view(a, n, batch, d)
            x = x + y.transpose(1, 2)
            state["inter_h"][r, :a, q0:q0 + n] = hn.view(a, n, batch, -1)
            if lstm:
                state["inter_c"][r, :a, q0:q0 + n] = cn.view(a, n, batch, -1)
        return x

    def _frames_graph(self, x: torch.Tensor, state: dict):
        """The fixed-graph form of the runs (what ``torch.export`` traces): frame by frame, the
        chunk positions as index tensors of the frame count, the half-chunk close as a
        ``where``. x ``[B, l, D]`` -> (the overlap-added ``[B, l, D]``, new state); the same
        math as the runs (LSTM steps as :func:`_lstm`)."""
        blocks, h = self.separator.blocks, self.hop
        batch, frames, d = x.shape
        lstm = self.lstm
        intra = [[state["intra_h"][r] for r in range(len(blocks))]]
        inter = [[state["inter_h"][r] for r in range(len(blocks))]]
        if lstm:
            intra.append([state["intra_c"][r] for r in range(len(blocks))])
            inter.append([state["inter_c"][r] for r in range(len(blocks))])
        outs = []
        for t in range(frames):
            q = (state["frames"][:1] + t) % h  # [1]: the frame's offset in both open chunks
            items = x[:, t].unsqueeze(0).expand(2, batch, d)  # [2 (newer, older), B, D]
            for r, block in enumerate(blocks):
                c0 = intra[1][r].reshape(2 * batch, -1) if lstm else None
                y, hn, cn = _rnn(block.intra_rnn, items.reshape(2 * batch, 1, d),
                                 intra[0][r].reshape(2 * batch, -1), c0)
                y = _linear_norm(block.intra_linear, block.intra_norm, y)
                items = items + y.view(2, batch, d)
                intra[0][r] = hn.view(2, batch, -1)
                if lstm:
                    intra[1][r] = cn.view(2, batch, -1)
                pos = [s[r].index_select(1, q).reshape(2 * batch, -1) for s in inter]
                y, hn, cn = _rnn(block.inter_rnn, items.reshape(2 * batch, 1, d), pos[0],
                                 pos[1] if lstm else None)
                y = _linear_norm(block.inter_linear, block.inter_norm, y)
                items = items + y.view(2, batch, d)
                inter[0][r] = inter[0][r].index_copy(1, q, hn.view(2, 1, batch, -1))
                if lstm:
                    inter[1][r] = inter[1][r].index_copy(1, q, cn.view(2, 1, batch, -1))
            outs.append(items[0] + items[1])
            close = (q == h - 1).view(1, 1, 1)  # the older chunk is complete: shift
            for kind in intra:
                for r, value in enumerate(kind):
                    shifted = torch.stack((torch.zeros_like(value[0]), value[0]))
                    kind[r] = torch.where(close, shifted, value)
        new = {"frames": state["frames"] + frames,
               "intra_h": torch.stack(intra[0]), "inter_h": torch.stack(inter[0])}
        if lstm:
            new["intra_c"], new["inter_c"] = torch.stack(intra[1]), torch.stack(inter[1])
        return torch.stack(outs, dim=1), new

    def step(self, state: dict, feats: torch.Tensor, vis: torch.Tensor):
        """feats ``[B, N, l]``, vis ``[B, Dv, l]`` -> (final mask ``[B, N, l]``, new state).

        Eager: runs cut at the multiples of h (Python ints of the frame count). Under
        ``torch.export`` (or with ``self.fixed_graph = True``): :meth:`_frames_graph`, a graph
        that does not depend on the frame count (for a fixed-block streaming step).
        """
        sep = self.separator
        batch, _, frames = feats.shape
        x = _front(sep, feats.transpose(1, 2), vis.transpose(1, 2))  # [B, l, B']
        graph = self.fixed_graph or torch.compiler.is_exporting()
        state = self._start(_internal(state), graph)
        if graph:
            y, new = self._frames_graph(x, state)
            mask = self._mask_act(_conv1x1(sep.mask_conv, sep.mask_prelu(y)))  # [B, l, N]
            return mask.transpose(1, 2), _public(new)
        new = {k: v.clone() for k, v in state.items()}
        done, pos, outs = int(state["frames"][0]), 0, []
        while pos < frames:  # runs that stop at the multiples of h
            q0 = (done + pos) % self.hop
            n = min(self.hop - q0, frames - pos)
            run = x[:, pos:pos + n]
            y = self._run(torch.stack((run, run)), new, q0)
            outs.append(y[0] + y[1])  # overlap-add: first half of the newer + second of the older
            if q0 + n == self.hop:
                self._close_half(new)
            pos += n
        new["frames"] = state["frames"] + frames
        y = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # [B, l, D]
        mask = self._mask_act(_conv1x1(sep.mask_conv, sep.mask_prelu(y)))  # [B, l, N]
        return mask.transpose(1, 2), _public(new)

    forward = step
