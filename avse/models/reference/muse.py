"""MuSE checkpoints of the SEANet repository (``TaoRuijie/SEANet``, ``model/muse.py``).

The reference trainer's state dict (``trainer.state_dict()``, keys ``model.*``; the bare
keys of the reference module are accepted too) <-> :class:`~avse.models.AVSEModel` (conv
encoder, MuSE's visual front: ``embedding`` visual encoder with ``out_dim=512,
hidden=None, norm="bn"``, ``muse`` separator with the ``concat`` fusion).

The reference numbers the Conv-TasNet blocks of repeat r ``tcn.r.1`` .. ``tcn.r.X`` (our
``repeats.r.0`` .. ``X-1``): its ``tcn.r.0`` is the repeat's input conv (``3C -> C`` over
``[speaker; x; visual]``), which is our ``speaker_projs.r`` and the concat fusion's
``audio_proj`` / ``visual_proj`` (its input channels, in that order). LayerNorm, gLN and
the decoder basis are reshaped.

Every reference key is renamed by the rules first, then checked against our model's keys
and shapes: problems are named as our keys (a reference key no rule maps, as given).

Example
-------
>>> import torch
>>> from avse.models import AVSEModel
>>> model = AVSEModel({"type": "conv", "out_channels": 32, "kernel_size": 40},
...                   {"type": "embedding", "out_dim": 512, "hidden": None,
...                    "num_blocks": 1, "norm": "bn"},
...                   {"type": "muse", "bottleneck": 16, "hidden": 32, "num_blocks": 2,
...                    "num_repeats": 2, "num_speakers": 7, "speaker_hidden": 16})
>>> ref = to_reference_state_dict(model.state_dict())
>>> tuple(ref["model.separator.tcn.1.0.weight"].shape)  # [C, 3C, 1]
(16, 48, 1)
>>> back = convert_reference_state_dict(ref, model=model)
>>> all(torch.equal(back[k], v) for k, v in model.state_dict().items())
True
"""
from __future__ import annotations

import torch

from avse.models.reference.rules import Reference, Rule, template_state

__all__ = ["reference_config", "convert_reference_state_dict", "to_reference_state_dict",
           "REFERENCE"]

_OURS, _BLOCK = "separator.repeats.{r}.{j}.", "separator.tcn.{r}.{j+1}.net."
REFERENCE = Reference("MuSE", [
    Rule("audio_encoder.conv.weight", "encoder.conv1d_U.weight"),
    Rule("decoder.deconv.weight", "decoder.basis_signals.weight", "basis"),
    Rule("visual_encoder.vtcn.blocks.{b}.net.{k}.{p}", "separator.visual_conv.{b}.net.{k}.{p}"),
    Rule("separator.in_norm.{p}", "separator.layer_norm.{p}", "vector"),
    Rule("separator.bottleneck.weight", "separator.bottleneck_conv1x1.weight"),
    Rule("separator.mask_conv.weight", "separator.mask_conv1x1.weight"),
    Rule("separator.visual_projs.{r}.weight", "separator.ve_conv1x1.{r}.weight"),
    Rule("separator.speaker_visual_projs.{r}.weight", "separator.ve_conv1x1_SE.{r}.weight"),
    Rule("separator.classifiers.{r}.{p}", "separator.audio_linear.{r}.{p}"),
    Rule("separator.speaker_nets.{r}.proj.weight", "separator.se_net.{r}.conv_proj.weight"),
    Rule("separator.speaker_nets.{r}.blocks.{j}.{k}.{p}", "separator.se_net.{r}.resnet.{j}.{k}.{p}"),
    Rule("separator.speaker_nets.{r}.acts.{j}.weight", "separator.se_net.{r}.prelu.{j}.weight"),
    Rule("separator.speaker_nets.{r}.out.{p}", "separator.se_net.{r}.conv.{p}"),
    Rule(_OURS + "conv_in.weight", _BLOCK + "0.weight"),
    Rule(_OURS + "act_in.weight", _BLOCK + "1.weight"),
    Rule(_OURS + "norm_in.weight", _BLOCK + "2.gamma", "gln"),
    Rule(_OURS + "norm_in.bias", _BLOCK + "2.beta", "gln"),
    Rule(_OURS + "depthwise.weight", _BLOCK + "3.net.0.weight"),
    Rule(_OURS + "act_dw.weight", _BLOCK + "3.net.1.weight"),
    Rule(_OURS + "norm_dw.weight", _BLOCK + "3.net.2.gamma", "gln"),
    Rule(_OURS + "norm_dw.bias", _BLOCK + "3.net.2.beta", "gln"),
    Rule(_OURS + "res_conv.weight", _BLOCK + "3.net.3.weight"),
    Rule(("separator.speaker_projs.{r}.weight", "separator.fusions.{r}.audio_proj.weight",
          "separator.fusions.{r}.visual_proj.weight"), "separator.tcn.{r}.0.weight", "cat1"),
], needs="the concat fusion", bare_ok=True, check="ours")


def reference_config(state: dict | None = None) -> dict:
    """``AVSEModel`` keyword arguments of the reference MuSE (conv encoder 256 x 40, MuSE's
    visual front, the default separator, concat fusion). The number of training speakers
    is read from the classifier in ``state`` (a reference state dict) when there, else 800.
    """
    speakers = 800
    for key in ("model.separator.audio_linear.0.weight", "separator.audio_linear.0.weight"):
        t = (state or {}).get(key)
        if isinstance(t, torch.Tensor) and t.dim() == 2:
            speakers = int(t.shape[0])
            break
    return {"audio_encoder": {"type": "conv", "out_channels": 256, "kernel_size": 40},
            "visual_encoder": {"type": "embedding", "out_dim": 512, "hidden": None,
                               "norm": "bn"},
            "separator": {"type": "muse", "num_speakers": speakers},
            "fusion": "concat"}


def to_reference_state_dict(state: dict) -> dict:
    """Our AVSEModel state dict -> reference trainer keys (``model.*``): the inverse of
    :func:`convert_reference_state_dict` (needs the concat fusion). Raises ValueError naming
    keys that have no reference counterpart."""
    return REFERENCE.to_reference(state)


def convert_reference_state_dict(state: dict, model=None) -> dict:
    """Reference MuSE trainer ``state_dict()`` (keys ``model.*``) -> our AVSEModel keys.

    The repeat input convs ``tcn.r.0`` are split into ``speaker_projs.r`` and the concat
    fusion's ``audio_proj``/``visual_proj``; gLN/LayerNorm parameters and the decoder basis
    are reshaped. ``model``: the AVSEModel (or its state dict) to check against; default the
    reference configuration (:func:`reference_config` of ``state``, built on the meta
    device). Raises ValueError naming keys no rule maps, keys missing or left over against
    ``model``, and wrong shapes.
    """
    return REFERENCE.from_reference(state, template_state(model, reference_config(state)))
