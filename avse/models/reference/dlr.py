"""The published deep-lip-reading visual front-end (``visual_frontend.pt``) <-> our
:class:`~avse.models.frontend_nets.DLRFrontend` (front-end ``"dlr"``).

The published state dict is the module's own (no trainer prefix): ``frontend3D.0.weight``
(Conv3d), ``frontend3D.1.*`` (BatchNorm3d) and, per stage k = 1..4,
``resnet.layer{k}.{conv1a,bn1a,conv2a,downsample,outbna,conv1b,bn1b,conv2b,outbnb}.*``. Its
layers create the 1x1 ``downsample`` conv even in layer 1 (stride 1), where it is never used:
we drop it on the way in and write zeros on the way out. A state dict saved from a wrapper
(``module.`` of DataParallel, or a bigger model holding the front-end) is accepted: the
prefix in front of ``frontend3D.0.weight`` is stripped from every key.

=================================  ===========================================
ours                               published
=================================  ===========================================
``stem.conv.weight``               ``frontend3D.0.weight``
``stem.bn.*``                      ``frontend3D.1.*``
``stages.{i}.a.conv1.*``           ``resnet.layer{i+1}.conv1a.*``
``stages.{i}.a.bn1.*``             ``resnet.layer{i+1}.bn1a.*``
``stages.{i}.a.conv2.*``           ``resnet.layer{i+1}.conv2a.*``
``stages.{i}.a.bn_out.*``          ``resnet.layer{i+1}.outbna.*``
``stages.{i}.shortcut.*``          ``resnet.layer{i+1}.downsample.*``
``stages.{i}.b.*`` (same names)    ``resnet.layer{i+1}.{conv1b,bn1b,conv2b,outbnb}.*``
=================================  ===========================================

Example
-------
>>> from avse.models.frontend_nets import DLRFrontend
>>> ours = DLRFrontend().state_dict()
>>> theirs = to_reference_state_dict(ours)
>>> theirs["resnet.layer2.outbnb.running_var"].shape
torch.Size([128])
>>> back = convert_reference_state_dict({"module." + k: v for k, v in theirs.items()})
>>> all(torch.equal(back[k], v) for k, v in ours.items())
True
"""
from __future__ import annotations

import torch

from avse.models.frontend_nets import DLRFrontend
from avse.models.io import key_list
from avse.models.reference.rules import Reference, Rule

__all__ = ["REFERENCE", "RULES", "reference_config", "is_reference_state_dict", "unwrap",
           "convert_reference_state_dict", "to_reference_state_dict"]

ANCHOR = "frontend3D.0.weight"
UNUSED = "resnet.layer1.downsample.weight"  # built by the published layer 1, never used
WRAPPERS = ("state_dict", "model_state_dict", "model", "net")

RULES = [Rule("stem.conv.weight", "frontend3D.0.weight"),
         Rule("stem.bn.{p}", "frontend3D.1.{p}"),
         Rule("stages.{i}.shortcut.{p}", "resnet.layer{i+1}.downsample.{p}")]
RULES += [Rule(f"stages.{{i}}.{unit}.{ours}.{{p}}", f"resnet.layer{{i+1}}.{theirs}{unit}.{{p}}")
          for unit in ("a", "b")
          for ours, theirs in (("conv1", "conv1"), ("bn1", "bn1"), ("conv2", "conv2"),
                               ("bn_out", "outbn"))]


def _unused(state: dict) -> dict:
    like = state["stem.conv.weight"]
    return {UNUSED: torch.zeros(64, 64, 1, 1, dtype=like.dtype, device=like.device)}


REFERENCE = Reference("deep-lip-reading front-end", RULES, needs="the 'dlr' front-end",
                      prefix="", bare_ok=True, extra=_unused)


def reference_config() -> dict:
    """What a published front-end is here: type, config, frame size and crop preset."""
    return {"type": "dlr", "config": {}, "frame_dim": DLRFrontend.frame_dim,
            "preset": DLRFrontend.preset}


def unwrap(state) -> tuple:
    """``(state dict, prefix)``: ``state`` out of a one-key wrapper dict (``state_dict``,
    ``model``, ...), and the prefix in front of its ``frontend3D.0.weight`` (``""`` when none);
    ValueError when it is not a dict of tensors holding that key."""
    while isinstance(state, dict) and len(state) == 1 and next(iter(state)) in WRAPPERS \
            and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict (a dict of tensors), got {type(state).__name__}")
    anchors = [k for k in state if isinstance(k, str) and k.endswith(ANCHOR)]
    if not anchors:
        raise ValueError(f"not a deep-lip-reading front-end state dict: no {ANCHOR} key "
                         f"(keys: {key_list(list(map(str, state)))})")
    return state, min(anchors, key=len)[:-len(ANCHOR)]


def is_reference_state_dict(state) -> bool:
    """Whether ``state`` looks like a published front-end state dict (any prefix): it holds
    ``frontend3D.0.weight`` and ``resnet.layer*`` keys under one prefix."""
    try:
        state, prefix = unwrap(state)
    except ValueError:
        return False
    return any(str(k).startswith(prefix + "resnet.layer") for k in state)


def convert_reference_state_dict(state, model=None) -> dict:
    """A published front-end state dict (wrapped or prefixed) -> our ``DLRFrontend``'s.

    ``model``: our front-end or its state dict (default: one built on the meta device).
    Missing ``num_batches_tracked`` buffers (state dicts of old PyTorch) are filled with 0.
    ValueError names missing, unexpected and wrongly shaped keys (published names). Load the
    result with ``load_state_dict(..., strict=True)``.
    """
    state, prefix = unwrap(state)
    stray = sorted(str(k) for k in state if not str(k).startswith(prefix))
    if stray:
        raise ValueError(f"cannot convert the deep-lip-reading front-end state dict; keys "
                         f"outside its prefix {prefix!r}: {key_list(stray)}")
    state = {k[len(prefix):]: v for k, v in state.items()}
    if not all(torch.is_tensor(v) for v in state.values()):
        bad = sorted(k for k, v in state.items() if not torch.is_tensor(v))
        raise ValueError(f"not a state dict of tensors: {key_list(bad)}")
    for key in [k for k in state if k.endswith(".running_mean")]:
        state.setdefault(key[:-len("running_mean")] + "num_batches_tracked",
                         torch.tensor(0, dtype=torch.long))
    if model is None:
        with torch.device("meta"):
            model = DLRFrontend()
    template = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    return REFERENCE.from_reference(state, template)


def to_reference_state_dict(state: dict) -> dict:
    """Our ``DLRFrontend`` state dict -> the published one (``resnet.layer1.downsample``
    written as zeros); ValueError names keys it cannot hold."""
    return REFERENCE.to_reference(dict(state))
