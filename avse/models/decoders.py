"""Decoders: feats ``[B, N, L]`` -> wav ``[B, T]``, the inverse of the audio encoders.

A decoder is registered under the short name of its encoder and is built from
``encoder.decoder_kwargs()``.

Example
-------
>>> import torch
>>> dec = ConvDecoder(in_channels=8, kernel_size=16)
>>> dec(torch.randn(2, 8, 124), length=1000).shape
torch.Size([2, 1000])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import Decoder, check_causal_framing
from avse.models.registry import register


def _fit(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or zero-pad the last axis of ``wav`` to ``length`` samples."""
    extra = wav.shape[-1] - length
    if extra > 0:
        return wav[..., :length]
    if extra < 0:
        return F.pad(wav, (0, -extra))
    return wav


@register("decoder", "conv")
class ConvDecoder(Decoder):
    """Learned synthesis: ``ConvTranspose1d(N, 1, L, stride=L // 2, bias=False)``.

    Equal to the reference's ``Linear(N, L, bias=False)`` basis followed by overlap-add
    with hop ``L // 2``. The output is trimmed or zero-padded to ``length``.

    Arguments
    ---------
    in_channels : int
        N.
    kernel_size : int
        L, the window in samples.
    stride : int, optional
        hop; default ``kernel_size // 2``.
    causal : bool
        the frames of a causal :class:`~avse.models.audio_encoders.ConvEncoder` (frame j
        covers ``[j S - (L - S), j S + S)``): the first ``L - S`` samples of the overlap-add
        (before time 0) are dropped. Needs ``L % S == 0``.
    """

    def __init__(self, in_channels: int = 256, kernel_size: int = 40, stride: int | None = None,
                 causal: bool = False):
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.stride = int(stride) if stride else max(1, self.kernel_size // 2)
        self.causal = bool(causal)
        if self.causal:
            check_causal_framing(self.kernel_size, self.stride)
        self.deconv = nn.ConvTranspose1d(in_channels, 1, self.kernel_size, stride=self.stride,
                                         bias=False)

    def forward(self, feats: torch.Tensor, length: int) -> torch.Tensor:
        """feats ``[B, N, L]`` -> wav ``[B, length]``."""
        wav = self.deconv(feats).squeeze(1)
        if self.causal:
            wav = wav[..., self.kernel_size - self.stride:]
        return _fit(wav, length)


@register("decoder", "stft")
class STFTDecoder(Decoder):
    """Inverse STFT (Hann window, overlap-add) of stacked real/imag ``[B, 2F, L]``.

    Arguments
    ---------
    n_fft, hop, win : int
        as in :class:`~avse.models.audio_encoders.STFTEncoder`.
    """

    def __init__(self, n_fft: int = 512, hop: int = 128, win: int = 512):
        super().__init__()
        self.n_fft, self.hop, self.win = int(n_fft), int(hop), int(win)
        self.n_freq = self.n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)

    def forward(self, feats: torch.Tensor, length: int) -> torch.Tensor:
        """feats ``[B, 2F, L]`` (real; imag) -> wav ``[B, length]``."""
        if feats.shape[1] != 2 * self.n_freq:
            raise ValueError(f"expected {2 * self.n_freq} channels (real; imag), "
                             f"got {feats.shape[1]}")
        spec = torch.complex(feats[:, :self.n_freq].float(), feats[:, self.n_freq:].float())
        # istft trims or zero-pads the overlap-added signal to `length`
        wav = torch.istft(spec, self.n_fft, hop_length=self.hop, win_length=self.win,
                          window=self.window.float(), center=True, length=length)
        return wav.to(feats.dtype)
