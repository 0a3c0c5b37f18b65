"""Conv-TasNet temporal convolutional network (TCN) separator, audio-visual.

AV-ConvTasNet style: channel-wise layer norm and a 1x1 bottleneck ``N -> B``, fusion with
the visual features at the input of the first repeat (or of every repeat), then R repeats
of X residual blocks with dilations ``1, 2, ..., 2^(X-1)``::

    1x1 conv B->H, PReLU, norm, depthwise conv (kernel P, dilation d), PReLU, norm,
    1x1 conv H->B (residual) [, 1x1 conv H->B (skip)]

and a mask head (PReLU, 1x1 conv ``B -> N``, ReLU or sigmoid) on the residual stream (or
on the sum of the skip outputs with ``skip=True``, as in the original Conv-TasNet).

Example
-------
>>> import torch
>>> sep = TCNSeparator(in_dim=16, visual_dim=8, bottleneck=8, hidden=16, num_blocks=2,
...                    num_repeats=2, intermediate_heads=True)
>>> out = sep(torch.rand(2, 16, 37), torch.randn(2, 8, 3), return_intermediate=True)
>>> [m.shape for m in out.masks]
[torch.Size([2, 16, 37]), torch.Size([2, 16, 37])]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import (Separator, SeparatorOutput, build_fusion, fusion_projection,
                              mask_activation)
from avse.models.registry import register


class ChannelNorm(nn.Module):
    """Channel-wise layer norm (cLN) of ``[B, C, L]``: statistics over C for each frame.

    Causal (each frame is normalised by itself).
    """

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, L]`` -> ``[B, C, L]``."""
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return torch.addcmul(self.bias, (x - mean) * torch.rsqrt(var + self.eps), self.weight)


def make_norm(kind: str, channels: int) -> nn.Module:
    """``"gln"`` (global layer norm, GroupNorm with one group), ``"cln"`` or ``"bn"``."""
    if kind == "gln":
        return nn.GroupNorm(1, channels, eps=1e-8)
    if kind == "cln":
        return ChannelNorm(channels)
    if kind == "bn":
        return nn.BatchNorm1d(channels)
    raise ValueError(f"norm must be 'gln', 'cln' or 'bn', got {kind!r}")


