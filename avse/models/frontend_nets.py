"""Visual front-end networks: lip ROIs ``[B, Tv, H, W]`` @25 fps -> per-frame features
``[B, Tv, frame_dim]``.

A *front-end* (:class:`Frontend`) owns its pixel normalisation: it takes gray ROIs as uint8
0..255, or float on the same 0..255 scale. Registered under the registry kind ``"frontend"``:

========  ========  =====  ================================================================
name      roi_size  dim    network
========  ========  =====  ================================================================
cnn       88        hidden small CPU CNN: frame-difference channel, average-pool downsample,
                           stride-2 convs, global pool, linear to ``hidden``
resnet18  88        512    3-D conv stem + torchvision ResNet-18 trunk (keys ``frontend3D.*``,
                           ``trunk.*``)
dlr       112       512    the published deep-lip-reading front-end, exact architecture
                           (:class:`DLRFrontend`)
========  ========  =====  ================================================================

Files (save, load, convert) are in :mod:`avse.models.frontends`; the visual encoders that
put a V-TCN on top are in :mod:`avse.models.visual_encoders`.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from avse.models import registry
from avse.models.registry import register

__all__ = ["Frontend", "CNNFrontend", "ResNet18Frontend", "DLRFrontend", "check_rois"]


def check_rois(rois: torch.Tensor, name: str, roi_size: int, exact: bool = False,
               dtype=torch.float32) -> torch.Tensor:
    """Check lip ROIs ``[B, Tv, H, W]`` and return them as float of ``dtype`` on the 0..255
    scale (uint8 cast; float kept as is).

    ``exact``: H = W = ``roi_size`` is required (else any square side >= 8).

    >>> check_rois(torch.zeros(1, 2, 88, 88, dtype=torch.uint8), "enc", 88).dtype
    torch.float32
    >>> check_rois(torch.zeros(1, 2, 512), "enc", 88)
    Traceback (most recent call last):
    ...
    ValueError: enc expects lip ROIs [B, Tv, 88, 88] (uint8 0..255 or float on the same scale), got [1, 2, 512]; for [B, Tv, 512] embeddings use the 'embedding' visual encoder
    """
    side_ok = rois.dim() == 4 and rois.shape[-1] == rois.shape[-2] and (
        rois.shape[-1] == roi_size if exact else rois.shape[-1] >= 8)
    if not side_ok:
        raise ValueError(f"{name} expects lip ROIs [B, Tv, {roi_size}, {roi_size}] (uint8 0..255 "
                         f"or float on the same scale), got {list(rois.shape)}; for "
                         "[B, Tv, 512] embeddings use the 'embedding' visual encoder")
    if rois.dtype != torch.uint8 and not rois.is_floating_point():
        raise ValueError(f"{name} expects uint8 or float ROIs, got {rois.dtype}")
    return rois.to(dtype)


class Frontend(nn.Module):
    """Lip ROIs ``[B, Tv, H, W]`` (uint8 0..255 or float on that scale) -> ``[B, Tv, frame_dim]``.

    Attributes: ``frame_dim`` (int), ``roi_size`` (the side it expects: 88 or 112),
    ``preset`` (the crop preset it expects, e.g. ``"lipread"``; None: whatever it was trained
    on, set from the file by :func:`avse.models.frontends.load_frontend`), ``registry_name``
    (its short name, set by the registry), ``config`` (its constructor kwargs, JSON-like).
    """

    frame_dim: int
    roi_size: int = 88
    exact_size: bool = False
    preset: str | None = None
    registry_name: str

    def __init__(self, **config):
        super().__init__()
        self.config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    def param_dtype(self):
        p = next(self.parameters(), None)
        return torch.float32 if p is None else p.dtype

    def to_float(self, rois: torch.Tensor) -> torch.Tensor:
        """Checked ROIs as float (parameter dtype), still 0..255."""
        return check_rois(rois, type(self).__name__, self.roi_size, self.exact_size,
                          self.param_dtype())

    def forward(self, rois: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


registry.set_base("frontend", Frontend)


class LeftPadConv3d(nn.Conv3d):
    """A ``Conv3d`` over ``[B, C, T, H, W]`` with no time padding of its own that pads
    ``kernel_size[0] - 1`` frames on the left: frame t sees frames <= t (causal)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 0, 0, 0, self.kernel_size[0] - 1, 0)))


