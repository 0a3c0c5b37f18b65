"""MuSE separator: a Conv-TasNet TCN with a speaker-embedding branch at every repeat.

MuSE (Pan et al., "MuSE: Multi-modal target speaker extraction with visual cues", 2021),
as in the SEANet repository's ``model/muse.py``. After a channel-wise layer norm and a 1x1
bottleneck ``N -> C`` (the ``mix`` stream), each of the R repeats

1. projects the visual features twice, for the fusion (``visual_projs``) and for the speaker
   branch (``speaker_visual_projs``): 1x1 ``Dv -> C`` at 25 fps, then upsampled to the L
   audio frames (:func:`upsample_visual`: linear interpolation by the integer frame ratio,
   32 at 16 kHz, hop 20, 25 fps, then zero-padded or cropped to L);
2. computes a speaker embedding ``e`` ``[B, C, 1]`` (:class:`SpeakerEmbedding`) from the
   current stream ``x`` gated by the mixture, ``mix * relu(x)``, concatenated with the
   speaker branch's visual projection: 1x1 ``2C -> C``, three residual 1x1-conv/BN blocks
   each followed by PReLU and average pooling (/3), a 1x1 conv (with bias) and the time
   average;
3. classifies the speaker from ``e`` (linear ``C -> num_speakers``; the logits train the
   embedding and are not used otherwise);
4. feeds ``W [e (repeated over time); x; v]`` to X Conv-TasNet blocks
   (:class:`~avse.models.separators.tcn.TCNBlock`, dilations ``1 .. 2^(X-1)``, gLN).

The mask is ``relu(1x1 conv C -> N)`` of the last repeat's output (no PReLU before it,
unlike :class:`~avse.models.separators.tcn.TCNSeparator`). The input map ``W`` of each
repeat is split into a speaker part (``speaker_projs``, applied once per utterance to
``e``) and the fusion block (``fusion``, built with ``audio_dim = visual_dim = C``; the
default ``concat`` is exactly the reference's ``[x; v]`` columns of ``W``).

With the reference's weights (:func:`avse.models.reference.muse.convert_reference_state_dict`)
and the MuSE visual front (``embedding`` visual encoder with ``out_dim=512, hidden=None,
norm="bn"``) the estimate equals the reference's
(:func:`avse.models.reference.muse.reference_config`; measured in eval mode on
4 s inputs with 512-d embeddings: max deviation 8e-7 of the estimate's peak, the float32
rounding level; in float64 1e-15, and the training loss and gradients to 1e-12). Changes
that leave the estimate as it is: the time average of the embedding is taken before its
last 1x1 conv, the visual half of the speaker branch's input conv runs at 25 fps, the
speaker part of each repeat's input conv once per utterance, and the logits of a batch of
one are ``[1, M]`` (the reference squeezes them to ``[M]``).

Outputs: ``masks = [final]`` (MuSE has no intermediate estimates); in training (or with
``return_intermediate``) ``aux["speaker_logits"]`` ``[B, num_speakers]`` (last repeat) and,
with ``return_intermediate``, ``aux["speaker_logits_intermediate"]`` (the R-1 earlier
repeats, first to last). In eval mode without ``return_intermediate`` the classifiers are
not run (they do not affect the estimate) unless ``classify_in_eval``.

Example
-------
>>> import torch
>>> sep = MuSESeparator(in_dim=16, visual_dim=8, bottleneck=8, hidden=16, num_blocks=2,
...                     num_repeats=2, num_speakers=5, speaker_hidden=8)
>>> out = sep(torch.rand(2, 16, 95), torch.randn(2, 8, 3), return_intermediate=True)
>>> out.masks[-1].shape, out.aux["speaker_logits"].shape
(torch.Size([2, 16, 95]), torch.Size([2, 5]))
>>> len(out.aux["speaker_logits_intermediate"])  # the R - 1 earlier repeats
1
>>> sorted(sep.eval()(torch.rand(2, 16, 95), torch.randn(2, 8, 3)).aux)
[]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import Separator, SeparatorOutput, build_fusion, fusion_projection
from avse.models.registry import register
from avse.models.separators.tcn import ChannelNorm, TCNBlock

__all__ = ["MuSESeparator", "SpeakerEmbedding", "round_ratio", "upsample_visual"]


def upsample_visual(visual: torch.Tensor, length: int, factor) -> torch.Tensor:
    """MuSE's alignment: ``[B, D, Tv]`` -> ``[B, D, length]``.

    Linear interpolation (``align_corners=False``) to ``factor * Tv`` frames, then zero
    padding at the end or cropping to ``length``. ``factor``: an int, or (under
    :func:`torch.export`, with symbolic lengths) a 0-d integer tensor; with symbolic
    lengths the same interpolation is computed by :func:`_upsample_gathered`.

    >>> upsample_visual(torch.tensor([[[0.0, 4.0]]]), 5, 2)
    tensor([[[0., 1., 3., 4., 0.]]])
    """
    if not (isinstance(length, int) and isinstance(visual.shape[-1], int)
            and isinstance(factor, int)):
        return _upsample_gathered(visual, length, factor)
    if factor > 1:
        visual = F.interpolate(visual, size=factor * visual.shape[-1], mode="linear",
                               align_corners=False)
    extra = length - visual.shape[-1]
    if extra > 0:
        return F.pad(visual, (0, extra))
    return visual[..., :length] if extra < 0 else visual


def _upsample_gathered(visual: torch.Tensor, length, factor) -> torch.Tensor:
    """:func:`upsample_visual` as index arithmetic on tensors: output frame ``j < factor Tv``
    is ``(1 - w) v[i] + w v[min(i + 1, Tv - 1)]`` with ``s = max(0, (j + 1/2) Tv / (factor
    Tv) - 1/2)``, ``i = floor(s)``, ``w = s - i`` (``F.interpolate``'s own arithmetic), the
    frames after it zeros. No output size depends on ``factor``, so :func:`torch.export`
    keeps ``length`` and ``Tv`` dynamic (``F.interpolate`` to ``factor * Tv`` frames would
    tie them to the example's when ``factor`` is derived from them)."""
    tv = visual.shape[-1]
    j = torch.arange(length, device=visual.device)
    frames = torch.full((), tv, dtype=torch.long, device=visual.device)
    total = frames * factor  # factor * Tv frames before padding
    scale = frames.float() / total.float()  # float32, then the index in float64 (as ATen)
    src = ((j.double() + 0.5) * scale.double() - 0.5).float().clamp(min=0)
    i0 = src.floor().long().clamp(max=tv - 1)
    w = (src - i0.float()).clamp(0, 1)
    i1 = (i0 + 1).clamp(max=tv - 1)
    out = visual.index_select(-1, i0) * (1 - w) + visual.index_select(-1, i1) * w
    return out * (j < total).to(visual.dtype)


def round_ratio(num, den):
    """``max(1, round(num / den))`` (Python's ``round``: halves to even) of positive ints,
    or of 0-d integer tensors, in integer arithmetic (what MuSE's default ``visual_upsample``
    computes from the lengths; :func:`torch.export` cannot keep ``round`` of a float
    symbolic).

    >>> [round_ratio(n, 2) for n in (1, 3, 5, 6, 7)]  # 0.5, 1.5, 2.5, 3, 3.5
    [1, 2, 2, 3, 4]
    """
    q, r = num // den, num % den
    up = (2 * r) // den  # 1 when the remainder is at least half
    tie = up * (1 - (2 * r - 1) // den)  # 1 when exactly half
    q = q + up - tie * (1 - q % 2)  # a half goes to the even neighbour
    return q + (q == 0)  # 0 -> 1


class SpeakerEmbedding(nn.Module):
    """MuSE speaker encoder: audio ``[B, C, L]`` + visual ``[B, C, Tv]`` -> ``[B, C, 1]``.

    ``x = P [audio; align(visual)]`` (1x1, ``2C -> C``, no bias; the visual half is applied
    at the video rate, before the alignment, with which it commutes), then ``num_blocks``
    times ``x = avgpool(prelu(x + bn(conv(prelu(bn(conv(x)))))))`` (1x1 convs ``C -> H ->
    C``, pooling by ``pool``; skipped once fewer than ``pool`` frames are left), then a 1x1
    conv with bias and the average over time.
    """

    def __init__(self, channels: int, hidden: int = 256, num_blocks: int = 3, pool: int = 3):
        super().__init__()
        self.channels, self.pool = int(channels), int(pool)
        self.proj = nn.Conv1d(2 * channels, channels, 1, bias=False)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(channels, hidden, 1, bias=False), nn.BatchNorm1d(hidden),
                          nn.PReLU(), nn.Conv1d(hidden, channels, 1, bias=False),
                          nn.BatchNorm1d(channels))
            for _ in range(num_blocks))
        self.acts = nn.ModuleList(nn.PReLU() for _ in range(num_blocks))
        self.out = nn.Conv1d(channels, channels, 1)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, align) -> torch.Tensor:
        """audio ``[B, C, L]``, visual ``[B, C, Tv]``, ``align``: ``[B, C, Tv] -> [B, C, L]``."""
        weight = self.proj.weight
        x = F.conv1d(audio, weight[:, :self.channels]) + align(
            F.conv1d(visual, weight[:, self.channels:]))
        for block, act in zip(self.blocks, self.acts):
            x = act(block(x) + x)
            if x.shape[-1] >= self.pool:
                x = F.avg_pool1d(x, self.pool)
        # the time average commutes with the 1x1 conv: average first (cheaper)
        return self.out(x.mean(dim=-1, keepdim=True))


