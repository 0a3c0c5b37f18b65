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


def _lin(x: torch.Tensor, conv, add: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 ``Conv1d`` (or its :func:`_lin_spec`) on channels-last rows ``x [B l, C]``: one
    matrix product, plus ``add`` when given (in the same product)."""
    weight, bias, weight_t = conv if isinstance(conv, tuple) else _lin_spec(conv)
    if add is None:
        return F.linear(x, weight, bias)
    out = torch.addmm(add, x, weight_t)
    return out if bias is None else out + bias


def _lin_spec(conv: nn.Module) -> tuple:
    """``(weight [C', C], bias, weight.t())`` of a 1x1 ``Conv1d`` (views of its parameters)."""
    weight = conv.weight[:, :, 0]
    return weight, conv.bias, weight.t()


def _prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.prelu(x, weight) if weight.numel() == 1 else torch.where(x >= 0, x, x * weight)


def _norm_spec(norm: nn.Module) -> tuple:
    """What :func:`_norm` needs of a cLN (its parameters) or a BatchNorm (the module: its
    running statistics are buffers, which ``.to()`` replaces)."""
    if isinstance(norm, ChannelNorm):
        return (norm.weight[:, 0], norm.bias[:, 0], norm.eps)
    return (norm,)


def _norm(x: torch.Tensor, spec: tuple) -> torch.Tensor:
    """cLN or eval BatchNorm (:func:`_norm_spec`) on channels-last rows ``x [B l, C]``."""
    if len(spec) == 3:
        weight, bias, eps = spec
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    norm = spec[0]
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
        return _lin(x, fusion.audio_proj) + _lin(v, fusion.visual_proj)
    return torch.addcmul(x + _lin(v, fusion.beta), x, _lin(v, fusion.gamma))


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
        self._cache = {"plan": None, "anchor": None, "ptr": None}  # (a dict: not registered)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """Per block ``r{r}b{x}``: zeros ``[batch, (P - 1) d, H]`` (the left padding)."""
        return {key: torch.zeros(batch, pad, block.depthwise.in_channels, device=device,
                                 dtype=dtype) for key, block, pad in self.keys}

    def _make_plan(self) -> list:
        """Per block the tensors (views of the parameters, shaped for the step) and sizes
        its step uses, gathered once: module attribute look-ups and reshaping views cost
        more than the small products themselves. Kept while the separator's first parameter
        is the same tensor with the same storage (``load_state_dict`` copies in place;
        ``.to()`` gives new storage: made again); never kept while ``torch.export`` or
        ``torch.compile`` trace (their parameters are stand-ins). Replacing single
        parameter objects of a streamed model is not followed: make a new stepper."""
        plan = []
        for key, block, pad in self.keys:
            skip = block.skip_conv
            plan.append((key, pad, block.depthwise.dilation[0], _lin_spec(block.conv_in),
                         block.act_in.weight, _norm_spec(block.norm_in),
                         block.depthwise.weight[:, 0], block.depthwise.bias,
                         block.act_dw.weight, _norm_spec(block.norm_dw),
                         _lin_spec(block.res_conv), None if skip is None else _lin_spec(skip)))
        return plan

    def step(self, state: dict, feats: torch.Tensor, vis: torch.Tensor):
        """feats ``[B, N, l]``, vis ``[B, Dv, l]`` -> (final mask ``[B, N, l]``, new state)."""
        if any(m.training for m in self._batchnorms):
            raise ValueError("TCNSeparator: stream in eval mode (call .eval() on the model): "
                             "BatchNorm in train mode uses the statistics of each chunk")
        sep = self.separator
        cache = self._cache
        anchor = sep.bottleneck.weight
        if torch.compiler.is_compiling():  # tracing: the parameters are stand-ins
            plan = self._make_plan()
        elif cache["anchor"] is anchor and cache["ptr"] == anchor.data_ptr():
            plan = cache["plan"]
        else:
            plan = cache["plan"] = self._make_plan()
            cache["anchor"], cache["ptr"] = anchor, anchor.data_ptr()
        batch, _, frames = feats.shape
        # channels-last frames of the batch as rows [B l, C]: 1x1 convs are single products
        x = feats.transpose(1, 2).reshape(batch * frames, -1)
        x = _lin(_norm(x, _norm_spec(sep.in_norm)), sep.bottleneck)
        v = vis.transpose(1, 2).reshape(batch * frames, -1)
        new, skip_sum, blocks = {}, None, iter(plan)
        for r in range(sep.num_repeats):
            if r < len(sep.fusions):
                x = _fuse(sep.fusions[r], x, v)
                if not isinstance(sep.fusion_projs[r], nn.Identity):
                    x = _lin(x, sep.fusion_projs[r])
            for _ in range(sep.num_blocks):
                key, pad, dil, w_in, a_in, n_in, w_dw, b_dw, a_dw, n_dw, w_res, w_skip = \
                    next(blocks)
                y = _norm(_prelu(_lin(x, w_in), a_in), n_in).view(batch, frames, -1)
                if pad:
                    y = torch.cat((state[key], y), dim=1)
                    new[key] = y[:, y.shape[1] - pad:]
                else:
                    new[key] = state[key]
                # the depthwise conv: the P taps of each frame (an unfolded view) x weights
                y = (y.unfold(1, pad + 1, 1)[..., ::dil] * w_dw).sum(-1)
                if b_dw is not None:
                    y = y + b_dw
                y = _norm(_prelu(y.reshape(batch * frames, -1), a_dw), n_dw)
                if w_skip is not None:
                    skip_sum = _lin(y, w_skip, skip_sum)
                x = _lin(y, w_res, x)
        head = skip_sum if sep.skip else x
        mask = self._mask_act(_lin(_prelu(head, sep.mask_prelu.weight), sep.mask_conv))
        return mask.view(batch, frames, -1).transpose(1, 2), new

    forward = step
