"""Streaming steppers of the causal visual encoders: lip frames in as they come -> ``[B, Dv, m]``.

A stepper wraps one causal visual encoder (in eval mode) and follows the streaming protocol
(:mod:`avse.streaming.registry`)::

    state = stepper.init_state(batch, device, dtype)   # dict of fixed-shape tensors, zeros
    vfeat, state = stepper.step(state, frames)         # frames: m >= 1 new video frames

``frames`` are what the offline encoder takes, only fewer: ``[B, m, H, W]`` ROIs (uint8 or
float on the 0..255 scale) or ``[B, m, 512]`` float embeddings. Chunk after chunk, the
features equal the offline ``encoder(all_frames)`` column for column (float tolerance),
whatever the chunk sizes. ``step`` is pure tensor ops (no branching on tensor values, no
in-place change of its inputs), so a one-frame step exports (``torch.export``, ONNX).

=========================  ================================================================
encoder                    state
=========================  ================================================================
V-TCN (every encoder)      ``vtcn{i}``: per block, the last ``(k - 1) d`` inputs of its
                           left-padded depthwise conv ``[B, width, (k - 1) d]``; the norms
                           (cLN, eval BatchNorm) and pointwise convs work per frame
``embedding``              the V-TCN's only
``cnn``                    with ``diff``: ``cnn_prev`` the last frame's centred pixels
                           ``[B, 1, H, W]`` and ``cnn_started`` ``[B, 1, 1, 1]`` (0 before
                           the first frame: its difference is 0, as offline)
``resnet18`` (causal)      ``stem``: the last ``kt - 1`` normalised frames of the 3-D stem's
                           left-padded temporal kernel ``[B, 1, kt - 1, H, W]`` (kt = 5)
=========================  ================================================================

Non-causal encoders (global layer norm, centred V-TCN convs, a centred 3-D stem, the
published ``dlr_resnet18`` front-end) are refused with a ValueError that says what to do
(build the model with ``AVSEModel(..., causal=True)``).

Example
-------
>>> from avse.models.visual_encoders import EmbeddingVisualEncoder
>>> enc = EmbeddingVisualEncoder(out_dim=8, hidden=16, num_blocks=2, norm="cln",
...                              causal=True).eval()
>>> stepper = EmbeddingStepper(enc)
>>> state = stepper.init_state(2, "cpu", torch.float32)
>>> emb = torch.randn(2, 7, 512)
>>> a, state = stepper.step(state, emb[:, :3])
>>> b, state = stepper.step(state, emb[:, 3:])
>>> torch.allclose(torch.cat([a, b], 2), enc(emb), atol=1e-5)
True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from avse.models.frontend_nets import CNNFrontend, ResNet18Frontend, check_rois
from avse.models.visual_encoders import (VTCN, EmbeddingVisualEncoder, FrontendVisualEncoder,
                                         LeftPadConv1d)
from avse.streaming.registry import register_stepper

__all__ = ["VTCNStepper", "EmbeddingStepper", "FrontendStepper"]

_FIX = ("build (and train) the model with AVSEModel(..., causal=True), which makes its visual "
        "encoder causal (norm 'cln' or 'bn')")


def _not_causal(name: str, why: str) -> ValueError:
    return ValueError(f"{name} is not causal ({why}), so it has no streaming form; {_FIX}")


def _param_dtype(module: nn.Module) -> torch.dtype:
    p = next(module.parameters(), None)
    return torch.float32 if p is None else p.dtype


class _Stepper(nn.Module):
    """Common part: holds the encoder (``self.encoder``) and refuses BatchNorm in train mode
    (it would take statistics over the chunk, not the running ones the offline eval uses)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.name = type(encoder).__name__
        self._batchnorms = [m for m in encoder.modules() if isinstance(m, _BatchNorm)]

    def _check_eval(self) -> None:
        if any(m.training for m in self._batchnorms):
            raise ValueError(f"{self.name}: stream in eval mode (call .eval() on the model): "
                             "BatchNorm in train mode uses the statistics of each chunk")

    def forward(self, state: dict, frames: torch.Tensor):
        """The same as :meth:`step`."""
        return self.step(state, frames)


