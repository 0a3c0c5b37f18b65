"""AV-Sepformer: dual-path transformer extractor with visual cross-attention between chunks.

After the AV-Sepformer baseline of the SEANet repository (Tao et al.; its ``model/avsep.py``,
the configuration its trainer builds). The encoder features are normalised (gLN) and
projected ``N -> D``, cut into 50 % overlapping chunks of K frames (K/2 frames = 40 ms = one
video frame with the reference's 8-sample hop; chunk s is paired with video frame s), and run
through R dual-path blocks::

    x  = x + PE2D                                     (sinusoids of the chunk position k
    v' = v + PE2D[k = K/2]                             in the first half of the channels,
                                                       of the chunk index s in the second)
    intra = x + gLN(Transformer_intra(x + PE1D))      along the K frames of each chunk
    inter = intra + gLN(Transformer_inter(intra, v')) along the S chunks, per frame position

All transformer layers are pre-norm (``norm_first``), ``D`` wide with ``H`` heads and a
ReLU feed-forward of width F. The intra stack adds the usual 1-D sinusoidal encoding (with
dropout) to its input. The first layer of the inter stack is the cross-attention layer:
the (visual) chunk sequence is the query, the audio chunk sequence keys and values, both
through the same LayerNorm, and the residual carries both streams::

    y = y + v' + MHA(q=LN1(v'), k=v=LN1(y));   y = y + FFN(LN2(y))

The visual stream (``[B, Dv, Tv]``, projected ``Dv -> D`` by a 1x1 conv with bias at the
video rate) is padded by repeating its last frame (or cropped) to the S chunks. The mask
head is PReLU, overlap-add, 1x1 conv ``D -> D``, a tanh/sigmoid gate, 1x1 conv ``D -> N``
and ReLU. It yields one mask (the reference has no deep supervision).

Layouts: chunks stay channels-last ``[B, S, K, D]`` (the intra stack reads
``[B*S, K, D]`` as a view); the inter stack works on ``[B*K, S, D]`` (one transposing copy
per block). The visual query is computed once per chunk sequence ``[B, S, D]``, not for
each of the K frame positions. The mask head's first 1x1 conv runs after the overlap-add
(every frame lies in exactly two chunks, so ``OA(W x + b) = W OA(x) + 2 b``), which halves
its cost.

``causal=True`` (not in the reference) makes mask frame l depend on no later frame: causal
attention within each chunk and across chunks (a frame's chunk positions only see earlier
positions, the same position of earlier chunks), per-frame LayerNorms for the gLNs, and one
visual query per frame (the visual stream held per audio frame and chunked as the audio)
instead of one per chunk, since a chunk's video frame starts after its first frames.

:func:`avse.models.reference.avsep.convert_reference_state_dict` maps a checkpoint of the
reference trainer (``model.*`` keys) onto an :class:`~avse.models.AVSEModel` built from
:func:`avse.models.reference.avsep.reference_config`. With converted weights the model
reproduces the reference (measured against the reference code
on 4 s inputs ``[2, 64000]`` + ``[2, 100, 512]``, eval mode: max deviation 7.8e-7 of the
output's peak in float32, 1.5e-15 in float64; train mode with dropout 0, BatchNorm batch
statistics included, agrees as well, gradients to 3e-12 relative in float64 on 1.5 s).

Example
-------
>>> import torch
>>> sep = AVSepformerSeparator(in_dim=16, visual_dim=8, d_model=16, num_heads=2, d_ffn=32,
...                            intra_layers=1, inter_layers=2, num_blocks=1, chunk_size=10)
>>> sep(torch.rand(2, 16, 37), torch.randn(2, 8, 3)).masks[-1].shape
torch.Size([2, 16, 37])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import (Separator, SeparatorOutput, align_visual, build_fusion,
                              fusion_projection, mask_activation)
from avse.models.registry import register
from avse.models.separators.dual_path import (GlobalNormLast, check_chunk_size, overlap_add,
                                              to_chunks)

__all__ = ["AVSepformerSeparator", "TransformerLayer", "CrossTransformerLayer",
           "DualPathTransformerBlock"]

_ACTS = {"relu": F.relu, "gelu": F.gelu}


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[M, T, D]`` -> ``[M, H, T, D/H]`` (a view)."""
    m, t, d = x.shape
    return x.view(m, t, heads, d // heads).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention on batch-first ``[M, T, D]`` (``nn.MultiheadAttention``'s math).

    ``qkv`` packs the query, key and value projections (``in_proj`` of
    ``nn.MultiheadAttention``, same row order); ``dropout`` is the attention dropout;
    ``causal``: position t attends to positions <= t only.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, causal: bool = False):
        super().__init__()
        self.num_heads, self.dropout, self.causal = int(num_heads), float(dropout), bool(causal)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, T, D]`` -> ``[M, T, D]``."""
        m, t, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(m, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # [M, H, T, dh]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(m, t, d))


class TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer on ``[M, T, D]``.

    ``x = x + drop(SA(LN1(x)));  x = x + drop(W2 drop(act(W1 LN2(x))))`` -- what
    ``nn.TransformerEncoderLayer(norm_first=True)`` computes, batch first, with
    :func:`torch.nn.functional.scaled_dot_product_attention`. ``causal``: causal attention
    (position t sees positions <= t; the rest of the layer is per position).
    """

    attention = SelfAttention  # the class of ``attn``

    def __init__(self, dim: int, num_heads: int, d_ffn: int, dropout: float = 0.0,
                 activation: str = "relu", causal: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = self.attention(dim, num_heads, dropout, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, d_ffn)
        self.ff2 = nn.Linear(d_ffn, dim)
        self.act = _ACTS[activation]
        self.drop = _dropout(dropout)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch ``drop(W2 drop(act(W1 LN2(x))))``."""
        return self.drop(self.ff2(self.drop(self.act(self.ff1(self.norm2(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[M, T, D]`` -> ``[M, T, D]``."""
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.feed_forward(x)


class CrossAttention(nn.Module):
    """Attention of a query sequence shared by G groups to G key/value sequences.

    query ``[B, S, D]``, memory ``[B, G, S', D]`` -> ``[B, G, S, D]``: group g of batch b
    attends with ``query[b]`` to ``memory[b, g]``. The query projection runs once per batch
    item. ``q`` and ``kv`` are the row blocks ``[0:D]`` and ``[D:3D]`` of
    ``nn.MultiheadAttention``'s ``in_proj``. A query ``[B, G, S, D]`` gives each group its
    own; ``causal`` (``S == S'``): query s attends to memory positions <= s only.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, causal: bool = False):
        super().__init__()
        self.num_heads, self.dropout, self.causal = int(num_heads), float(dropout), bool(causal)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """query ``[B, S, D]`` or ``[B, G, S, D]``, memory ``[B, G, S', D]`` -> ``[B, G, S, D]``."""
        b, g, sm, d = memory.shape
        s, h = query.shape[-2], self.num_heads
        if query.dim() == 4:  # one query sequence per group
            q = _heads(self.q(query).reshape(b * g, s, d), h)
        else:
            q = _heads(self.q(query), h)  # [B, H, S, dh]
            # the fused kernels want one batch axis, hence one copy of the (G-fold shared) query
            q = q.unsqueeze(1).expand(b, g, h, s, d // h).reshape(b * g, h, s, d // h)
        k, v = self.kv(memory).view(b * g, sm, 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, g, s, d))


class CrossTransformerLayer(TransformerLayer):
    """Pre-norm cross-attention layer: ``y [B, G, S, D]`` (audio), ``v [B, S, D]`` (visual).

    ``y = y + v + drop(MHA(q=LN1(v), k=v=LN1(y)));  y = y + FFN(LN2(y))``: the reference's
    ``cross_attention_layer``, whose one LayerNorm serves both streams and whose residual
    adds the visual stream as well. ``v`` may also be ``[B, G, S, D]`` (one per group).
    """

    attention = CrossAttention

    def forward(self, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """y ``[B, G, S, D]``, v ``[B, S, D]`` or ``[B, G, S, D]`` -> ``[B, G, S, D]``."""
        a = self.drop(self.attn(self.norm1(v), self.norm1(y)))
        y = y + (v if v.dim() == 4 else v.unsqueeze(1)) + a
        return y + self.feed_forward(y)


def _frame_norm(dim: int) -> nn.LayerNorm:
    """The causal model's norm: LayerNorm over the channels of each frame (gLN's eps)."""
    return nn.LayerNorm(dim, eps=1e-8)


def _sinusoids(max_len: int, dim: int) -> torch.Tensor:
    """``[max_len, dim]`` table: ``sin(p w_i)`` at channel 2i, ``cos(p w_i)`` at 2i+1."""
    pe = torch.zeros(max_len, dim)
    position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe


def _interleaved(pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``[T]`` positions -> ``[T, 2F]`` with ``sin, cos`` of ``pos * inv_freq`` interleaved."""
    arg = pos[:, None] * inv_freq[None, :]
    return torch.stack((arg.sin(), arg.cos()), dim=-1).flatten(-2)


class DualPathTransformerBlock(nn.Module):
    """One AV-Sepformer block on chunks ``x [B, S, K, D]`` with visual chunks ``v [B, S, D]``.

    Arguments
    ---------
    dim, num_heads, d_ffn : int
        D, H and F of every transformer layer.
    intra_layers : int
        transformer layers along the K frames of a chunk.
    inter_layers : int
        layers along the S chunks: one cross-attention layer, then ``inter_layers - 1``
        self-attention layers.
    dropout : float
        dropout of every attention map and residual branch (reference 0).
    pos_dropout : float
        dropout after adding the 1-D encoding to the intra input (reference 0.1).
    activation : str
        ``"relu"`` (reference) or ``"gelu"``.
    max_len : int
        rows of the 1-D encoding table (reference 5000; K rows are used).
    causal : bool
        causal attention along the chunk (position k sees positions <= k) and across
        chunks (chunk s sees chunks <= s at each position), per-frame LayerNorms instead of
        the two gLNs, and a visual stream given per frame (``v [B, S, K, D]``, chunked as
        ``x``): each output frame then depends on no later frame.

    ``inv_freq`` (the 2-D encoding's frequencies) and ``intra_pe`` (the 1-D table) are
    frozen parameters, as in the reference (whose checkpoints and parameter count hold them).
    """

    def __init__(self, dim: int, num_heads: int, d_ffn: int, intra_layers: int,
                 inter_layers: int, dropout: float = 0.0, pos_dropout: float = 0.1,
                 activation: str = "relu", max_len: int = 5000, causal: bool = False):
        super().__init__()
        self.causal = bool(causal)
        layer = dict(dropout=dropout, activation=activation, causal=self.causal)
        half = int(math.ceil(dim / 4) * 2)  # channels of each of the two 2-D halves
        inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
        self.inv_freq = nn.Parameter(inv_freq, requires_grad=False)
        self.intra_pe = nn.Parameter(_sinusoids(max_len, dim), requires_grad=False)
        self.intra_dropout = _dropout(pos_dropout)
        self.intra = nn.ModuleList(TransformerLayer(dim, num_heads, d_ffn, **layer)
                                   for _ in range(intra_layers))
        self.intra_norm = _frame_norm(dim) if self.causal else GlobalNormLast(dim)
        self.cross = CrossTransformerLayer(dim, num_heads, d_ffn, **layer)
        self.inter = nn.ModuleList(TransformerLayer(dim, num_heads, d_ffn, **layer)
                                   for _ in range(inter_layers - 1))
        self.inter_norm = _frame_norm(dim) if self.causal else GlobalNormLast(dim)

    def _pos2d(self, k: int, s: int, x: torch.Tensor):
        """Encodings of the chunk position ``[K, h1]`` and of the chunk index ``[S, h2]``.

        Together they are the reference's 2-D encoding: channel c < h1 holds the one of the
        frame position k within the chunk, channel ``h1 + c`` the one of the chunk index s.
        """
        inv = self.inv_freq
        dim = x.shape[-1]
        h1 = min(2 * inv.numel(), dim)
        h2 = min(2 * inv.numel(), dim - h1)
        ek = _interleaved(torch.arange(k, device=inv.device, dtype=inv.dtype), inv)[:, :h1]
        es = _interleaved(torch.arange(s, device=inv.device, dtype=inv.dtype), inv)[:, :h2]
        return ek.to(x.dtype), es.to(x.dtype)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x ``[B, S, K, D]`` (contiguous), v ``[B, S, D]`` (``[B, S, K, D]`` when causal)
        -> ``[B, S, K, D]`` (contiguous)."""
        b, s, k, d = x.shape
        ek, es = self._pos2d(k, s, x)
        h1 = ek.shape[-1]
        x = torch.cat((x[..., :h1] + ek, x[..., h1:] + es[:, None]), dim=-1)
        if v.dim() == 4:  # per frame, encoded as x; the cross layer reads [B, K, S, D]
            v = torch.cat((v[..., :h1] + ek, v[..., h1:] + es[:, None]), dim=-1).transpose(1, 2)
        else:
            v = torch.cat((v[..., :h1] + ek[k // 2], v[..., h1:] + es), dim=-1)

        y = self.intra_dropout(x.view(b * s, k, d) + self.intra_pe[:k])
        for layer in self.intra:
            y = layer(y)
        intra = self.intra_norm(y.view(b, s, k, d)) + x

        y = self.cross(intra.transpose(1, 2).contiguous(), v).view(b * k, s, d)  # [B*K, S, D]
        for layer in self.inter:
            y = layer(y)
        y = self.inter_norm(y.view(b, k, s, d))
        return torch.add(intra, y.transpose(1, 2)).contiguous()


def _causal_fusion(spec):
    """A fusion spec with ``causal: true`` (a built fusion must be causal already)."""
    if isinstance(spec, nn.Module):
        if not getattr(spec, "causal", False) and getattr(spec, "align", None) != "hold":
            raise ValueError(f"causal=True: the fusion {type(spec).__name__} is not causal")
        return spec
    return {**(spec if isinstance(spec, dict) else {"type": spec}), "causal": True}


@register("separator", "avsep")
class AVSepformerSeparator(Separator):
    """AV-Sepformer separator: feats ``[B, N, L]`` + visual ``[B, Dv, Tv]`` -> mask ``[B, N, L]``.

    Defaults are the reference configuration (the SEANet repository's ``avsep()``, with the
    conv encoder N=256, L=16 and the 512-d embedding V-TCN of
    :func:`avse.models.reference.avsep.reference_config`).

    Arguments
    ---------
    in_dim : int
        N, encoder channels (reference 256).
    visual_dim : int
        Dv, visual encoder channels (reference 512; projected to D inside).
    fusion : spec or None
        None (reference): the visual stream enters only through the inter-chunk
        cross-attention. A fusion spec adds a fusion block on the bottleneck features
        (``audio_dim=D``) before chunking, followed by a 1x1 map to D if its
        ``out_dim != D``. NB: :class:`~avse.models.AVSEModel` passes ``"concat"`` unless
        told ``fusion=None``.
    d_model : int
        D (reference 256; even, a multiple of ``num_heads``).
    num_heads : int
        H (reference 8).
    d_ffn : int
        F, feed-forward width (reference 1024).
    intra_layers : int
        transformer layers within chunks per block (reference 5).
    inter_layers : int
        layers across chunks per block, the first being the cross-attention one (reference 6).
    num_blocks : int
        R, dual-path blocks (reference 2).
    chunk_size : int
        K, frames per chunk (reference 160; even, 50 % overlap).
    dropout : float
        transformer dropout (reference 0).
    pos_dropout : float
        dropout on the intra input after its 1-D encoding (reference 0.1).
    activation : str
        ``"relu"`` (reference) or ``"gelu"``.
    max_len : int
        rows of each block's frozen 1-D encoding table (reference 5000).
    visual_align : str
        ``"pad"`` (reference): one video frame per chunk, the last frame repeated (or the
        stream cropped) to S; or ``"nearest"`` / ``"linear"`` resampling to S
        (:func:`~avse.models.base.align_visual`) for encoders whose chunk hop is not a
        video frame.
    mask_act : str
        ``"relu"`` (reference), ``"sigmoid"`` or ``"none"``.
    causal : bool
        mask frame l depends on no frame after l (and on the visual columns <= l): causal
        attention within and across chunks (:class:`DualPathTransformerBlock`), per-frame
        LayerNorms in place of the input gLN and the blocks' gLNs, a causal fusion (the spec
        gets ``causal: true``), and the visual stream held per audio frame
        (:func:`~avse.models.base.align_visual` ``"hold"``, the identity when ``Tv == L`` as
        :class:`~avse.models.AVSEModel` gives it), projected per frame and chunked as the
        audio, so each frame's cross-attention query is its own video frame (``visual_align``
        is not used).

    The 2-D encoding splits D channels in two halves of ``2 ceil(D/4)`` (the reference
    fixes the split for D=256 whatever D is; the two agree at D=256).
    """

    def __init__(self, in_dim: int, visual_dim: int, fusion=None, d_model: int = 256,
                 num_heads: int = 8, d_ffn: int = 1024, intra_layers: int = 5,
                 inter_layers: int = 6, num_blocks: int = 2, chunk_size: int = 160,
                 dropout: float = 0.0, pos_dropout: float = 0.1, activation: str = "relu",
                 max_len: int = 5000, visual_align: str = "pad", mask_act: str = "relu",
                 causal: bool = False):
        super().__init__()
        if d_model % 2 or d_model % num_heads:
            raise ValueError(f"d_model must be even and a multiple of num_heads, got "
                             f"{d_model} with {num_heads} heads")
        if inter_layers < 1 or intra_layers < 0 or num_blocks < 1:
            raise ValueError("need inter_layers >= 1 (the cross-attention layer), "
                             "intra_layers >= 0 and num_blocks >= 1")
        if max_len < chunk_size:
            raise ValueError(f"max_len ({max_len}) must be >= chunk_size ({chunk_size})")
        if activation not in _ACTS:
            raise ValueError(f"activation must be one of {sorted(_ACTS)}, got {activation!r}")
        mask_activation(mask_act)
        if visual_align not in ("pad", "nearest", "linear"):
            raise ValueError(f"visual_align must be 'pad', 'nearest' or 'linear', "
                             f"got {visual_align!r}")
        self.in_dim, self.d_model = int(in_dim), int(d_model)
        self.chunk_size = check_chunk_size(chunk_size)
        self.hop = self.chunk_size // 2
        self.visual_align, self.mask_act, self.causal = visual_align, mask_act, bool(causal)
        self.norm = _frame_norm(in_dim) if self.causal else nn.GroupNorm(1, in_dim, eps=1e-8)
        self.bottleneck = nn.Linear(in_dim, d_model, bias=False)
        if fusion is None or fusion == "none":
            self.fusion, self.fusion_proj = None, None
        else:
            if self.causal:
                fusion = _causal_fusion(fusion)
            self.fusion = build_fusion(fusion, audio_dim=d_model, visual_dim=visual_dim)
            self.fusion_proj = fusion_projection(self.fusion, d_model, layout="linear")
        self.visual_proj = nn.Linear(visual_dim, d_model)
        self.blocks = nn.ModuleList(
            DualPathTransformerBlock(d_model, num_heads, d_ffn, intra_layers, inter_layers,
                                     dropout, pos_dropout, activation, max_len, self.causal)
            for _ in range(num_blocks))
        self.mask_prelu = nn.PReLU()
        self.mask_conv = nn.Linear(d_model, d_model)
        self.output = nn.Linear(d_model, d_model)
        self.output_gate = nn.Linear(d_model, d_model)
        self.end_conv = nn.Linear(d_model, in_dim, bias=False)

    def _chunk(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, D]`` -> chunks ``[B, S, K, D]``, chunk s = frames ``[(s-1) K/2, (s+1) K/2)``.

        As the reference: the end is zero-padded to the first odd multiple of K/2 above L
        (1 to K frames), then chunked as in AV-DPRNN (K/2 zeros before, K/2 after), so
        ``S = (L + pad) / (K/2) + 1``
        (:func:`~avse.models.separators.dual_path.to_chunks`, reference padding).
        """
        return to_chunks(x, self.chunk_size)

    def _dp_overlap_add(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """chunks ``[B, S, K, D]`` -> ``[B, L, D]``: each frame summed over its two chunks."""
        return overlap_add(chunks, length, self.hop)

    def _visual_chunks(self, visual: torch.Tensor, chunks: int,
                       length: int | None = None) -> torch.Tensor:
        """visual ``[B, Dv, Tv]`` -> ``[B, S, D]``, one vector per chunk (causal: ``[B, S, K, D]``,
        one per frame of the ``length`` audio frames)."""
        v = self.visual_proj(visual.transpose(1, 2))  # [B, Tv, D], at the video rate
        if self.causal:  # held per audio frame, chunked as the audio: [B, S, K, D]
            v = align_visual(v.transpose(1, 2), length, "hold").transpose(1, 2)
            return self._chunk(v.contiguous())
        frames = v.shape[1]
        if self.visual_align != "pad":
            return align_visual(v.transpose(1, 2), chunks, self.visual_align).transpose(1, 2)
        # the first ``chunks`` frames, the last one repeated when there are fewer (one gather:
        # no branch on the lengths, so the length axes stay dynamic under torch.export)
        index = torch.arange(chunks, device=v.device).clamp(max=frames - 1)
        return v.index_select(1, index)

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput (one mask ``[B, N, L]``).

        ``return_intermediate`` changes nothing: the model has one output.
        """
        length = feats.shape[-1]
        if self.causal:
            x = self.bottleneck(self.norm(feats.transpose(1, 2)))  # [B, L, D]
        else:
            x = self.bottleneck(self.norm(feats).transpose(1, 2))  # [B, L, D]
        if self.fusion is not None:
            x = self.fusion_proj(self.fusion(x.transpose(1, 2), visual).transpose(1, 2))
        chunks = self._chunk(x)  # [B, S, K, D]
        v = self._visual_chunks(visual, chunks.shape[1], length)
        for block in self.blocks:
            chunks = block(chunks, v)
        x = self._dp_overlap_add(self.mask_prelu(chunks), length)  # [B, L, D]
        x = F.linear(x, self.mask_conv.weight, 2 * self.mask_conv.bias)  # both chunks' bias
        x = torch.tanh(self.output(x)) * torch.sigmoid(self.output_gate(x))
        mask = torch.matmul(self.end_conv.weight, x.transpose(1, 2))  # [B, N, L]
        return SeparatorOutput([mask_activation(self.mask_act)(mask)])
