"""Convert a checkpoint of the SEANet repository's trainer (``TaoRuijie/SEANet``) into an
exported AVSE model folder (``model.yaml`` + ``model.ckpt``).

Usage::

    avse-convert-seanet --arch {seanet,dprnn,muse,avsep} --checkpoint FILE --out DIR
    python tools/convert_seanet_checkpoint.py --arch dprnn --checkpoint dprnn.model --out DIR

The checkpoint is read with ``torch.load(..., weights_only=True)``: the trainer's
``state_dict()`` (keys ``model.*``; bare keys get the prefix), or such a dict nested under a
``"state_dict"`` or ``"model"`` key. It is checked against the reference checkpoint of the
published size (:func:`expected_reference_shapes`), converted by the architecture's
``convert_reference_state_dict`` (:mod:`avse.models.reference`), loaded strictly into the
:class:`~avse.models.AVSEModel` of the reference configuration (the specs of
``egs/voxceleb2/hparams/<arch>.yaml``) and written with :func:`avse.models.io.save_model`,
so that ``avse.models.load_model(DIR)`` and ``AVSEExtractor.from_hparams(source=DIR)`` load
it. A missing, unexpected or wrongly shaped key is named on stderr and the exit status is 2.
"""
from __future__ import annotations

import argparse
import sys

import torch

from avse.models.avse_model import AVSEModel
from avse.models.io import save_model, state_dict_problems
from avse.models.reference import avsep, dprnn, muse, seanet

PROG = "avse-convert-seanet"
MODULES = {"seanet": seanet, "dprnn": dprnn, "muse": muse, "avsep": avsep}
ARCHS = tuple(MODULES)


class ConversionError(ValueError):
    """The checkpoint cannot be converted (its message names the offending keys)."""


def _module(arch: str):
    if arch not in MODULES:
        raise ConversionError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return MODULES[arch]


def reference_config(arch: str, state: dict | None = None) -> dict:
    """AVSEModel specs of the reference ``arch`` (the egs yaml's). For MuSE the number of
    training speakers is read from the classifier in ``state`` when there (default 800)."""
    return _module(arch).reference_config(state)


def load_checkpoint(path: str) -> dict:
    """The reference state dict in ``path`` (raw, or nested under "state_dict" / "model")."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except Exception as err:  # unpickling errors: not a weights-only torch file
        raise ConversionError(f"{path}: cannot be read with torch.load(weights_only=True): "
                              f"{err}") from None
    for nest in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(nest), dict):
            obj = obj[nest]
            break
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{path}: expected a state dict (or one under 'state_dict' / "
                              f"'model'), got {type(obj).__name__}")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ConversionError(f"{path}: not a state dict, entries that are not tensors: "
                              + ", ".join(bad[:8]))
    return obj


def expected_reference_shapes(arch: str, config: dict) -> dict:
    """Reference key (``model.*``) -> shape of the reference checkpoint of the AVSEModel
    built from ``config`` (the architecture's inverse converter on a meta-device model)."""
    with torch.device("meta"):
        template = AVSEModel(**config).state_dict()
    return {k: tuple(v.shape) for k, v in _module(arch).to_reference_state_dict(template).items()}


def _with_prefix(state: dict) -> dict:
    """Bare reference keys (the reference module's own ``state_dict()``) get ``model.``."""
    if any(str(k).startswith("model.") for k in state):
        return dict(state)
    return {f"model.{k}": v for k, v in state.items()}


def convert_checkpoint(arch: str, checkpoint: str, out: str):
    """Convert ``checkpoint`` (a reference ``arch`` trainer state dict) into the model folder
    ``out``; returns the loaded model. Raises :class:`ConversionError` naming bad keys."""
    module = _module(arch)
    state = _with_prefix(load_checkpoint(checkpoint))
    config = reference_config(arch, state)
    problems = state_dict_problems(expected_reference_shapes(arch, config), state)
    if problems:
        raise ConversionError(f"{checkpoint} is not a reference {arch} checkpoint of the "
                              f"published size: " + "; ".join(problems))
    model = AVSEModel(**config)
    try:
        ours = module.convert_reference_state_dict(state, model=model)
    except ValueError as err:
        raise ConversionError(f"{checkpoint}: {err}") from None
    problems = state_dict_problems(model.state_dict(), ours)
    if problems:
        raise ConversionError(f"the converted {arch} weights do not fit the reference "
                              f"{arch} model: " + "; ".join(problems))
    model.load_state_dict(ours, strict=True)
    save_model(model.eval(), out)
    return model


def main(argv=None) -> int:
    """The ``avse-convert-seanet`` command: 0 on success, 2 when the checkpoint cannot be
    converted (the reason on stderr) or the arguments are wrong."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert a TaoRuijie/SEANet trainer checkpoint into an AVSE "
                               "model folder (model.yaml + model.ckpt).")
    parser.add_argument("--arch", required=True, choices=ARCHS,
                        help="the reference backbone the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="the reference checkpoint file")
    parser.add_argument("--out", required=True, help="the model folder to write")
    args = parser.parse_args(argv)
    try:
        model = convert_checkpoint(args.arch, args.checkpoint, args.out)
    except ConversionError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in model.parameters())
    print(f"{PROG}: {args.arch} ({params / 1e6:.2f} M parameters) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
