"""Audio-visual fusion blocks: audio ``[B, C, L]`` + visual ``[B, Dv, Tv]`` -> ``[B, C', L]``.

Every block owns the alignment of the 25 fps visual stream to the L audio frames:
``concat`` and ``film`` repeat each video frame over the audio frames it spans
(:func:`~avse.models.base.align_visual`), ``cross_attention`` lets each audio frame
attend to the video frames. Linear maps of the visual stream are applied at the video
rate, before the alignment (they commute with it), which saves ``L / Tv`` (about 30 with
a 20-sample hop) times their cost.

Example
-------
>>> import torch
>>> f = ConcatFusion(audio_dim=8, visual_dim=4)
>>> f(torch.randn(2, 8, 50), torch.randn(2, 4, 3)).shape
torch.Size([2, 8, 50])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import Fusion, align_visual
from avse.models.registry import register


@register("fusion", "concat")
class ConcatFusion(Fusion):
    """Concatenate the aligned visual features to the audio ones, then a 1x1 conv.

    ``out = W [audio; align(visual)] + b``, computed as ``W_a audio + align(W_v visual)``
    (the same map; the visual half runs at the video rate and nothing is concatenated).

    Arguments
    ---------
    audio_dim, visual_dim : int
        C and Dv.
    out_dim : int, optional
        C'; default C (the reference AV-DPRNN projects ``B + N`` back to ``B``).
    bias : bool
        bias of the 1x1 conv (the reference has none).
    align : str
        ``"nearest"`` (default), ``"linear"`` or ``"hold"`` resampling of the visual stream.
    causal : bool
        use ``"hold"`` whatever ``align`` says (each audio frame sees the latest video frame).
    """

    def __init__(self, audio_dim: int, visual_dim: int, out_dim: int | None = None,
                 bias: bool = False, align: str = "nearest", causal: bool = False):
        super().__init__()
        self.out_dim = int(out_dim or audio_dim)
        self.align = "hold" if causal else align
        self.audio_proj = nn.Conv1d(audio_dim, self.out_dim, 1, bias=bias)
        self.visual_proj = nn.Conv1d(visual_dim, self.out_dim, 1, bias=False)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """audio ``[B, C, L]``, visual ``[B, Dv, Tv]`` -> ``[B, out_dim, L]``."""
        v = align_visual(self.visual_proj(visual), audio.shape[-1], self.align)
        return self.audio_proj(audio) + v


@register("fusion", "film")
class FiLMFusion(Fusion):
    """Feature-wise linear modulation of the audio by the visual stream.

    ``out = audio * (1 + gamma) + beta`` with ``gamma, beta = 1x1 convs(visual)`` aligned
    to the audio frames; starting at ``gamma = beta = 0`` (zero-initialised convs) the
    block is the identity.

    Arguments
    ---------
    audio_dim, visual_dim : int
        C and Dv; ``out_dim = C``.
    align : str
        ``"nearest"`` (default), ``"linear"`` or ``"hold"``.
    causal : bool
        use ``"hold"`` whatever ``align`` says.
    """

    def __init__(self, audio_dim: int, visual_dim: int, align: str = "nearest",
                 causal: bool = False):
        super().__init__()
        self.out_dim = int(audio_dim)
        self.align = "hold" if causal else align
        self.gamma = nn.Conv1d(visual_dim, audio_dim, 1)
        self.beta = nn.Conv1d(visual_dim, audio_dim, 1)
        for conv in (self.gamma, self.beta):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """audio ``[B, C, L]``, visual ``[B, Dv, Tv]`` -> ``[B, C, L]``."""
        length = audio.shape[-1]
        gamma = align_visual(self.gamma(visual), length, self.align)
        beta = align_visual(self.beta(visual), length, self.align)
        return torch.addcmul(audio + beta, audio, gamma)


@register("fusion", "cross_attention")
class CrossAttentionFusion(Fusion):
    """Audio frames (queries) attend to video frames (keys/values); residual + LayerNorm.

    ``out = LayerNorm(audio + W_o MHA(W_q audio, W_k visual, W_v visual))`` over channels.
    The visual stream stays at the video rate, so the alignment is learned by attention.
    With ``time_bias`` each head adds ``-slope_h * |t_audio - t_video|`` (in video
    frames, both streams assumed to span the same time) to its logits, a learnable
    per-head locality prior (ALiBi-like) that tells the content-only attention where in
    time each audio frame is; slopes start geometrically spaced from 1 to 1/16.

    Arguments
    ---------
    audio_dim, visual_dim : int
        C and Dv; ``out_dim = C``.
    num_heads : int
        attention heads.
    attn_dim : int, optional
        inner width (a multiple of ``num_heads``); default C rounded up to one.
    dropout : float
        attention dropout (training only).
    time_bias : bool
        add the learnable temporal-distance bias.
    causal : bool
        audio frame j attends only to the video frames started at or before it:
        ``v <= floor(j Tv / L)`` (the ``hold`` rule of
        :func:`~avse.models.base.align_visual`; ``v <= j`` when the visual stream is already
        held per audio frame, ``Tv == L``). Frame 0 always sees video frame 0.
    """

    def __init__(self, audio_dim: int, visual_dim: int, num_heads: int = 4,
                 attn_dim: int | None = None, dropout: float = 0.0, time_bias: bool = True,
                 causal: bool = False):
        super().__init__()
        self.out_dim = int(audio_dim)
        self.causal = bool(causal)
        self.num_heads = int(num_heads)
        attn_dim = int(attn_dim or audio_dim)
        attn_dim = -(-attn_dim // self.num_heads) * self.num_heads
        self.attn_dim = attn_dim
        self.dropout = float(dropout)
        self.q = nn.Linear(audio_dim, attn_dim)
        self.kv = nn.Linear(visual_dim, 2 * attn_dim)
        self.out = nn.Linear(attn_dim, audio_dim)
        self.norm = nn.LayerNorm(audio_dim)
        if time_bias:
            slopes = torch.logspace(0, -4, self.num_heads, base=2.0)  # 1 ... 1/16
            # softplus^-1 so that softplus(raw) == slopes at init
            self.raw_slope = nn.Parameter(slopes + torch.log(-torch.expm1(-slopes)))
        else:
            self.register_parameter("raw_slope", None)

    def _bias(self, length: int, frames: int, ref: torch.Tensor) -> torch.Tensor:
        """Additive logits ``[H, L, Tv]``: ``-slope_h * |t_l - t_v|`` in video frames."""
        t_a = (torch.arange(length, device=ref.device, dtype=ref.dtype) + 0.5) * (frames / length)
        t_v = torch.arange(frames, device=ref.device, dtype=ref.dtype) + 0.5
        dist = (t_a[:, None] - t_v[None, :]).abs()  # [L, Tv]
        slope = F.softplus(self.raw_slope).to(ref.dtype)
        return -slope[:, None, None] * dist

    @staticmethod
    def causal_mask(length: int, frames: int, ref: torch.Tensor) -> torch.Tensor:
        """Additive logits ``[L, Tv]``: 0 where ``v <= floor(l Tv / L)``, ``-inf`` elsewhere.

        >>> CrossAttentionFusion.causal_mask(3, 2, torch.zeros(()))
        tensor([[0., -inf],
                [0., -inf],
                [0., 0.]])
        """
        last = torch.div(torch.arange(length, device=ref.device) * frames, length,
                         rounding_mode="floor")  # the latest video frame of each audio frame
        seen = torch.arange(frames, device=ref.device)[None, :] <= last[:, None]
        return torch.zeros(seen.shape, device=ref.device, dtype=ref.dtype).masked_fill(
            ~seen, float("-inf"))

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """audio ``[B, C, L]``, visual ``[B, Dv, Tv]`` -> ``[B, C, L]``."""
        bsz, _, length = audio.shape
        frames = visual.shape[-1]
        h, dh = self.num_heads, self.attn_dim // self.num_heads
        a = audio.transpose(1, 2)  # [B, L, C]
        q = self.q(a).view(bsz, length, h, dh).transpose(1, 2)  # [B, H, L, dh]
        k, v = self.kv(visual.transpose(1, 2)).view(bsz, frames, 2, h, dh).permute(2, 0, 3, 1, 4)
        mask = None if self.raw_slope is None else self._bias(length, frames, q)
        if self.causal:
            causal = self.causal_mask(length, frames, q)
            mask = causal if mask is None else mask + causal
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = self.out(y.transpose(1, 2).reshape(bsz, length, self.attn_dim))  # [B, L, C]
        return self.norm(a + y).transpose(1, 2)