@register("frontend", "cnn")
class CNNFrontend(Frontend):
    """Small, fast per-frame CNN for CPU demos: ``[B, Tv, 88, 88]`` -> ``[B, Tv, hidden]``.

    Pixels to 0..1 minus 0.5; with ``diff`` a second channel carries the frame difference
    ``x[t] - x[t-1]`` (0 at t = 0): motion, free of static appearance; average-pool
    downsampling by ``downsample`` (2: 88 -> 44, about 4x cheaper than 1); ``len(channels)``
    conv 3x3 stride-2 + BN + ReLU layers; global average pool; linear to ``hidden``.

    Example
    -------
    >>> fe = CNNFrontend(hidden=8, channels=(4, 8))
    >>> fe(torch.zeros(2, 5, 88, 88, dtype=torch.uint8)).shape
    torch.Size([2, 5, 8])
    """

    roi_size = 88

    def __init__(self, hidden: int = 64, channels=(16, 32, 64, 64), diff: bool = True,
                 downsample: int = 2):
        super().__init__(hidden=int(hidden), channels=[int(c) for c in channels],
                         diff=bool(diff), downsample=int(downsample))
        self.frame_dim, self.diff, self.downsample = int(hidden), bool(diff), int(downsample)
        layers, c_in = [], 2 if diff else 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.cnn = nn.Sequential(*layers)
        self.frame_proj = nn.Linear(c_in, hidden)

    def forward(self, rois: torch.Tensor) -> torch.Tensor:
        """rois ``[B, Tv, H, W]`` 0..255 -> ``[B, Tv, hidden]``."""
        x = self.to_float(rois) / 255.0 - 0.5                    # centre pixels around 0
        b, t = x.shape[:2]
        frames = [x]
        if self.diff:
            frames.append(torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1))
        x = torch.stack(frames, 2).flatten(0, 1)                 # [B*Tv, 1|2, H, W]
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        x = self.cnn(x).mean(dim=(2, 3))                         # [B*Tv, C]
        return self.frame_proj(x).reshape(b, t, -1)


