"""Visual encoders: lip stream @25 fps -> ``[B, Dv, Tv]``.

Three built-ins, all ending in a V-TCN (:class:`VTCN`), the temporal stack of residual
depthwise-separable 1-D conv blocks (:class:`VisualConvBlock`) used as the visual front of
MuSE and SEANet:

=========  =====  ==========================================================================
name       input  pipeline
=========  =====  ==========================================================================
embedding  emb    ``[B, Tv, 512]`` precomputed lip embeddings -> V-TCN
resnet18   roi    ``[B, Tv, 88, 88]`` -> 3-D conv stem -> per-frame ResNet-18 trunk (512)
                  -> V-TCN
cnn        roi    ``[B, Tv, 88, 88]`` (+ frame differences) -> small per-frame 2-D CNN ->
                  V-TCN (fast enough for CPU demos)
=========  =====  ==========================================================================

ROI inputs are gray mouth crops, uint8 0..255 or float on the same 0..255 scale (divided by
``input_scale``; give ``input_scale=1.0`` for float crops already in 0..1).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import VisualEncoder
from avse.models.registry import register

__all__ = ["VisualConvBlock", "VTCN", "EmbeddingVisualEncoder", "ResNet18VisualEncoder",
           "SmallCNNVisualEncoder", "make_norm1d"]


def make_norm1d(kind: str, channels: int) -> nn.Module:
    """A normalisation over ``[B, C, T]``.

    ``"gln"``: global layer norm (statistics over C and T per utterance, per-channel affine;
    ``GroupNorm(1, C)``, as in SEANet); ``"bn"``: ``BatchNorm1d`` (as in MuSE).
    """
    if kind == "gln":
        return nn.GroupNorm(1, channels, eps=1e-8)
    if kind == "bn":
        return nn.BatchNorm1d(channels)
    raise ValueError(f"unknown norm {kind!r}; use 'gln' or 'bn'")


class VisualConvBlock(nn.Module):
    """Residual depthwise-separable 1-D conv block on ``[B, C, T]`` (T = video frames).

    With ``hidden=None`` (MuSE form, width C throughout)::

        x + pw(norm(prelu(dw(norm(relu(x))))))

    With ``hidden=H`` (SEANet form, a 1x1 expansion C -> H first)::

        x + pw(norm(prelu(dw(norm(relu(expand(norm(relu(x)))))))))

    ``dw`` is a depthwise conv (``kernel_size``, "same" padding, ``dilation``) and ``pw`` a
    pointwise conv back to C; convs have no bias.

    Arguments
    ---------
    channels : int
        C, the residual width.
    hidden : int or None
        H, the expanded width of the depthwise conv; None keeps C.
    kernel_size, dilation : int
        of the depthwise conv (odd kernel).
    norm : str
        ``"gln"`` or ``"bn"`` (:func:`make_norm1d`).
    """

    def __init__(self, channels: int, hidden: int | None = None, kernel_size: int = 3,
                 dilation: int = 1, norm: str = "gln"):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep Tv, got {kernel_size}")
        width = channels if hidden is None else hidden
        layers = [nn.ReLU()]
        if hidden is not None:
            layers += [make_norm1d(norm, channels), nn.Conv1d(channels, width, 1, bias=False),
                       nn.ReLU()]
        layers += [make_norm1d(norm, width),
                   nn.Conv1d(width, width, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                             dilation=dilation, groups=width, bias=False),
                   nn.PReLU(),
                   make_norm1d(norm, width),
                   nn.Conv1d(width, channels, 1, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, C, T]``."""
        return x + self.net(x)


