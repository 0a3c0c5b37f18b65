"""SEANet checkpoints of the SEANet repository (``TaoRuijie/SEANet``, ``model/seanet.py``).

The reference trainer's state dict (``trainer.state_dict()``, every key under ``model.``)
<-> :class:`~avse.models.AVSEModel` (conv encoder, ``embedding`` visual encoder, ``seanet``
separator with the ``concat`` fusion). The front is AV-DPRNN's
(:data:`avse.models.reference.dprnn.FRONT_RULES`); then the speech and noise branches
``rnn_s`` / ``rnn_n`` (our ``speech_blocks`` / ``noise_blocks``), the cross blocks, the
mask head ``adder`` and the decoder.

Cross blocks: the reference's block i + 1 is our block i (the reference builds R blocks
and never uses its first one, which we do not build: :func:`to_reference_state_dict` fills
it with zeros, :func:`convert_reference_state_dict` drops it). Its within-chunk attention
is called ``inter_cross`` (our ``intra_attn``) and the across-chunk one ``intra_cross``;
its branch 1 is our speech branch ``s`` and 2 the noise branch ``n``; its q/k/v Linears of
one branch are the four row blocks of our fused ``proj_s`` / ``proj_n``.

Example
-------
>>> import torch
>>> from avse.models import AVSEModel
>>> model = AVSEModel({"type": "conv", "out_channels": 32, "kernel_size": 40},
...                   {"type": "embedding", "out_dim": 16, "hidden": 32, "num_blocks": 1},
...                   {"type": "seanet", "bottleneck": 8, "hidden": 8, "chunk_size": 10,
...                    "num_layers": 3, "num_heads": 2}, fusion="concat")
>>> ref = to_reference_state_dict(model.state_dict())
>>> sorted({k.split(".")[3] for k in ref if k.startswith("model.separator.cross.")})
['0', '1', '2']
>>> back = convert_reference_state_dict(ref)  # sizes read from the shapes
>>> all(torch.equal(back[k], v) for k, v in model.state_dict().items())
True
"""
from __future__ import annotations

import re

import torch

from avse.models.reference.dprnn import FRONT_RULES, head_rules
from avse.models.reference.rules import Reference, Rule, template_state
from avse.models.separators.seanet import CrossBlock

__all__ = ["reference_config", "convert_reference_state_dict", "to_reference_state_dict",
           "REFERENCE"]


def _cross_rules() -> list:
    rules = []
    for ours, theirs in (("intra", "inter"), ("inter", "intra")):
        for branch, b in (("s", "1"), ("n", "2")):
            o, r = f"separator.cross.{{i}}.{ours}_", f"separator.cross.{{i+1}}.{theirs}_"
            qkv = tuple(f"{r}cross.linear_{x}.{{p}}" for x in (f"q{b}_self", f"q{b}", f"k{b}",
                                                                f"v{b}"))
            rules += [Rule(f"{o}norm_{branch}.{{p}}", f"{r}norm_{branch}.{{p}}"),
                      Rule(f"{o}attn.proj_{branch}.{{p}}", qkv, "cat0"),
                      Rule(f"{o}attn.out_{branch}.{{p}}", f"{r}cross.linear_o{b}.{{p}}"),
                      Rule(f"{o}attn.norm_{branch}.{{p}}", f"{r}cross.norm{b}.{{p}}")]
    return rules


def _dead_cross(ours: dict) -> dict:
    """The reference's unused first cross block (``separator.cross.0.*``, keys without the
    prefix): zeros (BatchNorm variances 1); it never affects the reference's output."""
    bottleneck = ours["separator.bottleneck.weight"]
    out_s = ours.get("separator.cross.0.intra_attn.out_s.weight")
    attn_dim = out_s.shape[1] if out_s is not None else 4 * bottleneck.shape[0]
    with torch.device("meta"):
        block = CrossBlock(bottleneck.shape[0], 1, attn_dim)
    zeros = {}
    for key, v in block.state_dict().items():
        value = torch.ones if key.endswith("running_var") else torch.zeros
        dtype = bottleneck.dtype if v.is_floating_point() else v.dtype
        zeros[f"separator.cross.0.{key}"] = value(v.shape, dtype=dtype, device=bottleneck.device)
    # as our block 0 it lands on the reference's block 1: rename to its block 0
    return {k.replace("separator.cross.1.", "separator.cross.0.", 1): v
            for k, v in REFERENCE.convert(zeros).items()}