@register("separator", "muse")
class MuSESeparator(Separator):
    """MuSE: feats ``[B, N, L]`` + visual ``[B, Dv, Tv]`` -> mask ``[B, N, L]`` + speaker logits.

    Defaults are the reference configuration (``muse(N=256, L=40, B=256, H=512, P=3, X=8,
    R=4, M=800)``).

    Arguments
    ---------
    in_dim : int
        N, encoder channels.
    visual_dim : int
        Dv, visual encoder channels (512 with MuSE's visual front).
    fusion : spec
        fusion of the stream ``x`` with the projected visual features at the input of every
        repeat, built with ``audio_dim = visual_dim = C``; a fusion whose ``out_dim != C``
        is followed by a 1x1 conv back to C. Default ``"concat"`` (the reference).
    bottleneck : int
        C.
    hidden : int
        H, channels inside the TCN blocks.
    kernel_size : int
        P.
    num_blocks : int
        X, TCN blocks per repeat.
    num_repeats : int
        R.
    num_speakers : int
        M, classes of the speaker classifiers (the training speakers).
    speaker_hidden, speaker_blocks, speaker_pool : int
        :class:`SpeakerEmbedding` (256, 3, 3 in the reference).
    norm : str
        norm inside the TCN blocks (``"gln"``, ``"cln"``, ``"bn"``).
    visual_upsample : int or None
        the integer ratio of audio to video frames used by the alignment; None: ``round(L /
        Tv)`` (32 for 16 kHz, hop 20, 25 fps, as the reference hard-codes).
    visual_align : str
        ``"reference"``: the fusion gets the visual features already upsampled to the L
        audio frames (as MuSE); ``"fusion"``: at 25 fps, aligned by the fusion block itself
        (e.g. for ``cross_attention``). The speaker branch always uses the reference one.
    classify_in_eval : bool
        also run the speaker classifiers in eval mode (for a validation loss that needs
        ``speaker_logits``).
    """

    output_type = "mask"

    def __init__(self, in_dim: int, visual_dim: int, fusion="concat", bottleneck: int = 256,
                 hidden: int = 512, kernel_size: int = 3, num_blocks: int = 8,
                 num_repeats: int = 4, num_speakers: int = 800, speaker_hidden: int = 256,
                 speaker_blocks: int = 3, speaker_pool: int = 3, norm: str = "gln",
                 visual_upsample: int | None = None, visual_align: str = "reference",
                 classify_in_eval: bool = False):
        super().__init__()
        if visual_align not in ("reference", "fusion"):
            raise ValueError(f"visual_align must be 'reference' or 'fusion', got {visual_align!r}")
        if visual_upsample is not None and int(visual_upsample) < 1:
            raise ValueError(f"visual_upsample must be >= 1 or None, got {visual_upsample}")
        self.num_repeats, self.num_blocks = int(num_repeats), int(num_blocks)
        self.num_speakers = int(num_speakers)
        self.visual_upsample = None if visual_upsample is None else int(visual_upsample)
        self.visual_align = visual_align
        self.classify_in_eval = bool(classify_in_eval)
        c, r = int(bottleneck), self.num_repeats
        self.in_norm = ChannelNorm(in_dim, eps=1e-5)  # the reference's nn.LayerNorm eps
        self.bottleneck = nn.Conv1d(in_dim, c, 1, bias=False)
        self.visual_projs = nn.ModuleList(nn.Conv1d(visual_dim, c, 1, bias=False) for _ in range(r))
        self.speaker_visual_projs = nn.ModuleList(nn.Conv1d(visual_dim, c, 1, bias=False)
                                                  for _ in range(r))
        self.speaker_nets = nn.ModuleList(SpeakerEmbedding(c, speaker_hidden, speaker_blocks,
                                                           speaker_pool) for _ in range(r))
        self.classifiers = nn.ModuleList(nn.Linear(c, self.num_speakers) for _ in range(r))
        self.speaker_projs = nn.ModuleList(nn.Conv1d(c, c, 1, bias=False) for _ in range(r))
        self.fusions = nn.ModuleList(build_fusion(fusion, audio_dim=c, visual_dim=c)
                                     for _ in range(r))
        self.fusion_projs = nn.ModuleList(fusion_projection(f, c) for f in self.fusions)
        self.repeats = nn.ModuleList(
            nn.ModuleList(TCNBlock(c, hidden, kernel_size, 2 ** x, norm)
                          for x in range(self.num_blocks))
            for _ in range(r))
        self.mask_conv = nn.Conv1d(c, in_dim, 1, bias=False)

    def forward(self, feats: torch.Tensor, visual: torch.Tensor,
                return_intermediate: bool = False) -> SeparatorOutput:
        """feats ``[B, N, L]``, visual ``[B, Dv, Tv]`` -> SeparatorOutput (see module doc)."""
        x = self.bottleneck(self.in_norm(feats))  # [B, C, L]
        mix = x
        length = x.shape[-1]
        factor = self.visual_upsample
        if not factor:
            frames = visual.shape[-1]
            if isinstance(length, int) and isinstance(frames, int):
                factor = max(1, round(length / frames))
            else:  # symbolic lengths (torch.export): a tensor
                factor = round_ratio(torch.full((), length, dtype=torch.long),
                                     torch.full((), frames, dtype=torch.long))

        def align(v):
            return upsample_visual(v, length, factor)

        classify = self.training or return_intermediate or self.classify_in_eval
        logits = []
        for r in range(self.num_repeats):
            emb = self.speaker_nets[r](mix * F.relu(x), self.speaker_visual_projs[r](visual),
                                       align)  # [B, C, 1]
            if classify and (return_intermediate or r == self.num_repeats - 1):
                logits.append(self.classifiers[r](emb.squeeze(-1)))
            v = self.visual_projs[r](visual)
            if self.visual_align == "reference":
                v = align(v)
            x = self.fusion_projs[r](self.fusions[r](x, v)) + self.speaker_projs[r](emb)
            for block in self.repeats[r]:
                x, _ = block(x)
        aux = {}
        if logits:
            aux["speaker_logits"] = logits[-1]
            if return_intermediate:
                aux["speaker_logits_intermediate"] = logits[:-1]
        return SeparatorOutput([F.relu(self.mask_conv(x))], aux=aux)
