"""A model folder is data: loading it checks it and runs none of its code.

- Weights are read with ``torch.load(..., weights_only=True)`` (:func:`load_weights`): a
  pickle that would run code (``__reduce__`` naming a function) is refused before anything in
  it runs; a missing, empty, truncated or otherwise unreadable file is a
  :class:`ModelLoadError` naming it and saying what to do.
- A ``files:`` manifest (``{name: {size, sha256}}``: ``model.yaml`` of an exported folder,
  ``CKPT.yaml`` of a checkpoint) is checked before loading (:func:`check_manifest`): a file
  changed after it was written is refused instead of loaded with altered weights.
- ``model.yaml`` may only name registered plugins (:func:`check_types`): a ``type`` given as
  an import path would import (run) that module, so it needs the caller's explicit trust
  (``avse-extract --trust_model_code``).
- Of an experiment's checkpoints (``save/CKPT+*``) only complete ones are used
  (:func:`checkpoint_candidates`; ``avse.checkpoints.checkpoint_problem`` when it exists).

A leaf under :mod:`avse.models.io` (which re-exports :class:`ModelLoadError`).
"""
from __future__ import annotations

import logging
import os

import yaml

from avse.safe_io import manifest_problem

logger = logging.getLogger("avse.models.io")

SLOT_KINDS = ("audio_encoder", "visual_encoder", "separator", "fusion", "decoder")
CKPT_META = "CKPT.yaml"
TRUST_HINT = ("model.yaml is data: a model folder may only name registered plugins; to let it "
              "import the class it names (this runs that module's code), pass "
              "--trust_model_code (trust_code=True) only if you trust the folder")


class ModelLoadError(RuntimeError):
    """A model folder or checkpoint is missing, incomplete, altered, unsafe, or does not match
    the config."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()] or [type(err).__name__]
    for ln in lines:  # torch's weights-only error: the line that names the refused global
        if "Unsupported" in ln or "WeightsUnpickler error" in ln:
            return ln.strip()[:200]
    return lines[0].strip()[:200]


def check_manifest(folder: str, manifest, where: str) -> None:
    """ModelLoadError unless every file ``manifest`` lists (``where``: the file that holds
    it) is in ``folder`` with its size and sha256. None: nothing to check (older folders)."""
    if manifest is None:
        return
    problem = manifest_problem(folder, manifest)
    if problem:
        raise ModelLoadError(f"{problem} (files listed in {os.path.join(folder, where)}): the "
                             "folder is incomplete or was altered; copy it again")


def load_weights(path: str):
    """``torch.load(path, map_location="cpu", weights_only=True)``, or ModelLoadError."""
    import pickle

    import torch

    if not os.path.lexists(path):
        raise ModelLoadError(f"{path} not found: the model folder is incomplete; copy it again "
                             "or export the model again")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: not a file (a folder or a broken link); restore it")
    if os.path.getsize(path) == 0:
        raise ModelLoadError(f"{path}: empty file (0 bytes): an interrupted copy or save; copy "
                             "it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "Unsupported" in str(err):
            raise ModelLoadError(f"{path}: refused: it holds Python objects that would run code "
                                 f"when loaded ({_first_line(err)}); a checkpoint must hold only "
                                 "tensors and plain data: export it again from a trusted "
                                 "training run") from None
        raise ModelLoadError(f"{path}: not a torch weights file ({_first_line(err)}): damaged "
                             "or not a checkpoint; copy it again") from None
    except Exception as err:  # RuntimeError (zip), EOFError, OSError, ...
        raise ModelLoadError(f"{path}: cannot be read as a torch weights file "
                             f"({type(err).__name__}: {_first_line(err)}): truncated or damaged; "
                             "copy it again or use another checkpoint") from None


def check_types(config: dict, folder: str) -> None:
    """ModelLoadError unless every plugin ``type`` of a ``model.yaml`` config is a registered
    short name (slot keys against their kind; nested specs may not name import paths)."""
    from avse.models import registry

    where = os.path.join(folder, "model.yaml") if os.path.isdir(folder) else folder
    for key in SLOT_KINDS:
        spec = config.get(key)
        if spec is None:
            continue
        name = spec.get("type") if isinstance(spec, dict) else spec
        if key == "decoder" and isinstance(spec, dict) and name is None:
            continue
        if not isinstance(name, str) or name not in registry.known(key):
            raise ModelLoadError(f"{where}: {key}{'.type' if isinstance(spec, dict) else ''} "
                                 f"{name!r} is not a registered {key} (known: "
                                 f"{', '.join(registry.known(key))}); {TRUST_HINT}")

    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "type" and path and (not isinstance(v, str) or "." in v):
                    raise ModelLoadError(f"{where}: {path}.type {v!r} names an import path, not "
                                         f"a registered plugin; {TRUST_HINT}")
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    walk(config, "")


def _problem(ckpt_dir: str) -> str | None:
    """Why a checkpoint folder is not complete (None: complete): the lead's
    ``avse.checkpoints.checkpoint_problem`` when it exists, else our own check of
    ``CKPT.yaml`` (readable; its ``files:`` manifest when it has one) and ``model.ckpt``."""
    try:
        from avse.checkpoints import checkpoint_problem
    except ImportError:
        checkpoint_problem = None
    if checkpoint_problem is not None:
        return checkpoint_problem(ckpt_dir, required=("model.ckpt",))
    try:
        with open(os.path.join(ckpt_dir, CKPT_META)) as f:
            meta = yaml.safe_load(f)
        if not isinstance(meta, dict):
            return f"{CKPT_META} is not a mapping"
        check_manifest(ckpt_dir, meta.get("files"), CKPT_META)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ModelLoadError) as err:
        return _first_line(err)
    if not os.path.isfile(os.path.join(ckpt_dir, "model.ckpt")):
        return "model.ckpt not found"
    return None


def _meta(ckpt_dir: str) -> dict:
    try:
        with open(os.path.join(ckpt_dir, CKPT_META)) as f:
            meta = yaml.safe_load(f)
        return meta if isinstance(meta, dict) else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}


def checkpoint_candidates(save_folder: str, key: str = "si_sdr") -> list:
    """The complete ``CKPT+*`` folders of ``save_folder``, best ``key`` first (then the most
    recent); incomplete ones are skipped with a warning. ModelLoadError when none is left."""
    names = sorted(os.listdir(save_folder)) if os.path.isdir(save_folder) else []
    ranked, skipped = [], []
    for name in names:
        path = os.path.join(save_folder, name)
        if not name.startswith("CKPT") or not os.path.isdir(path):
            continue  # hidden temporaries (.CKPT+...tmp) and other files
        problem = _problem(path)
        if problem:
            logger.warning("skipping incomplete checkpoint %s: %s", path, problem)
            skipped.append(f"{name} ({problem})")
            continue
        meta = _meta(path)
        score = meta.get(key, float("-inf"))
        score = score if isinstance(score, (int, float)) else float("-inf")
        stamp = meta.get("unixtime", 0)
        ranked.append((score, stamp if isinstance(stamp, (int, float)) else 0, name))
    if not ranked:
        parent = os.path.dirname(os.path.abspath(save_folder))
        why = f"; skipped: {', '.join(skipped)}" if skipped else ""
        raise ModelLoadError(f"no complete CKPT+* checkpoint in {save_folder}{why} (and no "
                             f"model.ckpt in {parent}): not a complete model folder")
    return [os.path.join(save_folder, name) for *_, name in sorted(ranked, reverse=True)]
