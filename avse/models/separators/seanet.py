"""SEANet: dual-branch dual-path extractor with reverse selective auditory attention.

After Tao et al., "Audio-visual target speaker extraction with reverse selective auditory
attention" (SEANet). The front is AV-DPRNN's (:mod:`~avse.models.separators.dprnn`): global
layer norm, 1x1 bottleneck ``N -> B``, fusion with the visual stream (the reference
concatenates the *linearly* upsampled visual features and projects ``B + Dv -> B``: the
``concat`` fusion with ``align: linear``), 50 % overlapping chunks of K frames. Then two
branches, one estimating the target speech and one the rest of the mixture ("noise"), each
a stack of R dual-path BLSTM blocks
(:class:`~avse.models.separators.dual_path.DualPathBlock`).
Before every block but the first, a :class:`CrossBlock` lets the two branches exchange
information; after every block both branches are turned into masks by one mask head (PReLU,
1x1 conv ``B -> N``, ReLU) shared by the branches and the repeats.

Reverse selective auditory attention (:class:`ReverseAttention`), for each branch ``a``
with the other branch ``b``: queries, keys and values are ReLU'd linear maps of the
batch-normalised features (``A = 4B`` wide, 4 heads), and::

    y_a = ( softmax(q_self_a k_a^T / sqrt(d)) + softmax(-q_b k_a^T / sqrt(d)) ) / 2  v_a
    out_a = ReLU(W_o y_a)

that is, branch ``a`` averages its self-attention with an attention that *negates* the
scores the other branch's query gives to ``a``'s keys (attend where the other branch does
not). A :class:`CrossBlock` applies it within chunks (over the K frames) then across chunks
(over the S chunks), each followed by gLN and a residual connection.

Internally chunks are channels-last, ``[M, S, K, B]``, as in AV-DPRNN. The chunking is the
reference's (:func:`~avse.models.separators.dual_path.to_chunks`): ``K/2`` zero frames
before the L frames and ``gap + K/2`` after, with ``gap = K - (K/2 + L mod K) mod K``
(1..K), so ``S = (L + gap + K/2) / (K/2)`` chunks (66 for 4 s with a 20-sample hop).

The reference (``TaoRuijie/SEANet``, ``model/seanet.py``) builds R cross blocks but uses
only the last R - 1: the first (333,056 parameters at the published size) is dead weight
and is not built here. Its published 8.70 M parameters are therefore 8.37 M here;
:func:`avse.models.reference.seanet.convert_reference_state_dict` drops that block's
weights.

Example
-------
>>> import torch
>>> sep = SEANetSeparator(in_dim=16, visual_dim=8, bottleneck=8, hidden=8, chunk_size=10,
...                       num_layers=2, num_heads=2)
>>> out = sep(torch.rand(2, 16, 37), torch.randn(2, 8, 3), return_intermediate=True)
>>> [m.shape for m in out.masks], len(out.aux_masks["noise"])
([torch.Size([2, 16, 37]), torch.Size([2, 16, 37])], 2)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import SeparatorOutput
from avse.models.registry import register
from avse.models.separators.dual_path import DualPathBlock, DualPathMasker, GlobalNormLast

__all__ = ["SEANetSeparator", "CrossBlock", "ReverseAttention"]


class ReverseAttention(nn.Module):
    """Reverse selective auditory attention between two branches, on ``[M, T, D]`` each.

    Per branch (``_s`` speech, ``_n`` noise): ``BatchNorm1d(D)`` over the channels, a fused
    projection ``D -> 4A`` (ReLU) giving ``[q_self, q_other, k, v]``, and an output
    projection ``A -> D`` (ReLU). Branch s attends over its own keys/values with the mean of
    two softmaxes: its own ``q_self`` and the negated ``q_other`` of branch n; and vice
    versa. Scores are scaled by ``1 / sqrt(A / num_heads)``.

    Arguments
    ---------
    dim : int
        D, the feature size (bottleneck B).
    num_heads : int
        attention heads (reference 4).
    attn_dim : int, optional
        A, the attention width (a multiple of ``num_heads``); default ``4 * dim`` (reference).
    """

    def __init__(self, dim: int, num_heads: int = 4, attn_dim: int | None = None):
        super().__init__()
        attn_dim = int(attn_dim or 4 * dim)
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim ({attn_dim}) must be a multiple of num_heads "
                             f"({num_heads})")
        self.num_heads, self.attn_dim = int(num_heads), attn_dim
        self.norm_s, self.norm_n = nn.BatchNorm1d(dim), nn.BatchNorm1d(dim)
        self.proj_s, self.proj_n = nn.Linear(dim, 4 * attn_dim), nn.Linear(dim, 4 * attn_dim)
        self.out_s, self.out_n = nn.Linear(attn_dim, dim), nn.Linear(attn_dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, T, A]`` -> ``[M, heads, T, A / heads]``."""
        m, t, _ = x.shape
        return x.view(m, t, self.num_heads, -1).transpose(1, 2)

    @staticmethod
    def _attend(q_self, q_other, k, v, scale):
        """``softmax(q_self k^T s) v + softmax(-q_other k^T s) v`` on ``[M, heads, T, d]``.

        fp32 (and GPUs): two SDPA calls, the negation on ``q_other`` (the same arithmetic as a
        negative ``scale``, which ONNX's attention turns into ``sqrt(scale)`` = NaN). Reduced precision
        on CPU (bf16 autocast): explicit matmuls, one ``@ v`` for both, because CPU SDPA in
        bf16 is several times slower than the matmuls (measured: 646 ms vs 98 ms forward +
        backward for 132 x 4 heads x 100 x 64).
        """
        if q_self.device.type == "cpu" and q_self.dtype in (torch.bfloat16, torch.float16):
            kt = k.transpose(-1, -2)
            attn = torch.softmax((q_self @ kt) * scale, dim=-1) + torch.softmax(
                (q_other @ kt) * -scale, dim=-1)
            return attn @ v
        return (F.scaled_dot_product_attention(q_self, k, v, scale=scale)
                + F.scaled_dot_product_attention(-q_other, k, v, scale=scale))

    def forward(self, s: torch.Tensor, n: torch.Tensor):
        """s, n ``[M, T, D]`` -> (speech, noise) updates ``[M, T, D]`` each."""
        m, t, d = s.shape
        feats = []
        for x, norm, proj in ((s, self.norm_s, self.proj_s), (n, self.norm_n, self.proj_n)):
            x = norm(x.reshape(m * t, d)).view(m, t, d)  # BatchNorm over the channels
            feats.append(F.relu(proj(x)).chunk(4, dim=-1))  # q_self, q_other, k, v
        (qs_self, qs_other, k_s, v_s), (qn_self, qn_other, k_n, v_n) = feats
        # four attention calls on strided views: no concatenated queries, no negated copy
        # (the negation is a negative scale), no slices whose backward fills zeros
        scale = (self.attn_dim // self.num_heads) ** -0.5
        h = self._heads
        ys = self._attend(h(qs_self), h(qn_other), h(k_s), h(v_s), scale)
        yn = self._attend(h(qn_self), h(qs_other), h(k_n), h(v_n), scale)
        ys, yn = (0.5 * y.transpose(1, 2).reshape(m, t, self.attn_dim) for y in (ys, yn))
        return F.relu(self.out_s(ys)), F.relu(self.out_n(yn))


class CrossBlock(nn.Module):
    """Exchange between the branches on chunks ``[M, S, K, D]``.

    ``x_a = x_a + gLN_a(attn_intra(x_s, x_n)_a)`` along the K frames of each chunk, then the
    same with ``attn_inter`` along the S chunks, for both branches a in {s, n}.
    (The reference calls the first ``inter_cross`` and the second ``intra_cross``; here the
    names follow :class:`~avse.models.separators.dual_path.DualPathBlock`: intra = within a
    chunk.)
    """

    def __init__(self, dim: int, num_heads: int = 4, attn_dim: int | None = None):
        super().__init__()
        self.intra_attn = ReverseAttention(dim, num_heads, attn_dim)
        self.inter_attn = ReverseAttention(dim, num_heads, attn_dim)
        self.intra_norm_s, self.intra_norm_n = GlobalNormLast(dim), GlobalNormLast(dim)
        self.inter_norm_s, self.inter_norm_n = GlobalNormLast(dim), GlobalNormLast(dim)

    def forward(self, s: torch.Tensor, n: torch.Tensor):
        """s, n ``[M, S, K, D]`` (contiguous) -> same shapes (contiguous)."""
        m, c, k, d = s.shape
        ys, yn = self.intra_attn(s.view(m * c, k, d), n.view(m * c, k, d))
        s = s + self.intra_norm_s(ys.view(m, c, k, d))
        n = n + self.intra_norm_n(yn.view(m, c, k, d))
        st = s.transpose(1, 2).reshape(m * k, c, d)  # [M*K, S, D]
        nt = n.transpose(1, 2).reshape(m * k, c, d)
        ys, yn = self.inter_attn(st, nt)
        s = st.view(m, k, c, d) + self.inter_norm_s(ys.view(m, k, c, d))
        n = nt.view(m, k, c, d) + self.inter_norm_n(yn.view(m, k, c, d))
        return s.transpose(1, 2).contiguous(), n.transpose(1, 2).contiguous()


@register("separator", "seanet")
class SEANetSeparator(DualPathMasker):
    """SEANet separator: feats ``[B, N, L]`` + visual ``[B, Dv, Tv]`` -> speech and noise masks.

    Arguments
    ---------
    in_dim : int
        N, encoder channels (reference 256).
    visual_dim : int
        Dv, visual encoder channels (reference 256).
    fusion : spec
        fusion at the bottleneck, built with ``audio_dim=B``; the reference is
        ``{type: concat, align: linear}``. A fusion whose ``out_dim != B`` is followed by a
        1x1 conv to B.
    bottleneck : int
        B (reference 64).
    hidden : int
        H, BLSTM hidden size per direction (reference 128).
    chunk_size : int
        K, frames per chunk (reference 100; even, chunks overlap by K/2).
    num_layers : int
        R, dual-path blocks per branch (reference 6); each gives a speech and a noise
        estimate.
    num_heads : int
        heads of the reverse attention (reference 4).
    attn_dim : int, optional
        width of the reverse attention; default ``4 * bottleneck`` (reference).
    mask_act : str
        ``"relu"`` (reference), ``"sigmoid"`` or ``"none"``.
    rnn_type, bidirectional :
        as in AV-DPRNN (reference: BLSTM).
    noise_output : bool
        when no intermediates are asked for, still compute the final noise mask (the noise
        branch's last block and the mask head; needed by a noise loss at validation).
        False skips them: an inference-only speed-up.

    ``forward(..., return_intermediate=True)`` returns R speech masks in ``masks`` and R
    noise masks in ``aux_masks["noise"]`` (the last ones final); otherwise only the final
    speech mask (and the final noise mask if ``noise_output``) is computed.
    """

    def __init__(self, in_dim: int, visual_dim: int, fusion="concat", bottleneck: int = 64,
                 hidden: int = 128, chunk_size: int = 100, num_layers: int = 6,
                 num_heads: int = 4, attn_dim: int | None = None, mask_act: str = "relu",
                 rnn_type: str = "LSTM", bidirectional: bool = True, noise_output: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self._init_front(in_dim, visual_dim, fusion, bottleneck, chunk_size, num_layers,
                         mask_act)
        self.noise_output = bool(noise_output)
        self.speech_blocks = nn.ModuleList(DualPathBlock(bottleneck, hidden, rnn_type,
                                                         bidirectional)
                                           for _ in range(num_layers))
        self.noise_blocks = nn.ModuleList(DualPathBlock(bottleneck, hidden, rnn_type,
                                                        bidirectional)
                                          for _ in range(num_layers))
        self.cross = nn.ModuleList(CrossBlock(bottleneck, num_heads, attn_dim)
                                   for _ in range(num_layers - 1))
        self._init_mask_head()

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput (masks ``[B, N, L]``,
        ``aux_masks["noise"]``)."""
        length = feats.shape[-1]
        x = self._fused_chunks(feats, visual)  # [B, S, K, B]
        last = self.num_layers - 1
        want_noise = return_intermediate or self.noise_output
        speech_masks, noise_masks = [], []
        s = n = x
        for i in range(self.num_layers):
            if i > 0:
                s, n = self.cross[i - 1](s, n)
            s = self.speech_blocks[i](s)
            if i < last or want_noise:  # the last noise block only feeds the noise mask
                n = self.noise_blocks[i](n)
            if return_intermediate or i == last:
                speech_masks.append(self._mask(s, length))
                if want_noise:
                    noise_masks.append(self._mask(n, length))
        return SeparatorOutput(speech_masks, {"noise": noise_masks} if noise_masks else {})
