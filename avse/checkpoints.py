"""Checkpoints that are complete or invisible, and the run state SpeechBrain does not save.

SpeechBrain's ``Checkpointer`` writes ``CKPT.yaml`` first and the parameter files after it,
and treats any ``CKPT+*`` folder holding that file as valid: a run killed inside a save
leaves a "valid" half checkpoint, and the next start loads it. :class:`Checkpointer` here
(a drop-in subclass, ``!new:avse.checkpoints.Checkpointer`` in the yaml; AVSEBrain upgrades a
plain SpeechBrain one) instead:

- writes every file into a hidden temporary folder ``.tmp-CKPT+...`` (not a checkpoint to
  anyone listing the folder), then ``CKPT.yaml`` last with a manifest of the files
  (``files: {name: {size, sha256}}``), fsyncs, and renames the folder into place; older
  checkpoints are deleted only after that rename (``save_and_keep_only``);
- on a failed write (disk full, file-size limit, I/O error) removes the temporary folder and
  raises :class:`CheckpointWriteError`, which names the folder, the cause and the previous
  checkpoint, still intact;
- skips, with one warning each, checkpoint folders that do not match their manifest
  (truncated, missing or altered files, an unreadable ``CKPT.yaml``): the previous complete
  checkpoint is loaded instead. Folders from SpeechBrain's own checkpointer (no manifest)
  are accepted when their ``CKPT.yaml`` reads and every recoverable has its file;
- removes temporary folders left by a killed save when it starts.

:class:`RunState` is a recoverable holding the random generators (torch, CUDA, numpy,
python; one file per rank) and the fault counters, so that a resumed run draws the same
random numbers as an uninterrupted one.
"""
from __future__ import annotations

import logging
import os
import random
import shutil

import numpy as np
import speechbrain as sb
import torch
import yaml
from speechbrain.utils.checkpoints import METAFNAME, mark_as_loader, mark_as_saver, \
    register_checkpoint_hooks
from speechbrain.utils.distributed import MainProcessContext, ddp_barrier, ddp_broadcast, \
    if_main_process

from avse.faults import fault_point
from avse.safe_io import file_manifest, manifest_problem

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous one is intact."""


def manifest(folder) -> dict:
    """``{file name: {size, sha256}}`` of the files in a checkpoint folder (not CKPT.yaml)."""
    return file_manifest(folder, [n for n in sorted(os.listdir(folder))
                                  if n != METAFNAME and os.path.isfile(os.path.join(folder, n))])


def read_meta(ckpt_dir) -> dict:
    """A checkpoint's ``CKPT.yaml`` as a dict (raises ValueError when it does not read)."""
    try:
        with open(os.path.join(ckpt_dir, METAFNAME), encoding="utf-8") as f:
            meta = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{METAFNAME} does not read ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{METAFNAME} is not a mapping")
    return meta


def checkpoint_problem(ckpt_dir, deep: bool = True, required=()) -> str | None:
    """Why the checkpoint folder ``ckpt_dir`` is not complete, or None when it is.

    Checks that ``CKPT.yaml`` reads and that every file of its manifest is there with its size
    (and, with ``deep``, its sha256). A folder without a manifest (SpeechBrain's checkpointer,
    older AVSE runs) passes when the files named in ``required`` (e.g. ``model.ckpt``) exist."""
    try:
        meta = read_meta(ckpt_dir)
    except ValueError as err:
        return str(err)
    files = meta.get("files")
    if files is None:
        missing = [n for n in required if not os.path.isfile(os.path.join(ckpt_dir, n))]
        return f"missing {', '.join(missing)}" if missing else None
    return manifest_problem(str(ckpt_dir), files, deep=deep)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