class TCNBlock(nn.Module):
    """Residual dilated depthwise-separable conv block: ``[B, Cb, L]`` -> ``[B, Cb, L]``.

    Arguments
    ---------
    dim : int
        Cb, the residual (bottleneck) channels.
    hidden : int
        H, channels of the depthwise conv.
    kernel_size : int
        P.
    dilation : int
        d.
    norm : str
        see :func:`make_norm`.
    causal : bool
        pad ``(P-1) d`` frames on the left only (else split evenly).
    skip : bool
        also return a skip output (1x1 conv H -> Cb).
    """

    def __init__(self, dim: int, hidden: int, kernel_size: int, dilation: int, norm: str = "gln",
                 causal: bool = False, skip: bool = False):
        super().__init__()
        total = (kernel_size - 1) * dilation
        if causal:
            self.pad = (total, 0)
        else:
            self.pad = (total // 2, total - total // 2)
        symmetric = self.pad[0] == self.pad[1]
        self.conv_in = nn.Conv1d(dim, hidden, 1, bias=False)
        self.act_in = nn.PReLU()
        self.norm_in = make_norm(norm, hidden)
        self.depthwise = nn.Conv1d(hidden, hidden, kernel_size, dilation=dilation, groups=hidden,
                                   padding=self.pad[0] if symmetric else 0, bias=False)
        self.needs_pad = not symmetric
        self.act_dw = nn.PReLU()
        self.norm_dw = make_norm(norm, hidden)
        self.res_conv = nn.Conv1d(hidden, dim, 1, bias=False)
        self.skip_conv = nn.Conv1d(hidden, dim, 1, bias=False) if skip else None

    def forward(self, x: torch.Tensor):
        """x ``[B, Cb, L]`` -> (residual output ``[B, Cb, L]``, skip ``[B, Cb, L]`` or None)."""
        y = self.norm_in(self.act_in(self.conv_in(x)))
        if self.needs_pad:
            y = F.pad(y, self.pad)
        y = self.norm_dw(self.act_dw(self.depthwise(y)))
        skip = self.skip_conv(y) if self.skip_conv is not None else None
        return x + self.res_conv(y), skip


@register("separator", "tcn")
class TCNSeparator(Separator):
    """AV Conv-TasNet TCN: feats ``[B, N, L]`` + visual ``[B, Dv, Tv]`` -> masks ``[B, N, L]``.

    Arguments
    ---------
    in_dim : int
        N, encoder channels.
    visual_dim : int
        Dv, visual encoder channels.
    fusion : spec
        fusion block(s), built with ``audio_dim=B``; default ``"concat"``. A fusion whose
        ``out_dim != B`` is followed by a 1x1 conv back to B.
    bottleneck : int
        B.
    hidden : int
        H, channels inside the blocks.
    kernel_size : int
        P, depthwise kernel.
    num_blocks : int
        X, blocks per repeat (dilations ``2^0 .. 2^(X-1)``).
    num_repeats : int
        R.
    mask_act : str
        ``"relu"``, ``"sigmoid"`` or ``"none"``.
    norm : str
        ``"gln"``, ``"cln"`` or ``"bn"`` inside the blocks (``"gln"`` is not causal).
    causal : bool
        left-only padding (needs ``norm`` ``"cln"`` or ``"bn"``).
    skip : bool
        skip outputs summed into the mask head input (original Conv-TasNet); default
        False: the mask head reads the residual stream (as the AV reference).
    intermediate_heads : bool
        with ``return_intermediate``, also give a mask after each earlier repeat (the
        mask head is shared); else only the final mask.
    fuse_each_repeat : bool
        one fusion block at the input of every repeat instead of the first only.
    """

    def __init__(self, in_dim: int, visual_dim: int, fusion="concat", bottleneck: int = 128,
                 hidden: int = 256, kernel_size: int = 3, num_blocks: int = 8,
                 num_repeats: int = 3, mask_act: str = "relu", norm: str = "gln",
                 causal: bool = False, skip: bool = False, intermediate_heads: bool = False,
                 fuse_each_repeat: bool = False):
        super().__init__()
        if causal and norm == "gln":
            raise ValueError("causal=True needs a causal norm: norm='cln' or 'bn', not 'gln'")
        mask_activation(mask_act)
        self.num_repeats, self.num_blocks = int(num_repeats), int(num_blocks)
        self.intermediate_heads = bool(intermediate_heads)
        self.skip = bool(skip)
        self.mask_act = mask_act
        self.in_norm = ChannelNorm(in_dim)
        self.bottleneck = nn.Conv1d(in_dim, bottleneck, 1, bias=False)
        n_fusions = self.num_repeats if fuse_each_repeat else 1
        self.fusions = nn.ModuleList(build_fusion(fusion, audio_dim=bottleneck, visual_dim=visual_dim)
                                     for _ in range(n_fusions))
        self.fusion_projs = nn.ModuleList(fusion_projection(f, bottleneck) for f in self.fusions)
        self.repeats = nn.ModuleList(
            nn.ModuleList(TCNBlock(bottleneck, hidden, kernel_size, 2 ** x, norm, causal, skip)
                          for x in range(self.num_blocks))
            for _ in range(self.num_repeats))
        self.mask_prelu = nn.PReLU()
        self.mask_conv = nn.Conv1d(bottleneck, in_dim, 1, bias=False)

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, Cb, L]`` -> mask ``[B, N, L]``."""
        return mask_activation(self.mask_act)(self.mask_conv(self.mask_prelu(x)))

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput (masks ``[B, N, L]``)."""
        x = self.bottleneck(self.in_norm(feats))  # [B, Cb, L]
        skip_sum = None
        masks = []
        for r, blocks in enumerate(self.repeats):
            if r < len(self.fusions):
                x = self.fusion_projs[r](self.fusions[r](x, visual))
            for block in blocks:
                x, s = block(x)
                if s is not None:
                    skip_sum = s if skip_sum is None else skip_sum + s
            last = r == self.num_repeats - 1
            if last or (return_intermediate and self.intermediate_heads):
                masks.append(self._mask(skip_sum if self.skip else x))
        return SeparatorOutput(masks)
