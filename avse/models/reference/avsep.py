"""AV-Sepformer checkpoints of the SEANet repository (``TaoRuijie/SEANet``, ``model/avsep.py``).

The reference trainer's state dict (``trainer.state_dict()``: keys ``model.AudioEncoder.*``,
``model.Separator.*``, ...; the bare ``Cross_Sepformer`` keys without ``model.`` are
accepted as well) <-> the :class:`~avse.models.AVSEModel` of :func:`reference_config`.

The reference's 1x1 convs are our Linears (``conv1d``/``conv2d`` reshapes), its frozen
1-D encoding table is ``[T, 1, D]`` (ours ``[T, D]``), its visual projection is the last
module of its ``visual_conv`` stack (after the V-TCN blocks; our ``separator.visual_proj``)
and ``nn.MultiheadAttention``'s packed ``in_proj`` is our ``attn.qkv`` (self-attention) or
the rows of our ``attn.q`` and ``attn.kv`` (the cross-attention layers). Problems are named
by the reference keys, without the ``model.`` prefix.

Example
-------
>>> import torch
>>> from avse.models import AVSEModel
>>> with torch.device("meta"):
...     model = AVSEModel(**reference_config())
>>> ref = to_reference_state_dict(model.state_dict())
>>> tuple(ref["model.Separator.dual_mdl.0.inter_mdl.mdl.cross_attention_layer."
...           "self_attn.in_proj_weight"].shape)
(768, 256)
"""
from __future__ import annotations

import re

from avse.models.reference.rules import Reference, Rule, template_state

__all__ = ["reference_config", "convert_reference_state_dict", "to_reference_state_dict",
           "REFERENCE"]

_LAYERS = (  # our transformer layer prefix, the reference's
    ("separator.blocks.{b}.intra.{l}.", "Separator.dual_mdl.{b}.intra_mdl.mdl.layers.{l}."),
    ("separator.blocks.{b}.cross.", "Separator.dual_mdl.{b}.inter_mdl.mdl.cross_attention_layer."),
    ("separator.blocks.{b}.inter.{l}.",
     "Separator.dual_mdl.{b}.inter_mdl.mdl.transformer_layers.{l}."),
)
_IN_LAYER = (("norm1", "norm1"), ("norm2", "norm2"), ("ff1", "linear1"), ("ff2", "linear2"),
             ("attn.out", "self_attn.out_proj"))
_FIXED = [
    Rule("audio_encoder.conv.weight", "AudioEncoder.conv1d.weight"),
    Rule("decoder.deconv.weight", "AudioDecoder.weight"),
    Rule("visual_encoder.vtcn.blocks.{b}.net.{k}.{p}", "Separator.visual_conv.{b}.net.{k}.{p}"),
    Rule("separator.norm.{p}", "Separator.norm.{p}"),
    Rule("separator.bottleneck.weight", "Separator.conv1d.weight", "conv1d"),
    Rule("separator.blocks.{b}.inv_freq", "Separator.dual_mdl.{b}.pos2d.penc.inv_freq"),
    Rule("separator.blocks.{b}.intra_pe", "Separator.dual_mdl.{b}.intra_mdl.pos_enc.pe", "pe"),
    Rule("separator.blocks.{b}.{path}_norm.{p}", "Separator.dual_mdl.{b}.{path}_norm.{p}"),
    Rule("separator.mask_prelu.weight", "Separator.prelu.weight"),
    Rule("separator.mask_conv.weight", "Separator.conv2d.weight", "conv2d"),
    Rule("separator.mask_conv.bias", "Separator.conv2d.bias"),
    Rule("separator.output.weight", "Separator.output.0.weight", "conv1d"),
    Rule("separator.output.bias", "Separator.output.0.bias"),
    Rule("separator.output_gate.weight", "Separator.output_gate.0.weight", "conv1d"),
    Rule("separator.output_gate.bias", "Separator.output_gate.0.bias"),
    Rule("separator.end_conv.weight", "Separator.end_conv1x1.weight", "conv1d"),
] + [Rule(f"{o}{a}.{{p}}", f"{r}{b}.{{p}}") for o, r in _LAYERS for a, b in _IN_LAYER] + [
    Rule(f"{o}attn.qkv.{{p}}", f"{r}self_attn.in_proj_{{p}}") for o, r in _LAYERS] + [
    Rule((f"{o}attn.q.{{p}}", f"{o}attn.kv.{{p}}"), f"{r}self_attn.in_proj_{{p}}", "cat0")
    for o, r in _LAYERS]


def _rules(keys) -> list:
    """The rules for our ``keys``: the reference's ``visual_conv`` holds the visual
    projection after the V-TCN blocks, so its index is our number of blocks."""
    found = [int(m.group(1)) for k in keys
             if (m := re.match(r"visual_encoder\.vtcn\.blocks\.(\d+)\.", k))]
    blocks = max(found) + 1 if found else 0
    return [Rule("separator.visual_proj.weight", f"Separator.visual_conv.{blocks}.weight",
                 "conv1d"),
            Rule("separator.visual_proj.bias", f"Separator.visual_conv.{blocks}.bias")] + _FIXED


REFERENCE = Reference("AV-Sepformer", _rules, bare_ok=True,
                      needs="a model built from avse.models.reference.avsep.reference_config()")


def reference_config(state: dict | None = None) -> dict:
    """AVSEModel arguments of the reference AV-Sepformer (21.73 M parameters).

    Conv encoder/decoder N=256, L=16 (8-sample hop); the 512-d lip-embedding front of five
    MuSE-form V-TCN blocks (BatchNorm, no projection; the 512 -> 256 map is the separator's
    ``visual_proj``); the separator's defaults; no extra fusion. (``state`` is not read:
    every size is the published one.)
    """
    return {"audio_encoder": {"type": "conv", "out_channels": 256, "kernel_size": 16},
            "visual_encoder": {"type": "embedding", "in_dim": 512, "out_dim": 512,
                               "hidden": None, "num_blocks": 5, "norm": "bn"},
            "separator": {"type": "avsep"},
            "fusion": None}


def to_reference_state_dict(state: dict, prefix: str = "model.") -> dict:
    """Our AVSEModel state dict -> the reference trainer's (keys ``prefix + ...``).

    The inverse of :func:`convert_reference_state_dict` (split query / key-value
    projections of the cross-attention layers are packed back into ``in_proj``).
    """
    return REFERENCE.to_reference(state, prefix)


def convert_reference_state_dict(state: dict, model=None) -> dict:
    """Reference trainer ``state_dict()`` (``model.*`` keys) -> our AVSEModel state dict.

    Arguments
    ---------
    state : dict
        the reference checkpoint (``trainer.state_dict()``: keys ``model.AudioEncoder.*``,
        ``model.Separator.*``, ...; the bare ``Cross_Sepformer`` keys without ``model.``
        are accepted as well).
    model : AVSEModel or its state dict, optional
        the target model whose keys and shapes are checked; default a model built from
        :func:`reference_config`.

    Raises ValueError naming every missing, unexpected or wrongly shaped reference key.
    ``nn.MultiheadAttention``'s packed ``in_proj`` maps to ``attn.qkv`` (self-attention) or
    is split into ``attn.q`` / ``attn.kv`` (the cross-attention layers).
    """
    return REFERENCE.from_reference(state, template_state(model, reference_config()))
