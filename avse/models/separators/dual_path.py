"""Dual-path building blocks shared by AV-DPRNN, SEANet and AV-Sepformer.

The chunking functions, the channels-last gLN (:class:`GlobalNormLast`) and the dual-path
RNN block (:class:`DualPathBlock`); and :class:`DualPathMasker`, the front and mask head
AV-DPRNN and SEANet share.

A dual-path separator cuts its bottleneck features ``[M, L, D]`` (channels last) into 50 %
overlapping chunks ``[M, S, K, D]`` of K frames (hop K/2), alternates processing within
chunks (along K) and across chunks (along S), and overlap-adds the chunks back to L frames.

Chunking (:func:`to_chunks`): chunk j covers the frames ``[(j - 1) K/2, (j + 1) K/2)``, so
K/2 zero frames come first. ``padding="reference"`` is the SEANet repository's: ``gap + K/2``
zero frames after the L frames, with ``gap = K - (K/2 + L mod K) mod K`` (1..K), so that
``S = (L + gap + K/2) / (K/2)`` (66 chunks for 4 s with a 20-sample hop);
``padding="minimal"`` pads only up to the next multiple of K/2, ``S = ceil(L / (K/2)) + 1``.
Every frame lies in exactly two chunks, so ``overlap_add(to_chunks(x))`` is ``2 x``.
Both export with a dynamic L (``torch.export``): S is computed with one floor division, the
chunks are an ``unfold`` and the overlap-add gathers the L frames (no view or slice whose size
the exporter would have to relate to L).

Causal form (``causal=True`` of :class:`DualPathBlock` and of :meth:`DualPathMasker._init_front`):
unidirectional RNNs within and across chunks, per-frame norms (channel-wise layer norm at the
front, a LayerNorm over the features of each chunk item in the blocks) and a causal fusion.
Position p of chunk j then depends on positions ``<= p`` of chunk j and on position p of the
chunks before j, all of which are frames ``<= (j - 1) K/2 + p``: frame t's mask depends on
frames up to t only.

Example
-------
>>> import torch
>>> x = torch.randn(2, 37, 8)  # [M, L, D]
>>> chunks = to_chunks(x, chunk_size=10)  # [M, S, K, D]
>>> chunks.shape, num_chunks(37, 10)
(torch.Size([2, 10, 10, 8]), 10)
>>> torch.allclose(overlap_add(chunks, 37, hop=5), 2 * x)
True
>>> DualPathBlock(dim=8, hidden=4)(chunks).shape
torch.Size([2, 10, 10, 8])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import Separator, build_fusion, fusion_projection, mask_activation
from avse.models.separators.tcn import ChannelNorm

__all__ = ["PADDINGS", "check_chunk_size", "reference_gap", "reference_num_chunks",
           "num_chunks", "segment", "to_chunks", "overlap_add", "GlobalNormLast",
           "causal_fusion_spec", "DualPathBlock", "DualPathMasker"]

PADDINGS = ("reference", "minimal")


def check_chunk_size(chunk_size: int) -> int:
    """``chunk_size`` as an int; ValueError unless it is even and >= 2 (chunks overlap by half)."""
    if chunk_size < 2 or chunk_size % 2:
        raise ValueError(f"chunk_size must be even and >= 2 (50 % overlap), got {chunk_size}")
    return int(chunk_size)


def reference_gap(length: int, chunk_size: int) -> int:
    """Frames the reference appends before its K/2 end padding: ``K - (K/2 + L mod K) mod K``
    (1..K), so that ``L + gap + K/2`` is a multiple of K."""
    return chunk_size - (chunk_size // 2 + length % chunk_size) % chunk_size


def reference_num_chunks(length: int, chunk_size: int) -> int:
    """S of the reference chunking of L frames: ``(L + gap + K/2) / (K/2)``."""
    # L + K/2 + gap is the first multiple of K above L + K/2 (gap is 1..K): one floor
    # division, which torch.export keeps symbolic with a dynamic L
    return 2 * ((length + chunk_size // 2) // chunk_size) + 2


def num_chunks(length: int, chunk_size: int, padding: str = "reference") -> int:
    """S, the number of chunks :func:`to_chunks` makes of L frames with ``padding``."""
    if padding == "reference":
        return reference_num_chunks(length, chunk_size)
    if padding == "minimal":
        return (length + chunk_size // 2 - 1) // (chunk_size // 2) + 1  # ceil(L / (K/2)) + 1
    raise ValueError(f"padding must be one of {list(PADDINGS)}, got {padding!r}")


def segment(x: torch.Tensor, hop: int, num_chunks: int | None = None) -> torch.Tensor:
    """x ``[M, L, D]`` -> chunks ``[M, S, 2 hop, D]`` overlapping by half; chunk j starts at
    frame ``(j - 1) hop`` (``hop`` zero frames before, zeros after up to ``(S + 1) hop``).

    ``num_chunks`` (S) defaults to the fewest that cover every frame twice,
    ``ceil(L / hop) + 1``; the reference chunking passes :func:`reference_num_chunks`.
    """
    length = x.shape[1]
    s = (length + hop - 1) // hop + 1 if num_chunks is None else num_chunks
    x = F.pad(x, (0, 0, hop, (s + 1) * hop - hop - length))  # [M, (S+1) hop, D]
    # windows of 2 hop frames every hop frames; unfold, not a view into halves: torch.export
    # cannot prove the padded length a multiple of S + 1 when L is dynamic
    return x.unfold(1, 2 * hop, hop).transpose(2, 3).contiguous()


def to_chunks(x: torch.Tensor, chunk_size: int, padding: str = "reference") -> torch.Tensor:
    """x ``[M, L, D]`` -> chunks ``[M, S, K, D]`` (K = ``chunk_size``, hop K/2) with ``padding``
    (see the module docstring); S is :func:`num_chunks`."""
    return segment(x, chunk_size // 2, num_chunks(x.shape[1], chunk_size, padding))


def overlap_add(chunks: torch.Tensor, length: int, hop: int) -> torch.Tensor:
    """chunks ``[M, S, 2 hop, D]`` -> ``[M, L, D]``: each frame summed over its two chunks
    (the inverse of :func:`segment` up to that sum)."""
    # frame t = position t mod hop of chunk t // hop + 1 (its first half) + position
    # t mod hop + hop of chunk t // hop (its second half); gathered for the L frames (views and
    # slices of the padded length would make torch.export prove facts about S and L)
    t = torch.arange(length, device=chunks.device)
    j, q = torch.div(t, hop, rounding_mode="floor"), t % hop
    return chunks[:, j + 1, q] + chunks[:, j, q + hop]


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


def causal_fusion_spec(spec):
    """A fusion spec (short name, dict, class or built module) with ``causal: True``.

    A built module is returned as is when it is causal (its ``causal`` flag set, or its
    ``align`` is ``"hold"``); ValueError otherwise.
    """
    if isinstance(spec, nn.Module):
        if getattr(spec, "causal", False) or getattr(spec, "align", None) == "hold":
            return spec
        raise ValueError(f"causal=True: the built fusion {type(spec).__name__} is not causal; "
                         "give it as a spec")
    spec = dict(spec) if isinstance(spec, dict) else {"type": spec}
    return {**spec, "causal": True}


class DualPathBlock(nn.Module):
    """One dual-path RNN block on chunks ``[M, S, K, D]``.

    ``x = x + gLN(Linear(RNN_intra(x)))`` along the K frames of each chunk, then
    ``x = x + gLN(Linear(RNN_inter(x)))`` along the S chunks for each frame position.
    Causal (``causal=True``): unidirectional RNNs, and a LayerNorm over D of each chunk item
    instead of gLN.

    Arguments
    ---------
    dim : int
        D, the feature size (bottleneck B).
    hidden : int
        H, the RNN hidden size per direction.
    rnn_type : str
        ``"LSTM"`` (reference), ``"GRU"`` or ``"RNN"``.
    bidirectional : bool
        the reference uses BLSTMs for both paths (ignored when ``causal``).
    causal : bool
        unidirectional RNNs and per-item LayerNorms (see above).
    """

    def __init__(self, dim: int, hidden: int, rnn_type: str = "LSTM", bidirectional: bool = True,
                 causal: bool = False):
        super().__init__()
        rnn = getattr(nn, rnn_type)
        bidirectional = bidirectional and not causal
        out = hidden * (2 if bidirectional else 1)

        def norm():
            return nn.LayerNorm(dim, eps=1e-8) if causal else GlobalNormLast(dim)

        self.intra_rnn = rnn(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.intra_linear = nn.Linear(out, dim)
        self.intra_norm = norm()
        self.inter_rnn = rnn(dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.inter_linear = nn.Linear(out, dim)
        self.inter_norm = norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, S, K, D]`` (contiguous) -> ``[M, S, K, D]`` (contiguous)."""
        m, s, k, d = x.shape
        y, _ = self.intra_rnn(x.view(m * s, k, d))  # [M*S, K, 2H]
        x = x + self.intra_norm(self.intra_linear(y).view(m, s, k, d))
        xt = x.transpose(1, 2).reshape(m * k, s, d)  # [M*K, S, D], one copy
        y, _ = self.inter_rnn(xt)  # [M*K, S, 2H]
        y = self.inter_norm(self.inter_linear(y).view(m, k, s, d))
        return (xt.view(m, k, s, d) + y).transpose(1, 2).contiguous()


