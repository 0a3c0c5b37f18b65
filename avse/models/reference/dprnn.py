"""AV-DPRNN checkpoints of the SEANet repository (``TaoRuijie/SEANet``, ``model/dprnn.py``).

The reference trainer's state dict (``trainer.state_dict()``, every key under ``model.``)
<-> :class:`~avse.models.AVSEModel` (conv encoder, ``embedding`` visual encoder, ``dprnn``
separator with the ``concat`` fusion). Its layout is the one SEANet's extends
(:mod:`avse.models.reference.seanet`): the shared front (:data:`FRONT_RULES`: encoder,
visual front, norm, bottleneck, ``av_conv``), the speech branch ``rnn_s`` (our
``separator.blocks``), its mask head ``adder_s`` and decoder ``decoder_s``
(:func:`head_rules`).

Example
-------
>>> import torch
>>> from avse.models import AVSEModel
>>> model = AVSEModel(**reference_config())
>>> ref = to_reference_state_dict(model.state_dict())
>>> len(ref), tuple(ref["model.separator.av_conv.weight"].shape)
(203, (64, 320, 1))
>>> back = convert_reference_state_dict(ref)
>>> all(torch.equal(back[k], v) for k, v in model.state_dict().items())
True
"""
from __future__ import annotations

from avse.models.reference.rules import Reference, Rule, template_state

__all__ = ["reference_config", "convert_reference_state_dict", "to_reference_state_dict",
           "FRONT_RULES", "head_rules", "REFERENCE"]


def _is_norm(key: str, keys) -> bool:
    """Our V-TCN parameter ``key`` belongs to a norm: the convs have no bias."""
    return key.rpartition(".")[0] + ".bias" in keys


_VTCN, _VCONV = "visual_encoder.vtcn.blocks.{b}.net.{k}.", "separator.v_conv.{b}.net.{k}."
FRONT_RULES = [  # shared by the repository's AV-DPRNN and SEANet
    Rule("audio_encoder.conv.weight", "encoder.conv1d_U.weight"),
    Rule("visual_encoder.vtcn.proj.weight", "separator.v_ds.weight", "linear"),
    Rule(_VTCN + "weight", _VCONV + "gamma", "gln", when=_is_norm),
    Rule(_VTCN + "bias", _VCONV + "beta", "gln"),
    Rule(_VTCN + "weight", _VCONV + "weight"),
    Rule("separator.norm.weight", "separator.layer_norm.weight"),
    Rule("separator.norm.bias", "separator.layer_norm.bias"),
    Rule("separator.bottleneck.weight", "separator.bottleneck_conv1x1.weight"),
    Rule(("separator.fusion.audio_proj.weight", "separator.fusion.visual_proj.weight"),
         "separator.av_conv.weight", "cat1"),
]


def head_rules(adder: str, decoder: str) -> list:
    """The rules of the mask head and the decoder, which the reference names ``adder`` and
    ``decoder`` (``adder_s`` / ``decoder_s`` in AV-DPRNN, ``adder`` / ``decoder`` in SEANet)."""
    return [Rule("separator.mask_prelu.weight", f"separator.{adder}.prelu.weight"),
            Rule("separator.mask_conv.weight", f"separator.{adder}.mask_conv1x1.weight"),
            Rule("decoder.deconv.weight", f"{decoder}.basis_signals.weight", "basis")]


REFERENCE = Reference(
    "AV-DPRNN",
    FRONT_RULES + [Rule("separator.blocks.{i}.{m}.{p}", "separator.rnn_s.{i}.{m}.{p}")]
    + head_rules("adder_s", "decoder_s"),
    needs="the conv encoder, the embedding visual encoder and the dprnn separator with the "
          "concat fusion")


def reference_config(state: dict | None = None) -> dict:
    """AVSEModel arguments of the reference AV-DPRNN (4.12 M parameters), as in
    ``egs/voxceleb2/hparams/dprnn.yaml``: conv encoder/decoder N=256, L=40; the 512-d
    lip-embedding front (``v_ds`` 512 -> 256, five gLN V-TCN blocks of width 512); B=64,
    H=128, K=100, R=6; the concat fusion with linear upsampling of the visual stream.
    (``state`` is not read: every size is the published one.)"""
    return {"audio_encoder": {"type": "conv", "out_channels": 256, "kernel_size": 40},
            "visual_encoder": {"type": "embedding"},
            "separator": {"type": "dprnn", "bottleneck": 64, "hidden": 128, "chunk_size": 100,
                          "num_layers": 6, "padding": "reference"},
            "fusion": {"type": "concat", "align": "linear"}}


def to_reference_state_dict(state: dict) -> dict:
    """Our AVSEModel state dict -> the reference trainer's (keys under ``model.``); the
    inverse of :func:`convert_reference_state_dict`. ValueError names our keys the reference
    format cannot hold."""
    return REFERENCE.to_reference(state)


def convert_reference_state_dict(state: dict, model=None) -> dict:
    """A reference AV-DPRNN trainer state dict (keys ``model.*``) -> the state dict of
    ``model`` (an AVSEModel or its state dict; default the AVSEModel of
    :func:`reference_config`).

    Shapes are transformed where the layouts differ (Linear ``[out, in]`` -> 1x1 conv
    ``[out, in, 1]``, gLN ``[1, C, 1]`` -> ``[C]``, decoder basis ``[L, N]`` ->
    ``[N, 1, L]``, ``av_conv`` split into the fusion's audio and visual halves). A missing,
    unexpected or wrongly shaped key raises ValueError naming it. Load the result with
    ``model.load_state_dict(..., strict=True)``.
    """
    return REFERENCE.from_reference(state, template_state(model, reference_config()))