class VTCNStepper(nn.Module):
    """Streaming form of a causal :class:`~avse.models.visual_encoders.VTCN`:
    ``step(state, x [B, in_dim, m]) -> (y [B, out_dim, m], state)``.

    Each block's net is run in three parts: the layers before its left-padded depthwise conv
    (per frame), the depthwise conv on ``cat(buffer, new)`` without padding, the layers after
    it (per frame). ``owner`` names the encoder in errors.
    """

    def __init__(self, vtcn: VTCN, owner: str = "VTCN"):
        super().__init__()
        self.vtcn = vtcn
        self.plan = []  # per block: (index of the depthwise conv or None, buffer frames, width)
        self.parts = []  # per block: (net,) or (layers before, depthwise conv, layers after)
        for i, block in enumerate(vtcn.blocks):
            layers = list(block.net)
            dw = None
            for j, layer in enumerate(layers):
                if isinstance(layer, nn.GroupNorm):
                    raise _not_causal(owner, f"V-TCN block {i} uses the global layer norm "
                                             "(statistics over the whole utterance)")
                if isinstance(layer, LeftPadConv1d):
                    dw = j
                elif isinstance(layer, nn.Conv1d) and (layer.kernel_size[0] > 1
                                                       or layer.padding[0] != 0):
                    raise _not_causal(owner, f"V-TCN block {i} has a centred conv of kernel "
                                             f"{layer.kernel_size[0]} (it looks ahead)")
            if dw is None:  # no depthwise conv of kernel > 1: the block works per frame
                self.plan.append((None, 0, 0))
                self.parts.append((block.net,))
            else:
                conv = layers[dw]
                self.plan.append((dw, conv.dilation[0] * (conv.kernel_size[0] - 1),
                                  conv.in_channels))
                self.parts.append((layers[:dw], conv, layers[dw + 1:]))

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """``{"vtcn{i}": zeros [batch, width, (k - 1) d]}`` for each block with a depthwise
        conv."""
        return {f"vtcn{i}": torch.zeros(batch, width, pad, device=device, dtype=dtype)
                for i, (dw, pad, width) in enumerate(self.plan) if dw is not None}

    def step(self, state: dict, x: torch.Tensor):
        """x ``[B, in_dim, m]`` -> (``[B, out_dim, m]``, new state)."""
        new_state = {}
        x = self.vtcn.proj(x)
        for i, parts in enumerate(self.parts):
            if len(parts) == 1:
                x = x + parts[0](x)
                continue
            before, conv, after = parts
            h = x
            for layer in before:
                h = layer(h)
            full = torch.cat([state[f"vtcn{i}"].to(h.dtype), h], 2)  # [B, width, pad + m]
            new_state[f"vtcn{i}"] = full[:, :, h.shape[2]:]
            h = F.conv1d(full, conv.weight, conv.bias, conv.stride, 0, conv.dilation,
                         conv.groups)
            for layer in after:
                h = layer(h)
            x = x + h
        return x, new_state

    def forward(self, state: dict, x: torch.Tensor):
        """The same as :meth:`step`."""
        return self.step(state, x)


@register_stepper(EmbeddingVisualEncoder)
class EmbeddingStepper(_Stepper):
    """Streaming form of a causal :class:`~avse.models.visual_encoders.EmbeddingVisualEncoder`:
    ``step(state, emb [B, m, in_dim] float) -> (vfeat [B, out_dim, m], state)``."""

    def __init__(self, encoder: EmbeddingVisualEncoder):
        super().__init__(encoder)
        self.vtcn = VTCNStepper(encoder.vtcn, self.name)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """The V-TCN's state (see :class:`VTCNStepper`)."""
        return self.vtcn.init_state(batch, device, dtype)

    def step(self, state: dict, frames: torch.Tensor):
        """emb ``[B, m, in_dim]`` -> (``[B, out_dim, m]``, new state)."""
        enc = self.encoder
        if frames.dim() != 3 or frames.shape[-1] != enc.in_dim or not frames.is_floating_point():
            raise ValueError(f"{self.name} streams float lip embeddings [B, m, {enc.in_dim}], "
                             f"got {list(frames.shape)} {frames.dtype}")
        self._check_eval()
        x = frames.to(_param_dtype(enc)).transpose(1, 2)
        return self.vtcn.step(state, x)


