"""AV-TFGridNet: TF-GridNet (Wang et al., 2023) on the complex STFT, with the visual stream
fused before every block; a *mapping* separator (it outputs the target's STFT).

Pipeline on the ``stft`` encoder's ``[B, 2F, L]`` (real parts, then imaginary parts)::

    x / rms(x)  ->  [B, 2, L, F]  ->  Conv2d(2, D, 3x3) + GroupNorm(1, D)
    R x ( fusion with the visual stream  ->  TF-GridNet block )
    ConvTranspose2d(D, 2, 3x3)  ->  [B, 2F, L]  ->  x rms(x)

Each TF-GridNet block (:class:`GridNetBlock`, the layout of ESPnet's ``TFGridNet``) is, on
``[B, D, L, F]``, with residual connections around each of the three modules:

* **intra-frame full-band module**: LayerNorm over D, unfold along frequency by kernel
  ``I`` and stride ``J`` (``D*I`` features per step), BLSTM over the frequency axis of every
  frame, ``ConvTranspose1d(2H, D, I, stride J)`` back to F bins;
* **sub-band temporal module**: the same along time, for every frequency bin;
* **full-band cross-frame self-attention**: per head, 1x1 convs to queries/keys of
  ``E = ceil(qk_dim / F)`` channels and values of ``D / heads`` channels (each with PReLU
  and LayerNorm over channels x frequency), every frame one token of ``E*F`` (``D*F/heads``
  for the values) features; ``scaled_dot_product_attention`` over the L frames; heads
  concatenated, 1x1 conv + PReLU + LayerNorm.

Both BLSTM modules pad L and F at the end so that ``(size - I) % J == 0`` and the block
trims back afterwards (as ESPnet). No dropout, no batch norm: train and eval outputs match.

Visual fusion. The fusion slot maps ``[B, C, L] x [B, Dv, Tv] -> [B, C', L]``. Here it is
applied to every frequency bin's ``[D, L]`` sequence with the same weights (the batch is
``B*F``; the visual stream is the same for every bin, so ``concat`` adds a per-frame
visual bias over D broadcast over F, ``film`` modulates every bin's D channels per frame,
``cross_attention`` lets every bin attend to the video frames). The fusion aligns the
25 fps stream to the L STFT frames itself. A fusion whose ``out_dim != D`` is followed by a
1x1 conv back to D. As in the ``tcn`` separator the fusion output replaces the features
(``film`` starts as the identity). With ``fuse_each_block=False`` only the input of the
first block is fused.

Input scaling: the features are divided by their RMS over ``[2F, L]`` (per utterance) and
the output multiplied back, as ESPnet's ``TFGridNet`` normalises the mixture by its standard
deviation, so the model is scale-equivariant.

The separator works on any even ``in_dim`` (with a ``conv`` encoder the 2F "bins" are just
two halves of the learned filterbank), but is meant for the ``stft`` encoder.

Example
-------
>>> import torch
>>> sep = TFGridNetSeparator(in_dim=2 * 17, visual_dim=8, emb_dim=8, hidden=8,
...                          num_blocks=2, num_heads=2, qk_dim=16)
>>> out = sep(torch.randn(2, 34, 21), torch.randn(2, 8, 3))
>>> out.masks[-1].shape
torch.Size([2, 34, 21])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import Separator, SeparatorOutput, build_fusion, fusion_projection
from avse.models.registry import register


class _LayerNormCF(nn.Module):
    """LayerNorm of ``[B, G, C, L, F]`` over (C, F) for each frame, per-group affine ``[C, F]``.

    ``G`` groups (heads) are normalised separately; ESPnet's ``LayerNormalization4DCF``
    with ``G = 1``.
    """

    def __init__(self, groups: int, channels: int, n_freq: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(groups, channels, 1, n_freq))
        self.bias = nn.Parameter(torch.zeros(groups, channels, 1, n_freq))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(2, 4), unbiased=False, keepdim=True)
        return torch.addcmul(self.bias, (x - mean) * torch.rsqrt(var + self.eps), self.weight)


class _UnfoldBLSTM(nn.Module):
    """Unfold by (kernel I, stride J), BLSTM, ConvTranspose1d back: ``[N, S, D] -> [N, D, S]``.

    ``S`` must satisfy ``(S - I) % J == 0`` (the block pads to that). The unfolded features
    of a step are ordered ``d * I + k`` (as ``F.unfold``).
    """

    def __init__(self, dim: int, hidden: int, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.rnn = nn.LSTM(dim * kernel, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.ConvTranspose1d(2 * hidden, dim, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[N, S, D]`` (already normalised) -> ``[N, D, S]`` (no residual)."""
        if self.kernel > 1 or self.stride > 1:
            n, steps, dim = x.shape
            x = x.unfold(1, self.kernel, self.stride)  # [N, S', D, I]
            x = x.reshape(n, x.shape[1], dim * self.kernel)
        y, _ = self.rnn(x)  # [N, S', 2H]
        return self.proj(y.transpose(1, 2))  # [N, D, S]


