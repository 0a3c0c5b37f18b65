"""Streaming steppers of the audio path: the causal conv encoder and decoder, the causal TCN.

The streaming protocol is :mod:`avse.streaming.registry`'s. Here:

======================  ================================================================
module                  state
======================  ================================================================
``ConvEncoder``         ``buf``: the last ``K - S`` input samples ``[B, K - S]``;
                        ``step(state, wav [B, k S]) -> (feats [B, N, k], state)``
``ConvDecoder``         ``tail``: the overlap-add samples not yet final ``[B, K - S]``;
                        ``step(state, feats [B, N, k]) -> (wav [B, k S], state)``, the
                        samples from ``-(K - S)`` on (the first ``K - S`` of a stream are
                        before time 0: the caller drops them)
``TCNSeparator``        ``r{r}b{x}``: per block, the last ``(P - 1) d`` inputs of its
                        depthwise conv ``[B, H, (P - 1) d]``; everything else works per
                        frame (1x1 convs, PReLU, cLN, eval BatchNorm, concat / FiLM fusion
                        of the held visual columns, skip sums, the mask head)
======================  ================================================================

Frames and samples are those of the causal framing (:class:`~avse.models.audio_encoders.
ConvEncoder` with ``causal=True``: frame j covers samples ``[j S - (K - S), j S + S)``), so
the streamed encoder, separator and decoder give what the offline ones give on the same
frames. Steps are pure tensor ops (no branching on tensor values), fixed state shapes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from avse.models.audio_encoders import ConvEncoder
from avse.models.decoders import ConvDecoder
from avse.models.fusion import ConcatFusion, FiLMFusion
from avse.models.separators.tcn import TCNSeparator
from avse.streaming.registry import register_stepper

__all__ = ["ConvEncoderStepper", "ConvDecoderStepper", "TCNStepper"]

_FIX = "build the model with AVSEModel(..., causal=True) (e.g. a *_causal.yaml) and train it so"


def _param(module: nn.Module) -> torch.Tensor:
    return next(module.parameters())


def _check_causal_framing(module: nn.Module) -> None:
    if not getattr(module, "causal", False):
        raise ValueError(f"{type(module).__name__} has no streaming form with causal=False (its "
                         f"frames are not aligned to the hop from the left); {_FIX}")


@register_stepper(ConvEncoder)
class ConvEncoderStepper(nn.Module):
    """``step(state, wav [B, k S]) -> (feats [B, N, k], state)`` of a causal ConvEncoder."""

    def __init__(self, encoder: ConvEncoder):
        super().__init__()
        _check_causal_framing(encoder)
        self.encoder = encoder
        self.hop = encoder.stride
        self.history = encoder.kernel_size - encoder.stride

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """``{"buf": zeros [batch, K - S]}`` (the left padding of a stream)."""
        return {"buf": torch.zeros(batch, self.history, device=device, dtype=dtype)}

    def step(self, state: dict, wav: torch.Tensor):
        """wav ``[B, k S]`` (k >= 1 whole hops) -> (feats ``[B, N, k]``, new state)."""
        x = torch.cat((state["buf"], wav), dim=-1)
        feats = self.encoder.activate(self.encoder.conv(x.unsqueeze(1)))
        return feats, {"buf": x[:, x.shape[-1] - self.history:]}

    forward = step


@register_stepper(ConvDecoder)
class ConvDecoderStepper(nn.Module):
    """``step(state, feats [B, N, k]) -> (wav [B, k S], state)`` of a causal ConvDecoder.

    The output runs ``K - S`` samples behind the causal decoder's time axis: the first
    ``K - S`` samples of a stream are the dropped ones before time 0, and the last ``K - S``
    of a stream stay in ``tail`` (its end: :attr:`StreamingModel.flush
    <avse.streaming.core.StreamingModel.flush>` appends them).
    """

    def __init__(self, decoder: ConvDecoder):
        super().__init__()
        _check_causal_framing(decoder)
        self.decoder = decoder
        self.hop = decoder.stride
        self.history = decoder.kernel_size - decoder.stride

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """``{"tail": zeros [batch, K - S]}``."""
        return {"tail": torch.zeros(batch, self.history, device=device, dtype=dtype)}

    def step(self, state: dict, feats: torch.Tensor):
        """feats ``[B, N, k]`` -> (the ``k S`` samples now final ``[B, k S]``, new state)."""
        y = self.decoder.deconv(feats).squeeze(1)  # [B, k S + K - S]
        done = y.shape[-1] - self.history
        y = y + F.pad(state["tail"], (0, done))
        return y[:, :done], {"tail": y[:, done:]}

    forward = step


@register_stepper(TCNSeparator)
class TCNStepper(nn.Module):
    """``step(state, feats [B, N, l], vis [B, Dv, l]) -> (mask [B, N, l], state)`` of a causal
    :class:`~avse.models.separators.tcn.TCNSeparator` (``vis``: one held visual column per
    audio frame). Refused: centred convs (``causal=False``), global layer norm, fusions that
    are not per frame (cross attention)."""

    def __init__(self, separator: TCNSeparator):
        super().__init__()
        name = type(separator).__name__
        self.separator = separator
        self.keys = []
        for r, blocks in enumerate(separator.repeats):
            for x, block in enumerate(blocks):
                if block.pad[1] != 0:
                    raise ValueError(f"{name} is not causal (causal=False: its depthwise convs "
                                     f"look ahead), so it has no streaming form; {_FIX}")
                for norm in (block.norm_in, block.norm_dw):
                    if isinstance(norm, nn.GroupNorm):
                        raise ValueError(f"{name} with norm 'gln' (global layer norm over the "
                                         f"utterance) has no streaming form; {_FIX}")
                self.keys.append((f"r{r}b{x}", block, block.pad[0]))
        for fusion in separator.fusions:
            if not isinstance(fusion, (ConcatFusion, FiLMFusion)):
                raise ValueError(f"{name}: the fusion {type(fusion).__name__} is not per frame, "
                                 "so it has no streaming form (use concat or film)")
        self._batchnorms = [m for m in separator.modules() if isinstance(m, _BatchNorm)]

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """Per block ``r{r}b{x}``: zeros ``[batch, H, (P - 1) d]`` (the left padding)."""
        return {key: torch.zeros(batch, block.depthwise.in_channels, pad, device=device,
                                 dtype=dtype) for key, block, pad in self.keys}

    def step(self, state: dict, feats: torch.Tensor, vis: torch.Tensor):
        """feats ``[B, N, l]``, vis ``[B, Dv, l]`` -> (final mask ``[B, N, l]``, new state)."""
        if any(m.training for m in self._batchnorms):
            raise ValueError("TCNSeparator: stream in eval mode (call .eval() on the model): "
                             "BatchNorm in train mode uses the statistics of each chunk")
        sep = self.separator
        x = sep.bottleneck(sep.in_norm(feats))
        new, skip_sum, i = {}, None, 0
        for r, blocks in enumerate(sep.repeats):
            if r < len(sep.fusions):
                x = sep.fusion_projs[r](sep.fusions[r](x, vis))
            for block in blocks:
                key, _, pad = self.keys[i]
                i += 1
                y = block.norm_in(block.act_in(block.conv_in(x)))
                if pad:
                    y = torch.cat((state[key], y), dim=-1)
                    new[key] = y[:, :, y.shape[-1] - pad:]
                else:
                    new[key] = state[key]
                y = block.norm_dw(block.act_dw(block.depthwise(y)))
                if block.skip_conv is not None:
                    s = block.skip_conv(y)
                    skip_sum = s if skip_sum is None else skip_sum + s
                x = x + block.res_conv(y)
        return sep._mask(skip_sum if sep.skip else x), new

    forward = step
