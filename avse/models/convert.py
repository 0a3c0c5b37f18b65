"""Convert a checkpoint of the SEANet repository's trainer (``TaoRuijie/SEANet``) into an
exported AVSE model folder (``model.yaml`` + ``model.ckpt``).

Usage::

    avse-convert-seanet --arch {seanet,dprnn,muse,avsep} --checkpoint FILE --out DIR
    python tools/convert_seanet_checkpoint.py --arch dprnn --checkpoint dprnn.model --out DIR

The checkpoint is read with ``torch.load(..., weights_only=True)``: the trainer's
``state_dict()`` (keys ``model.*``), or such a dict nested under a ``"state_dict"`` or
``"model"`` key. It is converted by the architecture's ``convert_reference_state_dict``,
loaded strictly into the :class:`~avse.models.AVSEModel` of the reference configuration (the
specs of ``egs/voxceleb2/hparams/<arch>.yaml``) and written with
:func:`avse.models.io.save_model`, so that ``avse.models.load_model(DIR)`` and
``AVSEExtractor.from_hparams(source=DIR)`` load it. A missing, unexpected or wrongly shaped
key is named on stderr and the exit status is 2.
"""
from __future__ import annotations

import argparse
import sys

import torch

from avse.models.io import state_dict_problems

PROG = "avse-convert-seanet"
ARCHS = ("seanet", "dprnn", "muse", "avsep")


class ConversionError(ValueError):
    """The checkpoint cannot be converted (its message names the offending keys)."""


def seanet_reference_config() -> dict:
    """AVSEModel specs of the reference SEANet (as ``egs/voxceleb2/hparams/seanet.yaml``)."""
    return {"audio_encoder": {"type": "conv", "out_channels": 256, "kernel_size": 40},
            "visual_encoder": {"type": "embedding"},
            "separator": {"type": "seanet", "bottleneck": 64, "hidden": 128, "chunk_size": 100,
                          "num_layers": 6, "num_heads": 4},
            "fusion": {"type": "concat", "align": "linear"}}


def reference_config(arch: str, state: dict | None = None) -> dict:
    """AVSEModel specs of the reference ``arch`` (the egs yaml's). For MuSE the number of
    training speakers is read from the classifier in ``state`` when there (default 800)."""
    from avse.models.separators import avsep, dprnn, muse

    if arch == "seanet":
        return seanet_reference_config()
    if arch == "dprnn":
        return dprnn.reference_config()
    if arch == "avsep":
        return avsep.reference_config()
    if arch == "muse":
        speakers = 800
        for key in ("model.separator.audio_linear.0.weight", "separator.audio_linear.0.weight"):
            t = (state or {}).get(key)
            if isinstance(t, torch.Tensor) and t.dim() == 2:
                speakers = int(t.shape[0])
                break
        return muse.reference_model_config(num_speakers=speakers)
    raise ConversionError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")


def _converter(arch: str):
    from avse.models.separators import avsep, dprnn, muse, seanet

    return {"seanet": seanet.convert_reference_state_dict,
            "dprnn": dprnn.convert_reference_state_dict,
            "muse": muse.convert_reference_state_dict,
            "avsep": avsep.convert_reference_state_dict}[arch]


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


_TO_REFERENCE = {"seanet": ("seanet", "to_reference_state_dict"),
                 "dprnn": ("dprnn", "to_reference_state_dict"),
                 "muse": ("muse", "to_reference_state_dict"),
                 "avsep": ("avsep", "convert_to_reference_state_dict")}


def expected_reference_shapes(arch: str, config: dict) -> dict:
    """Reference key (``model.*``) -> shape of the reference checkpoint of the AVSEModel
    built from ``config`` (the architecture's inverse converter on a meta-device model)."""
    import importlib

    from avse.models.avse_model import AVSEModel

    module, name = _TO_REFERENCE[arch]
    inverse = getattr(importlib.import_module(f"avse.models.separators.{module}"), name)
    with torch.device("meta"):
        template = AVSEModel(**config).state_dict()
    return {k: tuple(v.shape) for k, v in inverse(template).items()}


def _with_prefix(state: dict) -> dict:
    """Bare reference keys (the reference module's own ``state_dict()``) get ``model.``."""
    if any(str(k).startswith("model.") for k in state):
        return dict(state)
    return {f"model.{k}": v for k, v in state.items()}


def _problems(own: dict, state: dict) -> list:
    """The key problems of ``state`` against the shapes ``own`` (key -> shape)."""
    return state_dict_problems(own, state)


def _check_against(model, state: dict, arch: str) -> None:
    problems = _problems({k: tuple(v.shape) for k, v in model.state_dict().items()}, state)
    if problems:
        raise ConversionError(f"the converted {arch} weights do not fit the reference "
                              f"{arch} model: " + "; ".join(problems))


def convert_checkpoint(arch: str, checkpoint: str, out: str):
    """Convert ``checkpoint`` (a reference ``arch`` trainer state dict) into the model folder
    ``out``; returns the loaded model. Raises :class:`ConversionError` naming bad keys."""
    from avse.models.avse_model import AVSEModel
    from avse.models.io import save_model

    if arch not in ARCHS:
        raise ConversionError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    state = _with_prefix(load_checkpoint(checkpoint))
    config = reference_config(arch, state)
    problems = _problems(expected_reference_shapes(arch, config), state)
    if problems:
        raise ConversionError(f"{checkpoint} is not a reference {arch} checkpoint of the "
                              f"published size: " + "; ".join(problems))
    try:
        ours = _converter(arch)(state)
    except ValueError as err:
        raise ConversionError(f"{checkpoint}: {err}") from None
    model = AVSEModel(**config)
    _check_against(model, ours, arch)
    model.load_state_dict(ours, strict=True)
    save_model(model.eval(), out)
    return model


def main(argv=None) -> int:
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
