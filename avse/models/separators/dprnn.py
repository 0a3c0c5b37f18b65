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
chunking, the blocks, the front and the mask head are
:mod:`~avse.models.separators.dual_path`'s (:class:`~.dual_path.DualPathMasker`).

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

from avse.models.base import SeparatorOutput
from avse.models.registry import register
from avse.models.separators.dual_path import PADDINGS, DualPathBlock, DualPathMasker

__all__ = ["DPRNNSeparator"]


@register("separator", "dprnn")
class DPRNNSeparator(DualPathMasker):
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
    causal : bool
        False (default): the reference model. True: unidirectional intra and inter RNNs
        (``bidirectional`` is ignored), per-frame norms (cLN at the front, a LayerNorm over
        the B features of each chunk item in the blocks) and a causal fusion (``causal: true``
        added to its spec: ``hold`` alignment); the mask of frame t then depends on frames up
        to t only, and :mod:`avse.streaming.dprnn` runs the model frame block by frame block.

    ``forward(..., return_intermediate=True)`` returns R masks (one per block, the last
    is the final one); otherwise only the final mask is computed.
    """

    def __init__(self, in_dim: int, visual_dim: int, fusion="concat", bottleneck: int = 64,
                 hidden: int = 128, chunk_size: int = 100, num_layers: int = 6,
                 mask_act: str = "relu", rnn_type: str = "LSTM", bidirectional: bool = True,
                 padding: str = "reference", causal: bool = False):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {list(PADDINGS)}, got {padding!r}")
        self.padding = padding
        self._init_front(in_dim, visual_dim, fusion, bottleneck, chunk_size, num_layers,
                         mask_act, causal=causal)
        self.blocks = nn.ModuleList(DualPathBlock(bottleneck, hidden, rnn_type, bidirectional,
                                                  causal=self.causal)
                                    for _ in range(num_layers))
        self._init_mask_head()

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput (masks ``[B, N, L]``)."""
        length = feats.shape[-1]
        chunks = self._fused_chunks(feats, visual)  # [B, S, K, B]
        masks = []
        for i, block in enumerate(self.blocks):
            chunks = block(chunks)
            if return_intermediate or i == self.num_layers - 1:
                masks.append(self._mask(chunks, length))
        return SeparatorOutput(masks)
