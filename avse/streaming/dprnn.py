"""Streaming stepper of the causal AV-DPRNN separator (:class:`DPRNNSeparator`, ``causal=True``).

The offline separator cuts the fused frames into chunks of K frames with hop h = K/2: chunk c
covers the frames ``[(c - 1) h, (c + 1) h)``, so frame t sits at position ``t mod h`` of chunk
``floor(t / h) + 1`` (its first half) and at position ``t mod h + h`` of chunk ``floor(t / h)``
(its second half). In the causal form the intra RNN runs forward along the positions of a
chunk and the inter RNN forward along the chunks at each position, so the item (c, p) of a
block needs only (c, p - 1) (intra) and (c - 1, p) (inter) of the same block. The stepper
keeps, per block (layer):

======================  ================================================================
state                   shape
======================  ================================================================
``frames``              ``[1]`` int64, frames seen (the position in the chunk pattern)
``intra_h`` (``_c``)    ``[R, 2, B, H]``: the intra RNN state of the two open chunks
                        (0: the chunk whose first half is filling, 1: the one whose second
                        half is); ``_c`` for LSTMs only
``inter_h`` (``_c``)    ``[R, 2, h, B, H]``: the inter RNN state of each chunk position
                        ``p = half h + offset`` after the last chunk that reached it
======================  ================================================================

Chunk 0's first half (the K/2 zero frames before the signal) is run at :meth:`~DPRNNStepper.
init_state`. A step cuts its new frames at the multiples of h (within one run, the frames are
consecutive positions of both open chunks, and no position is reached twice) and, per run
and layer, calls the intra RNN once over the run of both chunks (a batch of 2 B sequences)
and the inter RNN once on all the run's (chunk, position) items (a batch of single steps);
each frame's two chunk outputs are summed (the overlap-add) and go through the mask head.
The masks equal the offline causal separator's on the same frames (eval mode), whatever the
block sizes. The step branches on the frame count (Python ints), so it is not a
fixed-graph step for export.

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
from torch import nn

from avse.models.base import mask_activation
from avse.models.fusion import ConcatFusion, FiLMFusion
from avse.models.separators.dprnn import DPRNNSeparator
from avse.streaming.audio import _fuse, _linear, _norm, _prelu
from avse.streaming.registry import register_stepper

__all__ = ["DPRNNStepper"]

_FIX = "build the model with AVSEModel(..., causal=True) (e.g. a *_causal.yaml) and train it so"


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

    # ------------------------------------------------------------------ state
    def _zeros(self, batch: int, device, dtype) -> dict:
        r, h, hid = len(self.separator.blocks), self.hop, self.hidden
        state = {"frames": torch.zeros(1, dtype=torch.long, device=device)}
        for kind in ("h", "c") if self.lstm else ("h",):
            state["intra_" + kind] = torch.zeros(r, 2, batch, hid, device=device, dtype=dtype)
            state["inter_" + kind] = torch.zeros(r, 2, h, batch, hid, device=device, dtype=dtype)
        return state

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """The state before frame 0: chunk 0's first half (h zero frames) already run."""
        param = next(self.separator.parameters())
        device = param.device if device is None else device
        state = self._zeros(batch, device, param.dtype)
        zeros = torch.zeros(1, batch, self.hop, self.separator.bottleneck_dim, device=device,
                            dtype=param.dtype)
        with torch.no_grad():
            self._run(zeros, state, 0)  # the padding as chunk 0's first half
        self._close_half(state)
        return {k: v if k == "frames" else v.to(dtype) for k, v in state.items()}

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
            h0 = state["intra_h"][r, :a].reshape(1, a * batch, -1)
            hx = (h0, state["intra_c"][r, :a].reshape(1, a * batch, -1)) if lstm else h0
            y, hn = block.intra_rnn(x.reshape(a * batch, n, d), hx)
            x = x + block.intra_norm(block.intra_linear(y)).view(a, batch, n, d)
            if lstm:
                state["intra_h"][r, :a] = hn[0].view(a, batch, -1)
                state["intra_c"][r, :a] = hn[1].view(a, batch, -1)
            else:
                state["intra_h"][r, :a] = hn.view(a, batch, -1)
            # inter: one step for each (chunk, position) item, from that position's state
            items = x.transpose(1, 2).reshape(a * n * batch, 1, d)
            h0 = state["inter_h"][r, :a, q0:q0 + n].reshape(1, a * n * batch, -1)
            hx = (h0, state["inter_c"][r, :a, q0:q0 + n].reshape(1, a * n * batch, -1)) \
                if lstm else h0
            y, hn = block.inter_rnn(items, hx)
            y = block.inter_norm(block.inter_linear(y)).view(a, n, batch, d)
            x = x + y.transpose(1, 2)
            if lstm:
                state["inter_h"][r, :a, q0:q0 + n] = hn[0].view(a, n, batch, -1)
                state["inter_c"][r, :a, q0:q0 + n] = hn[1].view(a, n, batch, -1)
            else:
                state["inter_h"][r, :a, q0:q0 + n] = hn.view(a, n, batch, -1)
        return x

    def step(self, state: dict, feats: torch.Tensor, vis: torch.Tensor):
        """feats ``[B, N, l]``, vis ``[B, Dv, l]`` -> (final mask ``[B, N, l]``, new state)."""
        sep = self.separator
        batch, _, frames = feats.shape
        # the front per frame on channels-last rows [B l, C]: cLN, bottleneck, fusion
        rows = feats.transpose(1, 2).reshape(batch * frames, -1)
        x = _linear(sep.bottleneck, _norm(sep.norm, rows))
        x = _fuse(sep.fusion, x, vis.transpose(1, 2).reshape(batch * frames, -1))
        if not isinstance(sep.fusion_proj, nn.Identity):
            x = _linear(sep.fusion_proj, x)
        x = x.view(batch, frames, -1)
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
        y = _prelu(sep.mask_prelu, y.reshape(batch * frames, -1))
        mask = self._mask_act(_linear(sep.mask_conv, y))
        return mask.view(batch, frames, -1).transpose(1, 2), new

    forward = step