@register_stepper(FrontendVisualEncoder)
class FrontendStepper(_Stepper):
    """Streaming form of the causal ROI encoders (``cnn``; ``resnet18`` built with
    ``causal=True``): ``step(state, rois [B, m, H, W]) -> (vfeat [B, out_dim, m], state)``.

    Arguments
    ---------
    encoder : FrontendVisualEncoder
        with a :class:`~avse.models.frontend_nets.CNNFrontend` or a causal
        :class:`~avse.models.frontend_nets.ResNet18Frontend` (others: ValueError).
    roi_size : int or None
        the side H = W of the ROIs to stream (the state holds pixels); default: the
        front-end's ``roi_size`` (88).
    """

    def __init__(self, encoder: FrontendVisualEncoder, roi_size: int | None = None):
        super().__init__(encoder)
        fe = encoder.frontend
        if isinstance(fe, ResNet18Frontend):
            if not fe.causal:
                raise _not_causal(self.name, "its 3-D conv stem is centred: it looks 2 frames "
                                             "ahead")
            self.kind = "resnet18"
        elif isinstance(fe, CNNFrontend):
            self.kind = "cnn"
        else:
            raise _not_causal(self.name, f"its front-end {type(fe).__name__} has no causal "
                                         "streaming form; use the 'cnn' or 'resnet18' visual "
                                         "encoder")
        self.vtcn = VTCNStepper(encoder.vtcn, self.name)
        self.roi_size = int(roi_size or fe.roi_size)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """The front-end's state (see the module table) and the V-TCN's."""
        fe, side = self.encoder.frontend, self.roi_size
        state = {}
        if self.kind == "resnet18":
            kt = fe.frontend3D[0].kernel_size[0]
            state["stem"] = torch.zeros(batch, 1, kt - 1, side, side, device=device, dtype=dtype)
        elif fe.diff:
            state["cnn_prev"] = torch.zeros(batch, 1, side, side, device=device, dtype=dtype)
            state["cnn_started"] = torch.zeros(batch, 1, 1, 1, device=device, dtype=dtype)
        state.update(self.vtcn.init_state(batch, device, dtype))
        return state

    def _rois(self, frames: torch.Tensor) -> torch.Tensor:
        """Checked ROIs as float, on the 0..255 scale (as the offline ``frame_features``)."""
        enc, fe = self.encoder, self.encoder.frontend
        x = check_rois(frames, self.name, fe.roi_size, fe.exact_size, _param_dtype(enc))
        if frames.is_floating_point() and enc.input_scale != 255.0:
            x = x * (255.0 / enc.input_scale)
        return x

    def _cnn(self, state: dict, x: torch.Tensor, new_state: dict) -> torch.Tensor:
        """CNNFrontend.forward with the first difference taken from the state."""
        fe = self.encoder.frontend
        x = x / 255.0 - 0.5
        b, m = x.shape[:2]
        frames = [x]
        if fe.diff:
            prev, started = state["cnn_prev"].to(x.dtype), state["cnn_started"].to(x.dtype)
            first = (x[:, :1] - prev) * started           # 0 before any frame, as offline
            frames.append(torch.cat([first, x[:, 1:] - x[:, :-1]], 1))
            new_state["cnn_prev"] = x[:, m - 1:]
            new_state["cnn_started"] = torch.ones_like(state["cnn_started"])
        x = torch.stack(frames, 2).flatten(0, 1)           # [B*m, 1|2, H, W]
        if fe.downsample > 1:
            x = F.avg_pool2d(x, fe.downsample)
        x = fe.cnn(x).mean(dim=(2, 3))
        return fe.frame_proj(x).reshape(b, m, -1)

    def _resnet18(self, state: dict, x: torch.Tensor, new_state: dict) -> torch.Tensor:
        """ResNet18Frontend.forward with the stem's left context taken from the state."""
        fe = self.encoder.frontend
        x = (x / 255.0 - fe.mean) / fe.std
        b, m = x.shape[:2]
        full = torch.cat([state["stem"].to(x.dtype), x.unsqueeze(1)], 2)  # [B, 1, kt-1+m, H, W]
        new_state["stem"] = full[:, :, m:]
        conv = fe.frontend3D[0]
        x = F.conv3d(full, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                     conv.groups)                          # padding (0, 3, 3): no time padding
        x = fe.frontend3D[1:](x)                           # [B, 64, m, H/4, W/4]
        x = x.transpose(1, 2).flatten(0, 1)
        return fe.trunk(x).reshape(b, m, -1)

    def step(self, state: dict, frames: torch.Tensor):
        """rois ``[B, m, H, W]`` (uint8 or float 0..255) -> (``[B, out_dim, m]``, new state)."""
        self._check_eval()
        x = self._rois(frames)
        new_state = {}
        if self.kind == "resnet18":
            feats = self._resnet18(state, x, new_state)
        else:
            feats = self._cnn(state, x, new_state)
        y, vstate = self.vtcn.step(state, feats.transpose(1, 2))
        new_state.update(vstate)
        return y, new_state
