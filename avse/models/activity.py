"""The activity head: per video frame, does the target speak? (``AVSEModel(activity_head=...)``)

A small temporal convolution network at the video frame rate (25 fps) over what the model
already computed: the mixture's and the estimate's encoder features (average-pooled from
the audio frames to the video frames, log-compressed), the visual features, and two scalars
per frame, the log-power of the mixture and of the estimate in that frame. It returns one
logit per frame, ``aux["activity"] [B, Tv]``, trained with the ``bce`` auxiliary loss
against the batch's ``activity`` (:class:`avse.data.loaders.AVBatch`: 1 where the target
speaks, 0 where it is silent in the ``absent`` / ``sparse`` conditions).

By default (``detach=True``) its inputs are detached: the head learns from the separator's
features but never changes them, so adding it leaves extraction as it was. It is a few
thousand parameters (hidden 64: about 75 k with the demo model's 64-d features).

Example
-------
>>> import torch
>>> head = ActivityHead(audio_dim=16, visual_dim=8, hidden=16)
>>> mix, feats, v = torch.randn(2, 6400), torch.rand(2, 16, 400), torch.randn(2, 8, 10)
>>> head(mix, 0.5 * mix, feats, 0.5 * feats, v).shape
torch.Size([2, 10])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.data.align import SAMPLES_PER_FRAME


def frame_log_power(wav: torch.Tensor, n_frames: int) -> torch.Tensor:
    """``10 log10`` of the mean power of ``wav [B, T]`` over each video frame -> ``[B, n]``
    (a frame past the end of ``wav`` counts as silent; floor -100 dB)."""
    need = n_frames * SAMPLES_PER_FRAME
    wav = F.pad(wav, (0, max(0, need - wav.shape[-1])))[..., :need]
    power = wav.float().pow(2).reshape(wav.shape[0], n_frames, SAMPLES_PER_FRAME).mean(-1)
    return 10.0 * torch.log10(power + 1e-10)


class ActivityHead(nn.Module):
    """Per-frame target-activity logits (see the module docstring).

    Arguments
    ---------
    audio_dim, visual_dim : int
        encoder feature widths (wired by AVSEModel).
    hidden : int
        channels of the temporal convolutions.
    kernel_size : int
        of each dilated convolution (odd).
    dilations : list of int
        one residual block per dilation (receptive field ``1 + (k - 1) * sum(dilations)``
        frames: 29 frames, 1.16 s, with the defaults).
    detach : bool
        detach the inputs (the head does not train the separator).
    """

    def __init__(self, audio_dim: int, visual_dim: int, hidden: int = 64, kernel_size: int = 5,
                 dilations=(1, 2, 4), detach: bool = True):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"activity_head kernel_size must be odd, got {kernel_size}")
        self.detach = bool(detach)
        self.inp = nn.Conv1d(2 * audio_dim + visual_dim + 2, hidden, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(hidden, hidden, kernel_size, dilation=int(d),
                                    padding=int(d) * (kernel_size // 2)),
                          nn.GroupNorm(1, hidden), nn.PReLU())
            for d in dilations)
        self.out = nn.Conv1d(hidden, 1, 1)

    def forward(self, mixture, estimate, feats, est_feats, visual) -> torch.Tensor:
        """mixture / estimate ``[B, T]``, feats / est_feats ``[B, N, L]``, visual
        ``[B, Dv, Tv]`` -> logits ``[B, Tv]``."""
        n = visual.shape[-1]
        inputs = [mixture, estimate, feats, est_feats, visual]
        if self.detach:
            inputs = [x.detach() for x in inputs]
        mixture, estimate, feats, est_feats, visual = (x.float() for x in inputs)
        pooled = [torch.log1p(F.adaptive_avg_pool1d(x.abs(), n)) for x in (feats, est_feats)]
        p_mix = frame_log_power(mixture, n)
        p_est = frame_log_power(estimate, n)
        level = torch.stack([(p_mix + 50.0) / 50.0, (p_est - p_mix) / 20.0], dim=1)
        x = self.inp(torch.cat(pooled + [visual, level], dim=1))
        for block in self.blocks:
            x = x + block(x)
        return self.out(x).squeeze(1)