@register("frontend", "resnet18")
class ResNet18Frontend(Frontend):
    """3-D conv stem + per-frame ResNet-18 trunk: ``[B, Tv, 88, 88]`` -> ``[B, Tv, 512]``.

    Pixels to 0..1, normalised ``(x - mean) / std``; Conv3d 1->64 (5x7x7, stride 1x2x2) + BN
    + PReLU (or ReLU) + MaxPool3d (1x3x3, stride 1x2x2); then per frame torchvision ResNet-18
    ``layer1..layer4`` + global average pool. State-dict keys ``frontend3D.{0,1,2}.*`` and
    ``trunk.layer{1..4}.*`` (torchvision BasicBlocks), the naming of the common lip-reading
    front ends. ``causal=True`` pads the stem's 5 frames on the left only (no look-ahead;
    same parameters).

    Example
    -------
    >>> ResNet18Frontend()(torch.zeros(1, 2, 88, 88, dtype=torch.uint8)).shape
    torch.Size([1, 2, 512])
    """

    roi_size = 88
    frame_dim = 512

    def __init__(self, act: str = "prelu", mean: float = 0.421, std: float = 0.165,
                 causal: bool = False):
        if act not in ("prelu", "relu"):
            raise ValueError(f"act must be 'prelu' or 'relu', got {act!r}")
        super().__init__(act=act, mean=float(mean), std=float(std),
                         **({"causal": True} if causal else {}))  # default config unchanged
        from torchvision.models import resnet18

        self.mean, self.std, self.causal = float(mean), float(std), bool(causal)
        stem = LeftPadConv3d if causal else nn.Conv3d
        self.frontend3D = nn.Sequential(
            stem(1, 64, (5, 7, 7), stride=(1, 2, 2), padding=(0 if causal else 2, 3, 3),
                 bias=False),
            nn.BatchNorm3d(64),
            nn.PReLU(64) if act == "prelu" else nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
        net = resnet18(weights=None)  # its stem (conv1/bn1/maxpool) and fc are not used
        self.trunk = nn.Sequential(OrderedDict(
            layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
            avgpool=net.avgpool))

    def forward(self, rois: torch.Tensor) -> torch.Tensor:
        """rois ``[B, Tv, H, W]`` 0..255 -> ``[B, Tv, 512]``."""
        x = (self.to_float(rois) / 255.0 - self.mean) / self.std
        b, t = x.shape[:2]
        x = self.frontend3D(x.unsqueeze(1))                      # [B, 64, Tv, H/4, W/4]
        x = x.transpose(1, 2).flatten(0, 1)                      # [B*Tv, 64, H/4, W/4]
        return self.trunk(x).reshape(b, t, -1)                   # [B, Tv, 512]


# ------------------------------------------------------------------- deep-lip-reading front-end

def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _DLRUnit(nn.Module):
    """The residual branch conv3x3(stride)-BN-ReLU-conv3x3 and the BN that follows the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _bn2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn_out = _bn2d(c_out)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


class _DLRStage(nn.Module):
    """Two units; the residual is added *before* each unit's BN-ReLU, and the second unit's
    residual is the first unit's sum (not its BN-ReLU output). ``shortcut``: a bias-free 1x1
    conv with the stride, no BN (only when the stride is not 1)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.a = _DLRUnit(c_in, c_out, stride)
        self.b = _DLRUnit(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        total = self.a.branch(x) + residual
        h = F.relu(self.a.bn_out(total))
        total = self.b.branch(h) + total
        return F.relu(self.b.bn_out(total))


@register("frontend", "dlr")
class DLRFrontend(Frontend):
    """The deep-lip-reading visual front-end (``visual_frontend.pt``): ``[B, Tv, 112, 112]``
    gray 0..255 -> ``[B, Tv, 512]``, the embeddings MuSE and SEANet were trained on.

    Pixels ``x / 255`` then ``(x - 0.4161) / 0.1688``; Conv3d 1->64 k(5,7,7) s(1,2,2)
    p(2,3,3) no bias, BatchNorm3d (eps 1e-3), ReLU, MaxPool3d k(1,3,3) s(1,2,2) p(0,1,1)
    (-> 28x28); per frame 4 stages (64 s1, 128 s2, 256 s2, 512 s2) of two residual units
    (see :class:`_DLRStage`; BatchNorm2d eps 1e-3, bias-free convs) -> 4x4; AvgPool2d(4).
    Our key names (``stem.*``, ``stages.{0..3}.{a,b,shortcut}.*``) map to the published
    ones (``frontend3D.*``, ``resnet.layer{1..4}.*``) in :mod:`avse.models.reference.dlr`.
    The 3-D stem's temporal kernel of 5 makes outputs near chunk edges depend on the
    neighbours: run a whole clip in one pass.

    Example
    -------
    >>> DLRFrontend().eval()(torch.zeros(1, 2, 112, 112, dtype=torch.uint8)).shape
    torch.Size([1, 2, 512])
    """

    roi_size = 112
    exact_size = True
    frame_dim = 512
    preset = "lipread"
    mean, std = 0.4161, 0.1688

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv3d(1, 64, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            bn=nn.BatchNorm3d(64, eps=1e-3, momentum=0.01),
            relu=nn.ReLU(),
            pool=nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))))
        self.stages = nn.Sequential(_DLRStage(64, 64, 1), _DLRStage(64, 128, 2),
                                    _DLRStage(128, 256, 2), _DLRStage(256, 512, 2))

    def forward(self, rois: torch.Tensor) -> torch.Tensor:
        """rois ``[B, Tv, 112, 112]`` 0..255 -> ``[B, Tv, 512]``."""
        x = (self.to_float(rois) / 255.0 - self.mean) / self.std
        b, t = x.shape[:2]
        x = self.stem(x.unsqueeze(1))                            # [B, 64, Tv, 28, 28]
        x = x.transpose(1, 2).flatten(0, 1)                      # [B*Tv, 64, 28, 28]
        x = F.avg_pool2d(self.stages(x), 4, stride=1)            # [B*Tv, 512, 1, 1]
        return x.reshape(b, t, -1)
