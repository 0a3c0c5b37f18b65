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
                        depthwise conv ``[B, (P - 1) d, H]`` (channels-last, as the
                        step computes); everything else works per
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
from avse.models.base import mask_activation
from avse.models.separators.tcn import ChannelNorm, TCNSeparator
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


def _linear(conv: nn.Module, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 ``Conv1d`` on channels-last rows ``x [B l, C]`` (one matrix product), plus
    ``add`` when given (in the same product)."""
    weight = conv.weight.squeeze(-1)
    if add is None:
        return F.linear(x, weight, conv.bias)
    out = torch.addmm(add, x, weight.t())
    return out if conv.bias is None else out + conv.bias


def _prelu(act: nn.PReLU, x: torch.Tensor) -> torch.Tensor:
    w = act.weight
    return F.prelu(x, w) if w.numel() == 1 else torch.where(x >= 0, x, x * w)


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """cLN or eval BatchNorm on channels-last rows ``x [B l, C]`` (both per frame)."""
    if isinstance(norm, ChannelNorm):
        return F.layer_norm(x, x.shape[-1:], norm.weight.view(-1), norm.bias.view(-1), norm.eps)
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return torch.addcmul(shift, x, scale)


def _fuse(fusion: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """concat / FiLM fusion of channels-last audio rows ``x [B l, C]`` and the held visual
    columns ``v [B l, Dv]`` (one per frame: the offline alignment is then the identity)."""
    if isinstance(fusion, ConcatFusion):
        return _linear(fusion.audio_proj, x) + _linear(fusion.visual_proj, v)
    return torch.addcmul(x + _linear(fusion.beta, v), x, _linear(fusion.gamma, v))


@register_stepper(TCNSeparator)
class TCNStepper(nn.Module):
    """``step(state, feats [B, N, l], vis [B, Dv, l]) -> (mask [B, N, l], state)`` of a causal
    :class:`~avse.models.separators.tcn.TCNSeparator` (``vis``: one held visual column per
    audio frame). Refused: centred convs (``causal=False``), global layer norm, fusions that
    are not per frame (cross attention).

    The step works channels-last (rows ``[B l, C]``: 1x1 convs as matrix products, cLN as
    ``layer_norm``, the depthwise conv as P shifted products), which is several times faster
    than the offline modules on a few frames; the state is channels-last too:
    ``r{r}b{x}`` ``[B, (P - 1) d, H]``.
    """

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
                    if not isinstance(norm, (ChannelNorm, _BatchNorm)):
                        raise ValueError(f"{name} with norm 'gln' (global layer norm over the "
                                         f"utterance) has no streaming form; {_FIX}")
                self.keys.append((f"r{r}b{x}", block, block.pad[0]))
        for fusion in separator.fusions:
            if not isinstance(fusion, (ConcatFusion, FiLMFusion)):
                raise ValueError(f"{name}: the fusion {type(fusion).__name__} is not per frame, "
                                 "so it has no streaming form (use concat or film)")
        self._batchnorms = [m for m in separator.modules() if isinstance(m, _BatchNorm)]
        self._mask_act = mask_activation(separator.mask_act)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """Per block ``r{r}b{x}``: zeros ``[batch, (P - 1) d, H]`` (the left padding)."""
        return {key: torch.zeros(batch, pad, block.depthwise.in_channels, device=device,
                                 dtype=dtype) for key, block, pad in self.keys}

    @staticmethod
    def _depthwise(conv: nn.Conv1d, z: torch.Tensor) -> torch.Tensor:
        """The depthwise conv (no padding) of channels-last ``z [B, (P - 1) d + l, H]`` -> l
        frames: the P taps of each output frame (an unfolded view) times the weights."""
        w, d = conv.weight[:, 0], conv.dilation[0]  # [H, P]
        span = (w.shape[1] - 1) * d + 1
        y = (z.unfold(1, span, 1)[..., ::d] * w).sum(-1)  # [B, l, H, P] -> [B, l, H]
        return y if conv.bias is None else y + conv.bias

    def step(self, state: dict, feats: torch.Tensor, vis: torch.Tensor):
        """feats ``[B, N, l]``, vis ``[B, Dv, l]`` -> (final mask ``[B, N, l]``, new state)."""
        if any(m.training for m in self._batchnorms):
            raise ValueError("TCNSeparator: stream in eval mode (call .eval() on the model): "
                             "BatchNorm in train mode uses the statistics of each chunk")
        sep = self.separator
        batch, _, frames = feats.shape
        # channels-last frames of the batch as rows [B l, C]: 1x1 convs are single products
        x = feats.transpose(1, 2).reshape(batch * frames, -1)
        x = _linear(sep.bottleneck, _norm(sep.in_norm, x))
        v = vis.transpose(1, 2).reshape(batch * frames, -1)
        new, skip_sum, i = {}, None, 0
        for r, blocks in enumerate(sep.repeats):
            if r < len(sep.fusions):
                x = _fuse(sep.fusions[r], x, v)
                if not isinstance(sep.fusion_projs[r], nn.Identity):
                    x = _linear(sep.fusion_projs[r], x)
            for block in blocks:
                key, _, pad = self.keys[i]
                i += 1
                y = _norm(block.norm_in, _prelu(block.act_in, _linear(block.conv_in, x)))
                y = y.view(batch, frames, -1)
                if pad:
                    y = torch.cat((state[key], y), dim=1)
                    new[key] = y[:, y.shape[1] - pad:]
                else:
                    new[key] = state[key]
                y = self._depthwise(block.depthwise, y).reshape(batch * frames, -1)
                y = _norm(block.norm_dw, _prelu(block.act_dw, y))
                if block.skip_conv is not None:
                    skip_sum = _linear(block.skip_conv, y, skip_sum)
                x = _linear(block.res_conv, y, x)
        head = skip_sum if sep.skip else x
        mask = self._mask_act(_linear(sep.mask_conv, _prelu(sep.mask_prelu, head)))
        return mask.view(batch, frames, -1).transpose(1, 2), new

    forward = step
