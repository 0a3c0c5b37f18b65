"""AV-DPRNN: dual-path BLSTM extractor with the visual stream fused once at its input.

After the AV-DPRNN baseline of the SEANet paper (Tao et al.): global layer norm and a
1x1 bottleneck ``N -> B``, fusion with the visual features (the reference concatenates the
upsampled visual features and projects ``B + Dv -> B``: the ``concat`` fusion), 50 %
overlapping chunks of K frames, R dual-path blocks (intra-chunk BLSTM, linear, gLN,
residual; then the same across chunks), overlap-add, and a mask head (PReLU, 1x1 conv
``B -> N``, ReLU) shared by all repeats, so each repeat yields an estimate (deep
supervision).

Internally the chunked tensor is kept channels-last, ``[M, S, K, B]`` (M batch, S chunks,
K frames per chunk), which is the layout the LSTMs and linears read without copies. The
chunking, the blocks and the gLN are :mod:`~avse.models.separators.dual_path`'s.

The chunking is the reference's by default (``padding="reference"``: K/2 zero frames before
the L frames, ``gap + K/2`` after, 66 chunks for 4 s with a 20-sample hop).
``padding="minimal"`` pads only up to the next multiple of K/2 (``S = ceil(L / (K/2)) + 1``,
65 for 4 s): the chunking of models trained before the reference padding was adopted.

With the reference's weights (converted by
:func:`avse.models.reference.dprnn.convert_reference_state_dict`) and the fusion
``{type: concat, align: linear}`` (the reference upsamples the visual stream linearly), the
model reproduces the reference AV-DPRNN (``TaoRuijie/SEANet``, ``model/dprnn.py``; 4.12 M
parameters): measured against the reference code on 4 s inputs ``[2, 64000]`` +
``[2, 100, 512]`` in eval mode, the max deviation of every one of the R estimates is 6.3e-7
of the output's peak in float32 (1.2e-15 in float64). With ``padding="minimal"`` it is about
0.1 of the peak, with the default nearest-neighbour visual alignment about 0.4.

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
from torch import nn

from avse.models.base import (Separator, SeparatorOutput, build_fusion, fusion_projection,
                              mask_activation)
from avse.models.registry import register
from avse.models.separators.dual_path import (PADDINGS, DualPathBlock, check_chunk_size,
                                              num_chunks, overlap_add, to_chunks)

__all__ = ["DPRNNSeparator"]


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
        fusion at the bottleneck, built with ``audio_dim=B``; default ``"concat"``; the
        reference is ``{type: concat, align: linear}`` (linear upsampling of the visual
        stream). A fusion whose ``out_dim != B`` is followed by a 1x1 conv to B.
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
    padding : str
        ``"reference"`` (default) or ``"minimal"`` chunking (see the module docstring).

    ``forward(..., return_intermediate=True)`` returns R masks (one per block, the last
    is the final one); otherwise only the final mask is computed.
    """

    def __init__(self, in_dim: int, visual_dim: int, fusion="concat", bottleneck: int = 64,
                 hidden: int = 128, chunk_size: int = 100, num_layers: int = 6,
                 mask_act: str = "relu", rnn_type: str = "LSTM", bidirectional: bool = True,
                 padding: str = "reference"):
        super().__init__()
        mask_activation(mask_act)
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {list(PADDINGS)}, got {padding!r}")
        self.padding = padding
        self.in_dim, self.bottleneck_dim = int(in_dim), int(bottleneck)
        self.chunk_size = check_chunk_size(chunk_size)
        self.hop = self.chunk_size // 2
        self.num_layers = int(num_layers)
        self.norm = nn.GroupNorm(1, in_dim, eps=1e-8)
        self.bottleneck = nn.Conv1d(in_dim, bottleneck, 1, bias=False)
        self.fusion = build_fusion(fusion, audio_dim=bottleneck, visual_dim=visual_dim)
        self.fusion_proj = fusion_projection(self.fusion, bottleneck)
        self.blocks = nn.ModuleList(DualPathBlock(bottleneck, hidden, rnn_type, bidirectional)
                                    for _ in range(num_layers))
        self.mask_prelu = nn.PReLU()
        self.mask_conv = nn.Conv1d(bottleneck, in_dim, 1, bias=False)
        self.mask_act = mask_act

    def num_chunks(self, length: int) -> int:
        """S, the number of chunks :meth:`_chunk` makes of L frames."""
        return num_chunks(length, self.chunk_size, self.padding)

    def _chunk(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, L, D]`` -> chunks ``[M, S, K, D]`` with the separator's ``padding``
        (:func:`~avse.models.separators.dual_path.to_chunks`)."""
        return to_chunks(x, self.chunk_size, self.padding)

    def _overlap_add(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """chunks ``[M, S, K, D]`` -> ``[M, L, D]`` (inverse of :meth:`_chunk` up to the sum)."""
        return overlap_add(chunks, length, self.hop)

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, L, B]`` -> mask ``[M, N, L]``."""
        mask = self.mask_conv(self.mask_prelu(x).transpose(1, 2))
        return mask_activation(self.mask_act)(mask)

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput (masks ``[B, N, L]``)."""
        length = feats.shape[-1]
        x = self.fusion_proj(self.fusion(self.bottleneck(self.norm(feats)), visual))  # [B, B, L]
        chunks = self._chunk(x.transpose(1, 2))  # [B, S, K, B]
        masks = []
        for i, block in enumerate(self.blocks):
            chunks = block(chunks)
            if return_intermediate or i == self.num_layers - 1:
                masks.append(self._mask(self._overlap_add(chunks, length)))
        return SeparatorOutput(masks)
