"""AV-DPRNN: dual-path BLSTM extractor with the visual stream fused once at its input.

After the AV-DPRNN baseline of the SEANet paper (Tao et al.): global layer norm and a
1x1 bottleneck ``N -> B``, fusion with the visual features (the reference concatenates the
upsampled visual features and projects ``B + Dv -> B``: the ``concat`` fusion), 50 %
overlapping chunks of K frames, R dual-path blocks (intra-chunk BLSTM, linear, gLN,
residual; then the same across chunks), overlap-add, and a mask head (PReLU, 1x1 conv
``B -> N``, ReLU) shared by all repeats, so each repeat yields an estimate (deep
supervision).

Internally the chunked tensor is kept channels-last, ``[M, S, K, B]`` (M batch, S chunks,
K frames per chunk), which is the layout the LSTMs and linears read without copies.

Example
-------
>>> import torch
>>> sep = DPRNNSeparator(in_dim=16, visual_dim=8, bottleneck=8, hidden=8, chunk_size=10,
...                      num_layers=2)
>>> out = sep(torch.rand(2, 16, 37), torch.randn(2, 8, 3), return_intermediate=True)
>>> [m.shape for m in out.masks]
[torch.Size([2, 16, 37]), torch.Size([2, 16, 37])]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.registry import register
from avse.models.base import Separator, SeparatorOutput, build_fusion

_MASK_ACTS = {"relu": F.relu, "sigmoid": torch.sigmoid, "none": None}


class GlobalNormLast(nn.Module):
    """Global layer norm (gLN) of a channels-last tensor ``[M, ..., C]``.

    Mean and variance over every axis but the batch one (as ``GroupNorm(1, C)`` on the
    channels-first layout), then a per-channel affine map.
    """

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, ..., C]`` -> same shape."""
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[1:], eps=self.eps), self.weight)