class GridNetBlock(nn.Module):
    """One TF-GridNet block on ``[B, D, L, F]`` -> ``[B, D, L, F]``.

    Arguments
    ---------
    dim : int
        D, the embedding channels.
    n_freq : int
        F (the attention's norms are over channels x frequency, so F is fixed).
    hidden : int
        H, BLSTM units per direction.
    kernel, stride : int
        I and J, the unfolding of both BLSTM modules (``I = J = 1``: a plain BLSTM per bin
        and per frame).
    num_heads : int
        attention heads (``D`` must be a multiple).
    qk_dim : int
        approximate query/key width per head; ``E = ceil(qk_dim / F)`` channels per bin.
    eps : float
        of the layer norms.
    """

    def __init__(self, dim: int, n_freq: int, hidden: int = 192, kernel: int = 4,
                 stride: int = 1, num_heads: int = 4, qk_dim: int = 512, eps: float = 1e-5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"emb_dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.kernel, self.stride = int(kernel), int(stride)
        self.n_freq, self.num_heads = int(n_freq), int(num_heads)
        self.intra_norm = nn.LayerNorm(dim, eps=eps)  # over D for every TF bin
        self.intra = _UnfoldBLSTM(dim, hidden, self.kernel, self.stride)
        self.inter_norm = nn.LayerNorm(dim, eps=eps)
        self.inter = _UnfoldBLSTM(dim, hidden, self.kernel, self.stride)
        h = self.num_heads
        self.qk_ch = math.ceil(qk_dim / self.n_freq)  # E
        self.v_ch = dim // h
        self.qkv = nn.Conv2d(dim, h * (2 * self.qk_ch + self.v_ch), 1)
        self.q_act, self.k_act, self.v_act = nn.PReLU(h), nn.PReLU(h), nn.PReLU(h)
        self.q_norm = _LayerNormCF(h, self.qk_ch, self.n_freq, eps)
        self.k_norm = _LayerNormCF(h, self.qk_ch, self.n_freq, eps)
        self.v_norm = _LayerNormCF(h, self.v_ch, self.n_freq, eps)
        self.attn_proj = nn.Conv2d(dim, dim, 1)
        self.attn_act = nn.PReLU()
        self.attn_norm = _LayerNormCF(1, dim, self.n_freq, eps)

    def _padded(self, size: int) -> int:
        """The smallest size >= ``size`` with ``(size - I) % J == 0`` (at least I)."""
        if size <= self.kernel:
            return self.kernel
        # ceil division with non-negative operands only: an exported graph's integer
        # division (ONNX Div) truncates, which differs from floor for negative ones
        steps = (size - self.kernel + self.stride - 1) // self.stride
        return steps * self.stride + self.kernel

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Full-band self-attention over frames: ``[B, D, L, F]`` -> ``[B, D, L, F]``."""
        bsz, dim, length, n_freq = x.shape
        h, e, c = self.num_heads, self.qk_ch, self.v_ch
        qkv = self.qkv(x).view(bsz, h, 2 * e + c, length, n_freq)
        q, k, v = qkv.split((e, e, c), dim=2)  # [B, h, ch, L, F]
        q = self.q_norm(self.q_act(q))
        k = self.k_norm(self.k_act(k))
        v = self.v_norm(self.v_act(v))

        def tokens(t):  # [B, h, ch, L, F] -> [B, h, L, ch*F]
            return t.transpose(2, 3).reshape(bsz, h, length, -1)

        y = F.scaled_dot_product_attention(tokens(q), tokens(k), tokens(v))  # [B, h, L, c*F]
        y = y.view(bsz, h, length, c, n_freq).permute(0, 1, 3, 2, 4)  # [B, h, c, L, F]
        y = y.reshape(bsz, dim, length, n_freq)  # heads concatenated over channels
        y = self.attn_norm(self.attn_act(self.attn_proj(y)).unsqueeze(1)).squeeze(1)
        return x + y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, D, L, F]`` -> ``[B, D, L, F]``."""
        bsz, dim, length, n_freq = x.shape
        plen, pfreq = self._padded(length), self._padded(n_freq)
        symbolic = not isinstance(length, int)  # under torch.export
        if symbolic:
            # the same zero padding as below, in a form whose sizes torch.export can follow
            # for every length (it cannot tell that plen - length >= 0): pad by the stride
            # (more than plen - length), then take the first plen frames
            x = F.pad(x, (0, pfreq - n_freq, 0, self.stride))
            x = x.index_select(2, torch.arange(plen, device=x.device))
        else:
            x = F.pad(x, (0, pfreq - n_freq, 0, plen - length))
        # intra-frame full-band: a sequence over frequency for every frame
        y = self.intra_norm(x.permute(0, 2, 3, 1)).reshape(bsz * plen, pfreq, dim)  # [B*L, F, D]
        x = x + self.intra(y).view(bsz, plen, dim, pfreq).transpose(1, 2)
        # sub-band temporal: a sequence over time for every frequency bin
        y = self.inter_norm(x.permute(0, 3, 2, 1)).reshape(bsz * pfreq, plen, dim)  # [B*F, L, D]
        y = self.inter(y).view(bsz, pfreq, dim, plen).permute(0, 2, 3, 1)
        x = x + y
        if symbolic:  # the first length frames (as the slice below)
            x = x.index_select(2, torch.arange(length, device=x.device))
        x = x[..., :length, :n_freq]
        return self._attention(x.contiguous())


@register("separator", "tfgridnet")
class TFGridNetSeparator(Separator):
    """AV-TFGridNet: STFT ``[B, 2F, L]`` + visual ``[B, Dv, Tv]`` -> target STFT ``[B, 2F, L]``.

    ``output_type = "mapping"``: the output is decoded directly (no mask).

    Arguments
    ---------
    in_dim : int
        2F (real and imaginary parts of F bins; the ``stft`` encoder's ``out_dim``).
    visual_dim : int
        Dv.
    fusion : spec
        fusion block(s), built with ``audio_dim=D`` and applied per frequency bin (see the
        module docstring); default ``"film"``.
    emb_dim : int
        D (ESPnet default 48).
    hidden : int
        H, BLSTM units per direction (192).
    num_blocks : int
        R, TF-GridNet blocks (4; ESPnet's default is 6).
    kernel, stride : int
        I and J of the BLSTM unfolding (4 and 1 as in TF-GridNet; ``1, 1`` for a plain
        BLSTM per bin / per frame).
    num_heads : int
        attention heads (4).
    qk_dim : int
        approximate query/key width per head (512; ``E = ceil(512 / F)`` channels per bin).
    conv_kernel : int
        odd kernel of the input Conv2d and the output ConvTranspose2d (3).
    fuse_each_block : bool
        a fusion block before every GridNet block (default) or only before the first.
    intermediate_heads : bool
        with ``return_intermediate``, also return the output layer (shared) applied after
        every earlier block.
    eps : float
        of the norms.
    """

    output_type = "mapping"

    def __init__(self, in_dim: int, visual_dim: int, fusion="film", emb_dim: int = 48,
                 hidden: int = 192, num_blocks: int = 4, kernel: int = 4, stride: int = 1,
                 num_heads: int = 4, qk_dim: int = 512, conv_kernel: int = 3,
                 fuse_each_block: bool = True, intermediate_heads: bool = False,
                 eps: float = 1e-5):
        super().__init__()
        if in_dim % 2:
            raise ValueError(f"in_dim must be 2F (real; imag), got odd {in_dim}")
        if conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, got {conv_kernel}")
        self.n_freq = in_dim // 2
        self.num_blocks = int(num_blocks)
        self.intermediate_heads = bool(intermediate_heads)
        pad = conv_kernel // 2
        self.conv_in = nn.Conv2d(2, emb_dim, conv_kernel, padding=pad)
        self.norm_in = nn.GroupNorm(1, emb_dim, eps=eps)
        n_fusions = self.num_blocks if fuse_each_block else 1
        self.fusions = nn.ModuleList(build_fusion(fusion, audio_dim=emb_dim, visual_dim=visual_dim)
                                     for _ in range(n_fusions))
        self.fusion_projs = nn.ModuleList(fusion_projection(f, emb_dim, layout="conv2d")
                                          for f in self.fusions)
        self.blocks = nn.ModuleList(
            GridNetBlock(emb_dim, self.n_freq, hidden, kernel, stride, num_heads, qk_dim, eps)
            for _ in range(self.num_blocks))
        self.conv_out = nn.ConvTranspose2d(emb_dim, 2, conv_kernel, padding=pad)

    @staticmethod
    def _fuse(fusion, proj, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Apply a ``[B, C, L]`` fusion to every frequency bin of ``x`` ``[B, D, L, F]``."""
        bsz, dim, length, n_freq = x.shape
        a = x.permute(0, 3, 1, 2).reshape(bsz * n_freq, dim, length)
        v = visual.repeat_interleave(n_freq, dim=0)  # [B*F, Dv, Tv], bin-major within a batch item
        y = fusion(a, v)  # [B*F, C', L]
        y = y.view(bsz, n_freq, -1, length).permute(0, 2, 3, 1)  # [B, C', L, F]
        return proj(y)

    def _output(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``[B, D, L, F]`` -> ``[B, 2F, L]`` (real; imag), rescaled."""
        bsz, _, length, n_freq = x.shape
        y = self.conv_out(x)  # [B, 2, L, F]
        return y.permute(0, 1, 3, 2).reshape(bsz, 2 * n_freq, length) * scale

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, 2F, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput(masks=[``[B, 2F, L]``]).

        The "masks" are the estimated target STFTs (mapping).
        """
        bsz, chans, length = feats.shape
        if chans != 2 * self.n_freq:
            raise ValueError(f"expected {2 * self.n_freq} channels, got {chans}")
        scale = feats.square().mean(dim=(1, 2), keepdim=True).add(1e-8).sqrt()  # [B, 1, 1]
        x = (feats / scale).view(bsz, 2, self.n_freq, length).transpose(2, 3)  # [B, 2, L, F]
        x = self.norm_in(self.conv_in(x))  # [B, D, L, F]
        outputs = []
        for i, block in enumerate(self.blocks):
            if i < len(self.fusions):
                x = self._fuse(self.fusions[i], self.fusion_projs[i], x, visual)
            x = block(x)
            last = i == self.num_blocks - 1
            if last or (return_intermediate and self.intermediate_heads):
                outputs.append(self._output(x, scale))
        return SeparatorOutput(outputs)