class VTCN(nn.Module):
    """Visual temporal conv net: ``[B, in_dim, T]`` -> ``[B, out_dim, T]``.

    A bias-free 1x1 projection ``in_dim -> out_dim`` (omitted when they are equal and
    ``project`` is None) followed by ``num_blocks`` :class:`VisualConvBlock`.

    Defaults reproduce SEANet's visual front (512 -> 256, 5 blocks expanding to 512, gLN);
    ``out_dim=512, hidden=None, norm="bn"`` gives MuSE's (5 blocks at 512, BatchNorm, no
    projection).
    """

    def __init__(self, in_dim: int = 512, out_dim: int = 256, hidden: int | None = 512,
                 num_blocks: int = 5, kernel_size: int = 3, norm: str = "gln",
                 project: bool | None = None):
        super().__init__()
        if project is None:
            project = in_dim != out_dim
        if not project and in_dim != out_dim:
            raise ValueError(f"project=False needs in_dim == out_dim, got {in_dim} != {out_dim}")
        self.proj = nn.Conv1d(in_dim, out_dim, 1, bias=False) if project else nn.Identity()
        self.blocks = nn.Sequential(*[VisualConvBlock(out_dim, hidden, kernel_size, norm=norm)
                                      for _ in range(num_blocks)])
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim, T]`` -> ``[B, out_dim, T]``."""
        return self.blocks(self.proj(x))


# ----------------------------------------------------------------------------- input checks

def _roi_to_float(lips: torch.Tensor, name: str, input_scale: float, dtype) -> torch.Tensor:
    """Check ``[B, Tv, H, W]`` and return float in 0..1 (uint8 / 255, float / input_scale)."""
    if lips.dim() != 4 or lips.shape[-1] != lips.shape[-2] or lips.shape[-1] < 8:
        raise ValueError(f"{name} expects mouth ROIs [B, Tv, 88, 88] (uint8 0..255 or float), "
                         f"got {list(lips.shape)}; for [B, Tv, 512] embeddings use the "
                         "'embedding' visual encoder")
    if lips.dtype == torch.uint8:
        return lips.to(dtype) / 255.0
    if not lips.is_floating_point():
        raise ValueError(f"{name} expects uint8 or float ROIs, got {lips.dtype}")
    return lips.to(dtype) / input_scale


def _param_dtype(module: nn.Module):
    p = next(module.parameters(), None)
    return torch.float32 if p is None else p.dtype


@register("visual_encoder", "embedding")
class EmbeddingVisualEncoder(VisualEncoder):
    """Precomputed lip embeddings ``[B, Tv, in_dim]`` @25 fps -> ``[B, out_dim, Tv]``.

    The SEANet visual front: a bias-free projection ``in_dim -> out_dim`` then a
    :class:`VTCN` of ``num_blocks`` residual blocks (expansion to ``hidden``). MuSE's front
    is ``out_dim=512, hidden=None, norm="bn"`` (no projection when ``in_dim == out_dim``).

    Arguments
    ---------
    in_dim : int
        embedding size (512 for the usual lip-reading ResNet-18 embeddings).
    out_dim : int
        Dv.
    hidden : int or None
        expansion width inside each block; None: no expansion (MuSE form).
    num_blocks, kernel_size : int
        V-TCN depth and depthwise kernel.
    norm : str
        ``"gln"`` (SEANet) or ``"bn"`` (MuSE).

    Example
    -------
    >>> enc = EmbeddingVisualEncoder(out_dim=32, hidden=64, num_blocks=2)
    >>> enc(torch.randn(2, 10, 512)).shape
    torch.Size([2, 32, 10])
    """

    input_kind = "emb"

    def __init__(self, in_dim: int = 512, out_dim: int = 256, hidden: int | None = 512,
                 num_blocks: int = 5, kernel_size: int = 3, norm: str = "gln"):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.vtcn = VTCN(in_dim, out_dim, hidden, num_blocks, kernel_size, norm)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb ``[B, Tv, in_dim]`` (any float dtype) -> ``[B, out_dim, Tv]``."""
        if emb.dim() != 3 or emb.shape[-1] != self.in_dim or not emb.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects float lip embeddings "
                             f"[B, Tv, {self.in_dim}], got {list(emb.shape)} {emb.dtype}; "
                             "for [B, Tv, 88, 88] mouth ROIs use a 'roi' visual encoder "
                             "(resnet18, cnn)")
        x = emb.to(_param_dtype(self)).transpose(1, 2)
        return self.vtcn(x)