class DualPathBlock(nn.Module):
    """One dual-path block on chunks ``[M, S, K, D]``.

    ``x = x + gLN(Linear(RNN_intra(x)))`` along the K frames of each chunk, then
    ``x = x + gLN(Linear(RNN_inter(x)))`` along the S chunks for each frame position.

    Arguments
    ---------
    dim : int
        D, the feature size (bottleneck B).
    hidden : int
        H, the RNN hidden size per direction.
    rnn_type : str
        ``"LSTM"`` (reference), ``"GRU"`` or ``"RNN"``.
    bidirectional : bool
        the reference uses BLSTMs for both paths.
    """

    def __init__(self, dim: int, hidden: int, rnn_type: str = "LSTM", bidirectional: bool = True):
        super().__init__()
        rnn = getattr(nn, rnn_type)
        out = hidden * (2 if bidirectional else 1)
        self.intra_rnn = rnn(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.intra_linear = nn.Linear(out, dim)
        self.intra_norm = GlobalNormLast(dim)
        self.inter_rnn = rnn(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.inter_linear = nn.Linear(out, dim)
        self.inter_norm = GlobalNormLast(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, S, K, D]`` (contiguous) -> ``[M, S, K, D]`` (contiguous)."""
        m, s, k, d = x.shape
        y, _ = self.intra_rnn(x.view(m * s, k, d))  # [M*S, K, 2H]
        x = x + self.intra_norm(self.intra_linear(y).view(m, s, k, d))
        xt = x.transpose(1, 2).reshape(m * k, s, d)  # [M*K, S, D], one copy
        y, _ = self.inter_rnn(xt)  # [M*K, S, 2H]
        y = self.inter_norm(self.inter_linear(y).view(m, k, s, d))
        return (xt.view(m, k, s, d) + y).transpose(1, 2).contiguous()


@register("separator", "dprnn")
class DPRNNSeparator(Separator):
    """AV-DPRNN separator: feats ``[B, N, L]`` + visual ``[B, Dv, Tv]`` -> masks ``[B, N, L]``.

    Arguments
    ---------
    in_dim : int
        N, encoder channels (reference 256).
    visual_dim : int
        Dv, visual encoder channels.
    fusion : spec
        fusion at the bottleneck, built with ``audio_dim=B``; default ``"concat"``
        (reference). A fusion whose ``out_dim != B`` is followed by a 1x1 conv to B.
    bottleneck : int
        B (reference 64).
    hidden : int
        H, RNN hidden size per direction (reference 128).
    chunk_size : int
        K, frames per chunk (reference 100; even, chunks overlap by K/2).
    num_layers : int
        R, dual-path blocks (reference 6); each gives an estimate.
    mask_act : str
        ``"relu"`` (reference), ``"sigmoid"`` or ``"none"``.
    rnn_type : str
        ``"LSTM"`` (reference), ``"GRU"`` or ``"RNN"``.
    bidirectional : bool
        bidirectional RNNs (reference True).

    ``forward(..., return_intermediate=True)`` returns R masks (one per block, the last
    is the final one); otherwise only the final mask is computed.
    """

    def __init__(self, in_dim: int, visual_dim: int, fusion="concat", bottleneck: int = 64,
                 hidden: int = 128, chunk_size: int = 100, num_layers: int = 6,
                 mask_act: str = "relu", rnn_type: str = "LSTM", bidirectional: bool = True):
        super().__init__()
        if chunk_size < 2 or chunk_size % 2:
            raise ValueError(f"chunk_size must be even and >= 2 (50 % overlap), got {chunk_size}")
        if mask_act not in _MASK_ACTS:
            raise ValueError(f"mask_act must be one of {sorted(_MASK_ACTS)}, got {mask_act!r}")
        self.in_dim, self.bottleneck_dim = int(in_dim), int(bottleneck)
        self.chunk_size, self.hop = int(chunk_size), int(chunk_size) // 2
        self.num_layers = int(num_layers)
        self.norm = nn.GroupNorm(1, in_dim, eps=1e-8)
        self.bottleneck = nn.Conv1d(in_dim, bottleneck, 1, bias=False)
        self.fusion = build_fusion(fusion, audio_dim=bottleneck, visual_dim=visual_dim)
        self.fusion_proj = (nn.Conv1d(self.fusion.out_dim, bottleneck, 1, bias=False)
                            if self.fusion.out_dim != bottleneck else None)
        self.blocks = nn.ModuleList(DualPathBlock(bottleneck, hidden, rnn_type, bidirectional)
                                    for _ in range(num_layers))
        self.mask_prelu = nn.PReLU()
        self.mask_conv = nn.Conv1d(bottleneck, in_dim, 1, bias=False)
        self.mask_act = mask_act

    def _segment(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, L, D]`` -> chunks ``[M, S, K, D]``, ``S = ceil(L / (K/2)) + 1``.

        K/2 zero frames before, enough after, so that every frame lies in two chunks.
        """
        m, length, d = x.shape
        hop = self.hop
        s = -(-length // hop) + 1
        x = F.pad(x, (0, 0, hop, (s + 1) * hop - hop - length))  # [M, (S+1) K/2, D]
        halves = x.view(m, s + 1, hop, d)
        return torch.cat((halves[:, :-1], halves[:, 1:]), dim=2)

    def _overlap_add(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """chunks ``[M, S, K, D]`` -> ``[M, L, D]`` (inverse of :meth:`_segment` up to the sum)."""
        m, s, _, d = chunks.shape
        hop = self.hop
        first, second = chunks[:, :, :hop], chunks[:, :, hop:]
        # half-chunk j of the padded sequence = first half of chunk j + second of chunk j-1;
        # the padded first/last halves hold no real frame, so only the middle is summed
        mid = (first[:, 1:] + second[:, :-1]).view(m, (s - 1) * hop, d)
        return mid[:, :length]

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, L, B]`` -> mask ``[M, N, L]``."""
        mask = self.mask_conv(self.mask_prelu(x).transpose(1, 2))
        act = _MASK_ACTS[self.mask_act]
        return act(mask) if act is not None else mask

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput (masks ``[B, N, L]``)."""
        length = feats.shape[-1]
        x = self.fusion(self.bottleneck(self.norm(feats)), visual)  # [B, B', L]
        if self.fusion_proj is not None:
            x = self.fusion_proj(x)
        chunks = self._segment(x.transpose(1, 2))  # [B, S, K, B']
        masks = []
        for i, block in enumerate(self.blocks):
            chunks = block(chunks)
            if return_intermediate or i == self.num_layers - 1:
                masks.append(self._mask(self._overlap_add(chunks, length)))
        return SeparatorOutput(masks)
