"""Audio encoders: wav ``[B, T]`` @16 kHz -> feats ``[B, N, L]``.

Each encoder names its matching decoder (registered under the same short name) and the
arguments that decoder needs through :meth:`decoder_kwargs`, so that
:class:`~avse.models.avse_model.AVSEModel` builds the pair without repeating sizes.

Example
-------
>>> import torch
>>> enc = ConvEncoder(out_channels=8, kernel_size=16)
>>> enc(torch.randn(2, 1000)).shape     # stride 8: ceil((1000 - 16) / 8) + 1 frames
torch.Size([2, 8, 124])
>>> enc.num_frames(1000), enc.decoder_kwargs()
(124, {'in_channels': 8, 'kernel_size': 16, 'stride': 8})
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import AudioEncoder, check_causal_framing
from avse.models.registry import register


@register("audio_encoder", "conv")
class ConvEncoder(AudioEncoder):
    """Learned filterbank: ``Conv1d(1, N, L, stride=L // 2, bias=False)`` then ReLU.

    The encoder of Conv-TasNet / AV-DPRNN (reference: N=256, L=40, i.e. 2.5 ms windows
    with a 1.25 ms hop at 16 kHz, ReLU). The end of the waveform is zero-padded so that the
    frames cover every sample (the reference drops the last ``< stride`` samples when
    ``T - L`` is not a multiple of the stride; for the usual ``T`` both give the same L).

    Arguments
    ---------
    out_channels : int
        N, the number of basis filters (``out_dim``).
    kernel_size : int
        L, the window in samples.
    stride : int, optional
        hop in samples; default ``kernel_size // 2`` (50 % overlap).
    activation : str
        ``"relu"`` (reference; non-negative features for masking) or ``"none"``.
    causal : bool
        False (default): frames start at sample 0 and the end is padded (above). True (set by
        ``AVSEModel(causal=True)``): ``L - stride`` zeros on the left and zeros on the right up
        to a multiple of the stride, so a waveform of T samples gives ``ceil(T / stride)``
        frames and frame j covers samples ``[j S - (L - S), j S + S)`` (S the stride): a frame
        is complete as soon as its last hop has arrived (streaming, :mod:`avse.streaming`).
        Needs ``L % S == 0``; the matching decoder drops the ``L - S`` samples before time 0.

    ``lookahead`` (samples) is one window, L: the decoder's overlap-add gives sample n from
    the frames that cover it, the last of which ends up to L - 1 samples after n
    (:meth:`AVSEModel.latency_samples <avse.models.avse_model.AVSEModel.latency_samples>`).
    """

    def __init__(self, out_channels: int = 256, kernel_size: int = 40, stride: int | None = None,
                 activation: str = "relu", causal: bool = False):
        super().__init__()
        if activation not in ("relu", "none"):
            raise ValueError(f"activation must be 'relu' or 'none', got {activation!r}")
        self.kernel_size = int(kernel_size)
        self.stride = int(stride) if stride else max(1, self.kernel_size // 2)
        self.causal = bool(causal)
        if self.causal:
            check_causal_framing(self.kernel_size, self.stride)
        self.out_dim = int(out_channels)
        self.activation = activation
        self.conv = nn.Conv1d(1, self.out_dim, self.kernel_size, stride=self.stride, bias=False)

    @property
    def lookahead(self) -> int:
        """Samples of look-ahead of an encoder/decoder pair with causal parts between: L."""
        return self.kernel_size

    def num_frames(self, length: int) -> int:
        """L for a waveform of ``length`` samples (after the end padding)."""
        if self.causal:
            return max(1, -(-length // self.stride))
        if length <= self.kernel_size:
            return 1
        return -(-(length - self.kernel_size) // self.stride) + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav ``[B, T]`` -> feats ``[B, N, L]`` with ``L = num_frames(T)``."""
        length = wav.shape[-1]
        x = wav.unsqueeze(1)  # [B, 1, T]
        left = self.kernel_size - self.stride if self.causal else 0
        pad = (self.num_frames(length) - 1) * self.stride + self.kernel_size - length - left
        if pad > 0 or left > 0:
            x = F.pad(x, (left, max(pad, 0)))
        return self.activate(self.conv(x))  # [B, N, L]

    def activate(self, feats: torch.Tensor) -> torch.Tensor:
        """The activation after the filterbank (ReLU or none)."""
        return F.relu(feats) if self.activation == "relu" else feats

    def decoder_kwargs(self) -> dict:
        """Arguments of the matching :class:`~avse.models.decoders.ConvDecoder`."""
        kwargs = {"in_channels": self.out_dim, "kernel_size": self.kernel_size,
                  "stride": self.stride}
        if self.causal:  # only then: a default model's decoder spec is as before
            kwargs["causal"] = True
        return kwargs


@register("audio_encoder", "stft")
class STFTEncoder(AudioEncoder):
    """STFT with a Hann window; real and imaginary parts stacked as channels.

    Output ``[B, 2F, L]``: channels ``0..F-1`` are the real parts, ``F..2F-1`` the
    imaginary parts, ``F = n_fft // 2 + 1``; ``L = T // hop + 1`` (centred frames, zero
    padded at both ends). With the matching :class:`~avse.models.decoders.STFTDecoder`
    (overlap-add iSTFT) the pair reconstructs the input exactly (``hop <= win / 2``).

    Arguments
    ---------
    n_fft : int
        FFT size (default 512 = 32 ms).
    hop : int
        hop in samples (default 128 = 8 ms); this is ``stride``.
    win : int
        Hann window length (``<= n_fft``; centred and zero-padded to ``n_fft``).
    """

    def __init__(self, n_fft: int = 512, hop: int = 128, win: int = 512):
        super().__init__()
        if win > n_fft:
            raise ValueError(f"win ({win}) must be <= n_fft ({n_fft})")
        self.n_fft, self.hop, self.win = int(n_fft), int(hop), int(win)
        self.stride = self.hop
        self.n_freq = self.n_fft // 2 + 1
        self.out_dim = 2 * self.n_freq
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav ``[B, T]`` -> feats ``[B, 2F, T // hop + 1]`` (real; imag)."""
        spec = torch.stft(wav, self.n_fft, hop_length=self.hop, win_length=self.win,
                          window=self.window.to(wav.dtype), center=True, pad_mode="constant",
                          return_complex=True)  # [B, F, L] complex
        return torch.cat((spec.real, spec.imag), dim=1)

    def decoder_kwargs(self) -> dict:
        """Arguments of the matching :class:`~avse.models.decoders.STFTDecoder`."""
        return {"n_fft": self.n_fft, "hop": self.hop, "win": self.win}
