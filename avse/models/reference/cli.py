"""Convert a checkpoint of the SEANet repository's trainer (``TaoRuijie/SEANet``) into an
exported AVSE model folder (``model.yaml`` + ``model.ckpt``).

Usage::

    avse-convert-seanet --arch {seanet,dprnn,muse,avsep} --checkpoint FILE --out DIR
                        [--frontend visual_frontend.pt [--preset lipread]]
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

With ``--frontend`` (the published deep-lip-reading ``visual_frontend.pt``, or a front-end
file of ours with 512-d features) the front-end is converted into ``DIR/frontend.pt`` (our
format, preset ``lipread`` for the published one) and named in ``model.yaml``'s
``inference`` section (:func:`avse.embed.install_frontend`), so that
``avse-extract --model DIR --video any.mp4 --out_dir OUT`` computes the model's lip
embeddings from each face track itself.
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


def convert_checkpoint(arch: str, checkpoint: str, out: str, frontend: str | None = None,
                       preset: str | None = None):
    """Convert ``checkpoint`` (a reference ``arch`` trainer state dict) into the model folder
    ``out``, with the front-end file ``frontend`` (and its crop ``preset``) when given;
    returns the loaded model. Raises :class:`ConversionError` naming bad keys or files."""
    from avse.embed import EmbedError, install_frontend, load, resolve_preset

    module = _module(arch)
    if frontend is not None:  # checked before anything is written
        try:
            fe = load(frontend)
            resolve_preset(fe, preset, frontend)
        except EmbedError as err:
            raise ConversionError(str(err)) from None
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
    in_dim = getattr(model.visual_encoder, "in_dim", None)
    if frontend is not None and fe.frame_dim != in_dim:
        raise ConversionError(f"{frontend}: the front-end gives {fe.frame_dim}-d features but "
                              f"the {arch} model reads {in_dim}-d embeddings")
    save_model(model.eval(), out)
    if frontend is not None:
        try:
            install_frontend(out, frontend, preset)
        except EmbedError as err:
            raise ConversionError(str(err)) from None
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
    parser.add_argument("--frontend", help="the visual front-end that made the model's lip "
                        "embeddings (the published visual_frontend.pt, or ours): written into "
                        "the folder so that avse-extract reads any video")
    parser.add_argument("--preset", help="the front-end's crop preset (default: the file's; "
                        "'lipread' for the published one)")
    args = parser.parse_args(argv)
    if args.preset and not args.frontend:
        parser.error("--preset needs --frontend")
    try:
        model = convert_checkpoint(args.arch, args.checkpoint, args.out, args.frontend,
                                   args.preset)
    except ConversionError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in model.parameters())
    print(f"{PROG}: {args.arch} ({params / 1e6:.2f} M parameters) -> {args.out}"
          + (f" with the front-end {args.frontend}" if args.frontend else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
