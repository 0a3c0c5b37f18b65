"""Slot interfaces. Every plugin subclasses one of these and documents its shapes.

=============  ==============================================================
slot           input -> output
=============  ==============================================================
audio_encoder  wav ``[B, T]`` @16 kHz -> feats ``[B, N, L]``; ``out_dim = N``
visual_encoder ROI ``[B, Tv, 88, 88]`` (uint8 or float) or embedding
               ``[B, Tv, 512]`` @25 fps -> ``[B, Dv, Tv]``; ``out_dim = Dv``
fusion         audio ``[B, C, L]``, visual ``[B, Dv, Tv]`` -> ``[B, C', L]``;
               owns the Tv -> L alignment; ``out_dim = C'``
separator      feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput
               (masks, final last; aux masks; aux tensors)
decoder        feats ``[B, N, L]`` -> wav ``[B, T]`` (same T as the input)
=============  ==============================================================

Constructors receive their input dimensions as keyword arguments (``in_dim``,
``visual_dim``, ``audio_dim``) from :class:`~avse.models.avse_model.AVSEModel`, which
wires them from ``out_dim``; yaml never repeats them by hand. Each base is declared to the
registry (:mod:`avse.models.registry`, which checks that every plugin of the slot subclasses
it); :func:`build_slot` builds a plugin from a spec.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from avse.models import registry


class AudioEncoder(nn.Module):
    """wav ``[B, T]`` -> feats ``[B, N, L]``. Subclasses set ``out_dim`` (N) and ``stride``."""

    out_dim: int
    stride: int

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Decoder(nn.Module):
    """feats ``[B, N, L]`` -> wav ``[B, T]``; ``length`` is the T to return (trim or pad)."""

    def forward(self, feats: torch.Tensor, length: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class VisualEncoder(nn.Module):
    """Visual stream @25 fps -> ``[B, Dv, Tv]``.

    ``input_kind`` is ``"roi"`` (``[B, Tv, 88, 88]`` gray mouth crops, uint8 0..255 or float)
    or ``"emb"`` (``[B, Tv, 512]`` precomputed lip embeddings). Subclasses set ``out_dim``.
    """

    out_dim: int
    input_kind: str = "roi"

    def forward(self, visual: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Fusion(nn.Module):
    """audio ``[B, C, L]`` + visual ``[B, Dv, Tv]`` -> ``[B, out_dim, L]``.

    Constructed with ``audio_dim`` (C) and ``visual_dim`` (Dv); the visual stream is aligned
    to the L audio frames inside (see :func:`align_visual`).
    """

    out_dim: int

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def align_visual(visual: torch.Tensor, length: int, mode: str = "nearest") -> torch.Tensor:
    """Resample visual features ``[B, D, Tv]`` to ``[B, D, length]`` audio frames.

    ``nearest`` repeats each video frame over the audio frames it spans (what the
    reference models do with ``F.interpolate``); ``linear`` interpolates (towards the next
    frame: it looks ahead); ``hold`` (causal) gives audio frame ``l`` the latest video frame
    started at or before it, ``floor(l * Tv / length)`` in exact integer arithmetic.

    >>> align_visual(torch.arange(3.0).view(1, 1, 3), 7, "hold")
    tensor([[[0., 0., 0., 1., 1., 2., 2.]]])
    """
    if visual.shape[-1] == length:
        return visual
    if mode == "hold":
        frames = visual.shape[-1]
        index = torch.div(torch.arange(length, device=visual.device) * frames, length,
                          rounding_mode="floor")
        return visual.index_select(-1, index)
    if mode == "linear":
        return F.interpolate(visual, size=length, mode="linear", align_corners=False)
    return F.interpolate(visual, size=length, mode=mode)


# audio samples per video frame: 16 kHz audio, 25 fps video
SAMPLES_PER_VIDEO_FRAME = 640


def check_causal_framing(kernel_size: int, stride: int) -> None:
    """ValueError unless the stride divides the window (causal framing: whole hops)."""
    if kernel_size % stride:
        raise ValueError(f"causal=True needs kernel_size % stride == 0, got kernel_size "
                         f"{kernel_size} and stride {stride}")


def hold_index(length: int, stride: int, frames: int, device=None) -> torch.Tensor:
    """The video frame each of ``length`` causal audio frames sees: LongTensor ``[length]``.

    Causal audio frame j (hop ``stride``, see :class:`~avse.models.audio_encoders.ConvEncoder`)
    ends at sample ``j S + S - 1``; it sees the latest video frame started at or before that
    sample, ``min(floor((j S + S - 1) / 640), frames - 1)`` (640 samples per video frame at
    16 kHz and 25 fps; the last of the ``frames`` video frames is held past the end).
    ``AVSEModel(causal=True)`` resamples the visual features with it before the separator;
    the streaming path (:mod:`avse.streaming`) holds the latest frame received the same way.

    >>> hold_index(5, 320, 2)
    tensor([0, 0, 1, 1, 1])
    """
    ends = torch.arange(length, device=device) * stride + (stride - 1)
    index = torch.div(ends, SAMPLES_PER_VIDEO_FRAME, rounding_mode="floor")
    return index.clamp(max=frames - 1)


@dataclass
class SeparatorOutput:
    """What a separator returns.

    masks : list of ``[B, N, L]``
        one per estimate; the last is the final one. Only the last when the caller did not
        ask for intermediate outputs.
    aux_masks : dict name -> list of ``[B, N, L]``
        masks of auxiliary waveform outputs (e.g. ``noise`` for SEANet), last = final.
    aux : dict name -> tensor
        other auxiliary outputs (e.g. ``speaker_logits``).
    """

    masks: list
    aux_masks: dict = field(default_factory=dict)
    aux: dict = field(default_factory=dict)


class Separator(nn.Module):
    """feats ``[B, N, L]`` + visual ``[B, Dv, Tv]`` -> :class:`SeparatorOutput`.

    Constructed with ``in_dim`` (N), ``visual_dim`` (Dv) and ``fusion`` (a fusion spec: a
    short name, a dict ``{"type": name, **kwargs}``, a class, or a module); build the fusion
    blocks with :func:`build_fusion`, each followed by :func:`fusion_projection` where the
    architecture needs the fused features at a fixed width. ``output_type`` is ``"mask"``
    (multiplied with the encoder features; a mask head ends with one of :data:`MASK_ACTS`,
    chosen by ``mask_act``) or ``"mapping"`` (the features themselves).
    """

    output_type: str = "mask"

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:  # pragma: no cover
        raise NotImplementedError


def build_slot(kind: str, spec, **dims) -> nn.Module:
    """Build a plugin of slot ``kind`` from a spec: a built module (returned as is), a short
    name or class path, or a dict ``{"type": name, **kwargs}``; ``dims`` are the input
    dimensions wired by the caller (``in_dim=...``)."""
    if isinstance(spec, nn.Module):
        return spec
    kwargs = {}
    if isinstance(spec, dict):
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        spec = spec.get("type")
    return registry.build(kind, spec, **dims, **kwargs)


def build_fusion(spec, audio_dim: int, visual_dim: int) -> Fusion:
    """Build one fusion block from a spec (short name, ``{"type": ..., **kw}``, class or path)."""
    return build_slot("fusion", spec, audio_dim=audio_dim, visual_dim=visual_dim)


_PROJECTIONS = {"conv1d": lambda i, o: nn.Conv1d(i, o, 1, bias=False),
                "conv2d": lambda i, o: nn.Conv2d(i, o, 1, bias=False),
                "linear": lambda i, o: nn.Linear(i, o, bias=False)}


def fusion_projection(fusion: Fusion, dim: int, layout: str = "conv1d") -> nn.Module:
    """The map of ``fusion``'s output ``[B, C', ...]`` back to ``dim`` channels.

    ``nn.Identity()`` (no parameters, no state-dict keys) when ``fusion.out_dim == dim``,
    else a bias-free projection ``C' -> dim``: a 1x1 ``Conv1d`` on ``[B, C', L]``
    (``layout="conv1d"``), a 1x1 ``Conv2d`` on ``[B, C', L, F]`` (``"conv2d"``) or a
    ``Linear`` on channels-last ``[B, L, C']`` (``"linear"``). A separator applies it as
    ``proj(fusion(audio, visual))``.

    Example
    -------
    >>> from avse.models.fusion import ConcatFusion
    >>> fusion_projection(ConcatFusion(audio_dim=8, visual_dim=4), 8)
    Identity()
    >>> fusion_projection(ConcatFusion(audio_dim=8, visual_dim=4, out_dim=6), 8)
    Conv1d(6, 8, kernel_size=(1,), stride=(1,), bias=False)
    """
    if fusion.out_dim == dim:
        return nn.Identity()
    return _PROJECTIONS[layout](fusion.out_dim, dim)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# the activations a separator's mask head may end with (``mask_act``)
MASK_ACTS = {"relu": F.relu, "sigmoid": torch.sigmoid, "none": _identity}


def mask_activation(name: str):
    """``MASK_ACTS[name]``; ValueError naming the choices for an unknown ``name``.

    >>> mask_activation("relu")(torch.tensor([-1.0, 2.0]))
    tensor([0., 2.])
    """
    if name not in MASK_ACTS:
        raise ValueError(f"mask_act must be one of {sorted(MASK_ACTS)}, got {name!r}")
    return MASK_ACTS[name]


@dataclass
class ModelOutput:
    """The one structured output of :class:`~avse.models.avse_model.AVSEModel`.

    estimate : ``[B, T]``
        the final estimate of the target.
    intermediate : list of ``[B, T]``
        earlier estimates (deep supervision); empty unless asked for.
    aux : dict
        named auxiliary outputs: waveforms ``[B, T]`` (e.g. ``noise``; ``noise_intermediate``
        is a list) and other tensors (e.g. ``speaker_logits``).
    """

    estimate: torch.Tensor
    intermediate: list = field(default_factory=list)
    aux: dict = field(default_factory=dict)


for _kind, _base in (("audio_encoder", AudioEncoder), ("visual_encoder", VisualEncoder),
                     ("fusion", Fusion), ("separator", Separator), ("decoder", Decoder)):
    registry.set_base(_kind, _base)