class _LipFrontend(nn.Module):
    """3-D conv stem + per-frame ResNet-18 trunk: ``[B, 1, Tv, H, W]`` -> ``[B, Tv, 512]``.

    State-dict keys: ``frontend3D.{0,1,2}.*`` (conv, BN, PReLU) and
    ``trunk.layer{1..4}.*`` (torchvision BasicBlocks), the naming of the common lip-reading
    front ends.
    """

    def __init__(self, act: str = "prelu"):
        super().__init__()
        from torchvision.models import resnet18

        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.PReLU(64) if act == "prelu" else nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
        net = resnet18(weights=None)  # its stem (conv1/bn1/maxpool) and fc are not used
        self.trunk = nn.Sequential(OrderedDict(
            layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
            avgpool=net.avgpool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t = x.shape[:3]
        x = self.frontend3D(x)                                   # [B, 64, Tv, H/4, W/4]
        c, h, w = x.shape[1], x.shape[3], x.shape[4]
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.trunk(x)                                        # [B*Tv, 512, 1, 1]
        return x.reshape(b, t, -1)


@register("visual_encoder", "resnet18")
class ResNet18VisualEncoder(VisualEncoder):
    """Mouth ROIs ``[B, Tv, 88, 88]`` @25 fps -> ``[B, out_dim, Tv]``.

    Lip-reading front end: pixels scaled to 0..1 and normalised ``(x - mean) / std``;
    Conv3d 1->64 (5x7x7, stride 1x2x2) + BN + PReLU (or ReLU) + MaxPool3d (1x3x3, stride
    1x2x2) -> 22x22 maps; then, per frame, torchvision ResNet-18 ``layer1..layer4`` +
    global average pool -> 512; then a :class:`VTCN` 512 -> ``out_dim``.

    Arguments
    ---------
    out_dim, hidden, num_blocks, kernel_size, norm :
        the V-TCN, as in :class:`EmbeddingVisualEncoder`.
    trainable : bool
        False freezes the stem + trunk: no gradients (run under ``torch.no_grad``) and kept in
        eval mode (BatchNorm statistics fixed) even when the model is put in train mode.
    pretrained : str or None
        path to a state dict for stem + trunk (keys ``frontend3D.*``, ``trunk.layer*.*``;
        one wrapped under ``"state_dict"``/``"model"`` is unwrapped), loaded strictly.
    mean, std : float
        pixel normalisation (0..1 scale).
    act : str
        stem activation, ``"prelu"`` or ``"relu"``.
    input_scale : float
        float ROIs are divided by this (255: the uint8 scale; 1: already 0..1).
    """

    input_kind = "roi"
    frame_dim = 512

    def __init__(self, out_dim: int = 256, hidden: int | None = 512, num_blocks: int = 5,
                 kernel_size: int = 3, norm: str = "gln", trainable: bool = True,
                 pretrained: str | None = None, mean: float = 0.421, std: float = 0.165,
                 act: str = "prelu", input_scale: float = 255.0):
        super().__init__()
        if act not in ("prelu", "relu"):
            raise ValueError(f"act must be 'prelu' or 'relu', got {act!r}")
        self.out_dim, self.trainable = out_dim, trainable
        self.mean, self.std, self.input_scale = float(mean), float(std), float(input_scale)
        self.frontend = _LipFrontend(act)
        if pretrained:
            self.load_frontend(pretrained)
        self.vtcn = VTCN(self.frame_dim, out_dim, hidden, num_blocks, kernel_size, norm)
        if not trainable:
            self.frontend.requires_grad_(False)
            self.frontend.eval()

    def load_frontend(self, path: str) -> None:
        """Load stem + trunk weights from ``path`` (strict; ValueError names bad keys)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrap in ("state_dict", "model_state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrap), dict) and len(state) == 1:
                state = state[wrap]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        own = self.frontend.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        bad_shape = sorted(k for k in set(own) & set(state)
                           if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or bad_shape:
            def head(keys):
                more = f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
                return ", ".join(keys[:8]) + more
            parts = [f"{label} keys: {head(keys)}" for label, keys in
                     (("missing", missing), ("unexpected", unexpected),
                      ("shape-mismatched", bad_shape)) if keys]
            raise ValueError(f"cannot load resnet18 front end from {path}: " + "; ".join(parts)
                             + " (expected keys frontend3D.* and trunk.layer1..4.*)")
        self.frontend.load_state_dict(state)

    def train(self, mode: bool = True):
        """Set train/eval mode; a frozen front end always stays in eval mode."""
        super().train(mode)
        if not self.trainable:
            self.frontend.eval()
        return self

    def frame_features(self, lips: torch.Tensor) -> torch.Tensor:
        """ROIs ``[B, Tv, H, W]`` -> per-frame 512-d features ``[B, Tv, 512]``."""
        x = _roi_to_float(lips, type(self).__name__, self.input_scale, _param_dtype(self))
        x = ((x - self.mean) / self.std).unsqueeze(1)            # [B, 1, Tv, H, W]
        if self.trainable:
            return self.frontend(x)
        with torch.no_grad():
            return self.frontend(x)

    def forward(self, lips: torch.Tensor) -> torch.Tensor:
        """lips ``[B, Tv, 88, 88]`` @25 fps (uint8 or float) -> ``[B, out_dim, Tv]``."""
        return self.vtcn(self.frame_features(lips).transpose(1, 2))


@register("visual_encoder", "cnn")
class SmallCNNVisualEncoder(VisualEncoder):
    """Small, fast mouth-ROI encoder for CPU demos: ``[B, Tv, 88, 88]`` -> ``[B, out_dim, Tv]``.

    Per frame: optional average-pool downsampling (``downsample``), then
    ``len(channels)`` conv 3x3 stride-2 + BN + ReLU layers, global average pool, linear to
    ``hidden``; then a :class:`VTCN` ``hidden -> out_dim`` of ``num_blocks`` blocks.
    Global pooling after a few convs can express mean darkness and size/shape of the
    mouth region. With ``diff=True`` a second input channel carries the frame difference
    ``x[t] - x[t-1]`` (0 at t = 0): motion, free of static appearance.

    Arguments
    ---------
    out_dim : int
        Dv.
    hidden : int
        per-frame feature size (the linear after pooling; the V-TCN input).
    num_blocks : int
        V-TCN blocks (MuSE form when ``tcn_hidden`` is None).
    channels : sequence of int
        widths of the stride-2 convs.
    diff : bool
        add frame differences as a second channel.
    downsample : int
        average-pool factor applied to the ROI first (2: 88 -> 44, the default, about 4x
        cheaper than 1: about 25 ms vs 100 ms for ``[4, 100, 88, 88]`` on 2 CPU cores).
    tcn_hidden : int or None
        expansion width inside the V-TCN blocks.
    kernel_size, norm :
        of the V-TCN.
    input_scale : float
        float ROIs are divided by this (255: the uint8 scale; 1: already 0..1).
    """

    input_kind = "roi"

    def __init__(self, out_dim: int = 64, hidden: int = 64, num_blocks: int = 2,
                 channels=(16, 32, 64, 64), diff: bool = True, downsample: int = 2,
                 tcn_hidden: int | None = None, kernel_size: int = 3, norm: str = "gln",
                 input_scale: float = 255.0):
        super().__init__()
        self.out_dim, self.diff, self.downsample = out_dim, bool(diff), int(downsample)
        self.input_scale = float(input_scale)
        layers, c_in = [], 2 if diff else 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.cnn = nn.Sequential(*layers)
        self.frame_proj = nn.Linear(c_in, hidden)
        self.vtcn = VTCN(hidden, out_dim, tcn_hidden, num_blocks, kernel_size, norm)

    def forward(self, lips: torch.Tensor) -> torch.Tensor:
        """lips ``[B, Tv, 88, 88]`` @25 fps (uint8 or float) -> ``[B, out_dim, Tv]``."""
        x = _roi_to_float(lips, type(self).__name__, self.input_scale, _param_dtype(self))
        b, t = x.shape[:2]
        x = x - 0.5                                              # centre pixels around 0
        frames = [x]
        if self.diff:
            frames.append(torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1))
        x = torch.stack(frames, 2).flatten(0, 1)                 # [B*Tv, 1|2, H, W]
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        x = self.cnn(x).mean(dim=(2, 3))                         # [B*Tv, C]
        x = self.frame_proj(x).reshape(b, t, -1).transpose(1, 2)  # [B, hidden, Tv]
        return self.vtcn(x)