class Checkpointer(sb.utils.checkpoints.Checkpointer):
    """SpeechBrain's checkpointer with atomic saves and verified loads (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self):
        if not if_main_process() or not self.checkpoints_dir.is_dir():
            return
        for path in self.checkpoints_dir.iterdir():
            if path.name.startswith(TMP_PREFIX + sb.utils.checkpoints.CKPT_PREFIX):
                logger.warning("removing %s, left by a checkpoint save that did not finish", path)
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ saving
    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Write every recoverable into a hidden folder, then ``CKPT.yaml`` with the manifest,
        then rename the folder into place (all ranks call it, like SpeechBrain's)."""
        final = tmp = None
        if if_main_process():
            final = self._new_checkpoint_dirpath() if name is None \
                else self._custom_checkpoint_dirpath(name)
            tmp = final.with_name(TMP_PREFIX + final.name)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        final, tmp = ddp_broadcast((final, tmp), src=0)
        error = None
        try:
            # hooks run without their own collectives (SpeechBrain's main-only savers broadcast
            # their result; a rank that fails before it would leave the others waiting there)
            with MainProcessContext():
                for key, obj in self.recoverables.items():
                    self._save_one(key, obj, tmp)
        except Exception as err:  # noqa: BLE001 - disk full, size limit, I/O: reported below
            error = f"{type(err).__name__}: {err}"
        errors = _gather(error)
        failed = any(errors)
        saved_meta = None
        if if_main_process():
            if not failed:
                try:
                    saved_meta = self._publish(tmp, final, meta, end_of_epoch)
                except Exception as err:  # noqa: BLE001
                    errors = [f"{type(err).__name__}: {err}"]
            if any(errors):
                shutil.rmtree(tmp, ignore_errors=True)
        if not failed:  # the same decision on every rank; the publish result from rank 0
            errors = ddp_broadcast(errors, src=0)
        if any(errors):
            previous = self.find_checkpoint()
            kept = f"the previous checkpoint {previous.path} is intact" if previous \
                else "there is no earlier checkpoint"
            raise CheckpointWriteError(
                f"could not write the checkpoint {final} ({_free(self.checkpoints_dir)}): "
                f"{'; '.join(e for e in errors if e)}. Nothing was made visible and {kept}; "
                "free disk space (or raise the file-size limit) and run the same command again "
                "to resume")
        ddp_barrier()
        if if_main_process():
            logger.log(verbosity, "Saved an %s checkpoint in %s",
                       "end-of-epoch" if end_of_epoch else "intra-epoch", final)
            files = {p.stem: p for p in final.iterdir()
                     if p.suffix == sb.utils.checkpoints.PARAMFILE_EXT}
            return sb.utils.checkpoints.Checkpoint(final, saved_meta, files)
        return None

    def _save_one(self, key, obj, folder):
        path = folder / f"{key}{sb.utils.checkpoints.PARAMFILE_EXT}"
        hook = self.custom_save_hooks.get(key) or sb.utils.checkpoints.get_default_hook(
            obj, sb.utils.checkpoints.DEFAULT_SAVE_HOOKS)
        if hook is None:
            raise RuntimeError(f"Don't know how to save {type(obj)} ({key}): register a default "
                               "hook or add a custom hook")
        hook(obj, path)

    def _publish(self, tmp, final, meta, end_of_epoch) -> dict:
        """Manifest + CKPT.yaml into ``tmp``, fsync, rename ``tmp`` -> ``final``."""
        fault_point("ckpt_save")  # the files are written, the checkpoint not yet visible
        files = manifest(tmp)
        for name in files:
            _fsync(tmp / name)
        saved = self._save_checkpoint_metafile(tmp / METAFNAME, {**meta, "files": files},
                                               end_of_epoch)
        _fsync(tmp / METAFNAME)
        _fsync(tmp)
        old = None
        if final.exists():  # a custom name saved again: swap, then delete the old one
            old = final.with_name(TMP_PREFIX + "old-" + final.name)
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync(self.checkpoints_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._verified[final.name] = None
        return saved

    # ------------------------------------------------------------------ listing / loading
    @property
    def _verified(self) -> dict:
        """``{folder name: problem or None}``: each folder is hashed once per process."""
        if not hasattr(self, "_verified_cache"):
            self._verified_cache = {}
        return self._verified_cache

    def _list_checkpoint_dirs(self):
        """SpeechBrain's listing, less the folders that are not complete (warned once)."""
        required = [f"{k}{sb.utils.checkpoints.PARAMFILE_EXT}" for k in self.recoverables
                    if not self.optional_recoverables.get(k) and not self.allow_partial_load]
        good = []
        for path in super()._list_checkpoint_dirs():
            if path.name not in self._verified:
                problem = checkpoint_problem(path, required=required)
                self._verified[path.name] = problem
                if problem:
                    logger.warning("skipping the checkpoint %s: %s; an earlier complete one is "
                                   "used instead", path, problem)
            if self._verified[path.name] is None:
                good.append(path)
        return good


def _free(folder) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e9:.1f} GB free there"
    except OSError:
        return "free space unknown"


def _gather(error):
    """Every rank's error string (or None), on every rank."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, error)
        return out
    return [error]


def upgrade(checkpointer):
    """Make a plain SpeechBrain ``Checkpointer`` one of ours in place (same recoverables and
    hooks); anything else is returned as it is."""
    if type(checkpointer) is sb.utils.checkpoints.Checkpointer:
        checkpointer.__class__ = Checkpointer
        checkpointer._remove_stale_temporaries()
    return checkpointer


# ---------------------------------------------------------------------- run state
def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class RunState:
    """Random generator states (this rank's) and fault counters, saved with each checkpoint.

    Files: ``<name>.ckpt`` for rank 0, ``<name>.rank<r>.ckpt`` beside it for rank r; a rank
    without its own file (a run resumed on more ranks) takes rank 0's. Tensors and plain
    python values only: loads with ``weights_only=True``."""

    def __init__(self):
        self.counters: dict = {}

    def state(self) -> dict:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, py_gauss = random.getstate()
        out = {"torch": torch.get_rng_state(),
               "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                         "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
               "python": {"version": version, "state": list(internal), "gauss": py_gauss},
               "counters": dict(self.counters)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cuda"] = torch.cuda.get_rng_state()
        return out

    def set_state(self, state: dict):
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        self.counters = dict(state.get("counters", {}))

    @staticmethod
    def _path(path, rank):
        path = str(path)
        return path if rank == 0 else path[:-len(".ckpt")] + f".rank{rank}.ckpt"

    @mark_as_saver
    def save(self, path):
        torch.save(self.state(), self._path(path, _rank()))

    @mark_as_loader
    def load(self, path, end_of_epoch=True):
        own = self._path(path, _rank())
        self.set_state(torch.load(own if os.path.exists(own) else str(path), weights_only=True))


register_checkpoint_hooks(RunState, save_on_main_only=False)  # every rank: its own generators
