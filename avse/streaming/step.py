"""Fixed-block streaming steps with explicit state, for export (``torch.export``, ONNX).

:class:`StreamStep` runs one block of ``n`` samples (the hop S divides n, n divides 640, one
video frame's samples, so a block never spans two video frames) through the causal audio
encoder, separator and decoder; :class:`VisualStep` encodes one video frame. States are
flat tuples of fixed-shape tensors (names in ``state_names``), zeros at the start; the steps
are pure tensor ops. A real-time loop::

    audio_step, visual_step = StreamStep(model, block=160), VisualStep(model)
    a_states, v_states = audio_step.initial_states(1), visual_step.initial_states(1)
    for b, block in enumerate(blocks):                  # block [1, 160] float32
        if b * 160 % 640 == 0:                          # a new video frame starts
            vfeat, *v_states = visual_step(frame_of(b * 160 // 640), *v_states)
        out, *a_states = audio_step(block, vfeat, *a_states)

``out`` of block b are the output samples ``[b n - (K - S), (b + 1) n - (K - S))`` (the first
``K - S`` of a stream fall before time 0: drop them), equal to the offline model's.
"""
from __future__ import annotations

import torch
from torch import nn

from avse.models.base import SAMPLES_PER_VIDEO_FRAME
from avse.streaming.core import check_streamable
from avse.streaming.registry import stepper_for

__all__ = ["StreamStep", "VisualStep"]


class _FlatState(nn.Module):
    """Steppers' dict states <-> one flat tuple of tensors (``state_names`` order)."""

    def _setup(self, parts: dict) -> None:
        self._parts = list(parts)
        self.steppers = nn.ModuleDict(parts)
        names = []
        for part, stepper in parts.items():
            names += [(part, key) for key in stepper.init_state(1, "cpu", torch.float32)]
        self._names = names
        self.state_names = [f"{part}.{key}" for part, key in names]
        self.eval()  # the steps are inference only (eval BatchNorm)

    def initial_states(self, batch: int = 1, device=None, dtype=None) -> tuple:
        """The zero states of a new stream, in ``state_names`` order."""
        param = next(self.parameters())
        device = param.device if device is None else device
        dtype = param.dtype if dtype is None else dtype
        states = {part: self.steppers[part].init_state(batch, device, dtype)
                  for part in self._parts}
        return tuple(states[part][key] for part, key in self._names)

    def _unflatten(self, states) -> dict:
        if len(states) != len(self._names):
            raise ValueError(f"expected {len(self._names)} states ({self.state_names}), "
                             f"got {len(states)}")
        out = {part: {} for part in self._parts}
        for (part, key), value in zip(self._names, states):
            out[part][key] = value
        return out

    def _flatten(self, states: dict) -> tuple:
        return tuple(states[part][key] for part, key in self._names)


class StreamStep(_FlatState):
    """One block of a causal model's audio path:
    ``forward(audio [B, n], vfeat [B, Dv], *states) -> (out [B, n], *states)``.

    Arguments
    ---------
    model : AVSEModel
        causal (ValueError otherwise); put in eval mode.
    block : int
        n, samples per step: a multiple of the encoder's hop S and a divisor of 640.

    ``vfeat`` is the visual feature of video frame ``floor(b n / 640)`` for block b (from
    :class:`VisualStep`); ``out`` are the output samples ``[b n - (K - S), (b + 1) n - (K -
    S))``.
    """

    def __init__(self, model: nn.Module, block: int = 160):
        super().__init__()
        check_streamable(model)
        model.eval()
        hop = int(model.audio_encoder.stride)
        self.block = int(block)
        if self.block % hop or SAMPLES_PER_VIDEO_FRAME % self.block:
            raise ValueError(f"block must be a multiple of the hop ({hop}) and divide "
                             f"{SAMPLES_PER_VIDEO_FRAME}, got {block}")
        self.frames = self.block // hop
        self.delay_samples = int(model.audio_encoder.kernel_size) - hop
        self.mapping = model.separator.output_type != "mask"
        self._setup({"enc": stepper_for(model.audio_encoder),
                     "sep": stepper_for(model.separator),
                     "dec": stepper_for(model.decoder)})

    def forward(self, audio: torch.Tensor, vfeat: torch.Tensor, *states):
        """audio ``[B, n]``, vfeat ``[B, Dv]``, states -> (out ``[B, n]``, *new states)."""
        st = self._unflatten(states)
        feats, st["enc"] = self.steppers["enc"].step(st["enc"], audio)
        vis = vfeat.unsqueeze(-1).expand(-1, -1, self.frames)
        mask, st["sep"] = self.steppers["sep"].step(st["sep"], feats, vis)
        out, st["dec"] = self.steppers["dec"].step(st["dec"], mask if self.mapping else feats * mask)
        return (out, *self._flatten(st))


class VisualStep(_FlatState):
    """One video frame through a causal model's visual encoder:
    ``forward(frame [B, 1, H, W] uint8 or [B, 1, 512] float32, *states) -> (vfeat [B, Dv],
    *states)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        check_streamable(model)
        model.eval()
        self._setup({"vis": stepper_for(model.visual_encoder)})

    def forward(self, frame: torch.Tensor, *states):
        """frame ``[B, 1, ...]``, states -> (vfeat ``[B, Dv]``, *new states)."""
        st = self._unflatten(states)
        vfeat, st["vis"] = self.steppers["vis"].step(st["vis"], frame)
        return (vfeat[..., 0], *self._flatten(st))