REFERENCE = Reference(
    "SEANet",
    FRONT_RULES + [Rule("separator.speech_blocks.{i}.{m}.{p}", "separator.rnn_s.{i}.{m}.{p}"),
                   Rule("separator.noise_blocks.{i}.{m}.{p}", "separator.rnn_n.{i}.{m}.{p}")]
    + _cross_rules() + head_rules("adder", "decoder"),
    needs="the conv encoder, the embedding visual encoder and the seanet separator with the "
          "concat fusion",
    extra=_dead_cross)


def reference_config(state: dict | None = None) -> dict:
    """AVSEModel arguments of the reference SEANet at its published size (as
    ``egs/voxceleb2/hparams/seanet.yaml``): conv encoder N=256, L=40; B=64, H=128, K=100,
    R=6, 4 attention heads; the concat fusion with linear upsampling. (``state`` is not
    read; :func:`convert_reference_state_dict` reads the sizes of a checkpoint itself.)"""
    return {"audio_encoder": {"type": "conv", "out_channels": 256, "kernel_size": 40},
            "visual_encoder": {"type": "embedding"},
            "separator": {"type": "seanet", "bottleneck": 64, "hidden": 128, "chunk_size": 100,
                          "num_layers": 6, "num_heads": 4},
            "fusion": {"type": "concat", "align": "linear"}}


def to_reference_state_dict(state: dict) -> dict:
    """Our AVSEModel state dict -> the reference trainer's (keys under ``model.``).

    The inverse of :func:`convert_reference_state_dict`; the reference's unused first cross
    block is filled with zeros (unit BatchNorm variances).
    """
    return REFERENCE.to_reference(state)


def _count(ref: dict, pattern: str) -> int:
    """Distinct indices matched by ``pattern`` (one group) in the keys of ``ref``."""
    return len({m.group(1) for k in ref if (m := re.match(pattern, k))})


def _infer_config(ref: dict) -> dict:
    """AVSEModel specs of the reference checkpoint ``ref`` (keys without the prefix)."""
    need = ["encoder.conv1d_U.weight", "separator.bottleneck_conv1x1.weight",
            "separator.v_ds.weight", "separator.v_conv.0.net.2.weight",
            "separator.rnn_s.0.intra_rnn.weight_hh_l0"]
    missing = [REFERENCE.prefix + k for k in need if k not in ref]
    if missing:
        raise ValueError(f"not a reference SEANet state dict: missing keys {', '.join(missing)}")
    n, _, win = ref["encoder.conv1d_U.weight"].shape
    bneck = ref["separator.bottleneck_conv1x1.weight"].shape[0]
    dv, emb = ref["separator.v_ds.weight"].shape
    vhidden = ref["separator.v_conv.0.net.2.weight"].shape[0]
    hidden = ref["separator.rnn_s.0.intra_rnn.weight_hh_l0"].shape[1]
    layers = _count(ref, r"separator\.rnn_s\.(\d+)\.")
    vblocks = _count(ref, r"separator\.v_conv\.(\d+)\.")
    q = ref.get("separator.cross.0.inter_cross.linear_q1.weight")
    attn_dim = q.shape[0] if q is not None else 4 * bneck
    return {"audio_encoder": {"type": "conv", "out_channels": n, "kernel_size": win},
            "visual_encoder": {"type": "embedding", "in_dim": emb, "out_dim": dv,
                               "hidden": vhidden, "num_blocks": vblocks},
            "separator": {"type": "seanet", "bottleneck": bneck, "hidden": hidden,
                          "num_layers": layers, "num_heads": 1, "attn_dim": attn_dim},
            "fusion": {"type": "concat"}}


def convert_reference_state_dict(state: dict, model=None) -> dict:
    """A reference SEANet trainer state dict (keys ``model.*``) -> the state dict of ``model``
    (an AVSEModel or its state dict; default the AVSEModel whose sizes are read from the
    checkpoint's shapes: conv encoder, ``embedding`` visual encoder, ``seanet`` separator
    with the ``concat`` fusion).

    Shapes are transformed where the layouts differ (Linear ``[out, in]`` -> 1x1 conv
    ``[out, in, 1]``, gLN ``[1, C, 1]`` -> ``[C]``, decoder basis ``[L, N]`` ->
    ``[N, 1, L]``, q/k/v Linears concatenated, ``av_conv`` split into the fusion's audio and
    visual halves); the reference's unused first cross block is dropped. A missing,
    unexpected or wrongly shaped key raises ValueError naming it.
    Load the result with ``model.load_state_dict(..., strict=True)``.
    """
    if model is None:
        model = template_state(config=_infer_config(REFERENCE.strip(state)[0]))
    return REFERENCE.from_reference(state, template_state(model))