class DualPathMasker(Separator):
    """Base of the separators with AV-DPRNN's front and mask head (AV-DPRNN, SEANet).

    Front (:meth:`_fused_chunks`): gLN over feats ``[B, N, L]``, 1x1 bottleneck ``N -> B``,
    the fusion block (built with ``audio_dim=B``) and its map back to B
    (:func:`~avse.models.base.fusion_projection`), then 50 % overlapping chunks
    ``[B, S, K, B]`` with ``self.padding``. Mask head (:meth:`_mask`): overlap-add, PReLU,
    1x1 conv ``B -> N``, ``mask_act``; one head for every estimate. A subclass calls
    :meth:`_init_front` first, builds its blocks, then calls :meth:`_init_mask_head`.
    With ``causal=True`` the front norm is channel-wise (cLN, per frame) and the fusion is
    built causal (:func:`causal_fusion_spec`).
    """

    padding = "reference"
    causal = False

    def _init_front(self, in_dim: int, visual_dim: int, fusion, bottleneck: int,
                    chunk_size: int, num_layers: int, mask_act: str, causal: bool = False) -> None:
        mask_activation(mask_act)
        self.in_dim, self.bottleneck_dim = int(in_dim), int(bottleneck)
        self.chunk_size = check_chunk_size(chunk_size)
        self.hop = self.chunk_size // 2
        self.num_layers = int(num_layers)
        self.mask_act = mask_act
        self.causal = bool(causal)
        if self.causal:
            self.norm = ChannelNorm(in_dim)
            fusion = causal_fusion_spec(fusion)
        else:
            self.norm = nn.GroupNorm(1, in_dim, eps=1e-8)
        self.bottleneck = nn.Conv1d(in_dim, bottleneck, 1, bias=False)
        self.fusion = build_fusion(fusion, audio_dim=bottleneck, visual_dim=visual_dim)
        self.fusion_proj = fusion_projection(self.fusion, bottleneck)

    def _init_mask_head(self) -> None:
        self.mask_prelu = nn.PReLU()
        self.mask_conv = nn.Conv1d(self.bottleneck_dim, self.in_dim, 1, bias=False)

    def num_chunks(self, length: int) -> int:
        """S, the number of chunks :meth:`_chunk` makes of L frames."""
        return num_chunks(length, self.chunk_size, self.padding)

    def _chunk(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, L, D]`` -> chunks ``[M, S, K, D]`` with ``self.padding`` (:func:`to_chunks`)."""
        return to_chunks(x, self.chunk_size, self.padding)

    def _overlap_add(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """chunks ``[M, S, K, D]`` -> ``[M, L, D]`` (inverse of :meth:`_chunk` up to the sum)."""
        return overlap_add(chunks, length, self.hop)

    def _fused_chunks(self, feats: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> fused chunks ``[B, S, K, B]``."""
        x = self.fusion_proj(self.fusion(self.bottleneck(self.norm(feats)), visual))
        return self._chunk(x.transpose(1, 2))

    def _mask(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """chunks ``[M, S, K, B]`` -> mask ``[M, N, L]``."""
        x = self._overlap_add(chunks, length)
        return mask_activation(self.mask_act)(self.mask_conv(self.mask_prelu(x).transpose(1, 2)))
