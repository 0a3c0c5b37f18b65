"""Outputs that are complete or absent: hidden temporary names, renamed into place at the end.

A file is written to ``.<name>.tmp-<pid><ext>`` in its final folder (the same file system,
so the rename is atomic; the extension is kept for writers that choose the format by it), a
folder to ``.<name>.tmp-<pid>/`` next to it. :class:`OutputStage` collects the outputs of
one run and :meth:`~OutputStage.commit` renames them all at the end, after the fault point
``extract_write`` (:mod:`avse.faults`); on any error it removes what it wrote, so a failed
run leaves nothing. A killed run (no cleanup) leaves only hidden temporaries: never anything
under a final name. :func:`remove_stale` deletes those of dead processes the next time.

A folder output whose final folder does not exist yet is renamed into place as a whole (one
atomic step); into an existing folder, each file is renamed on its own (each one complete).

Example
-------
>>> import os, tempfile
>>> root = tempfile.mkdtemp()
>>> with OutputStage() as stage:
...     with open(stage.file(os.path.join(root, "a.txt")), "w") as f:
...         _ = f.write("done")
...     sorted(os.listdir(root)) == [f".a.txt.tmp-{os.getpid()}.txt"]
...     _ = stage.commit()
True
>>> os.listdir(root)
['a.txt']
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil

from avse.faults import fault_point

logger = logging.getLogger(__name__)

TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?P<ext>\.[A-Za-z0-9]+)?$")
"""Hidden temporary names: ``.<final name>.tmp-<pid>[<ext>]``."""


def temp_name(path: str, pid: int | None = None) -> str:
    """The hidden temporary name of ``path`` for process ``pid`` (default: this one).

    >>> temp_name("/out/face0.wav", pid=12)
    '/out/.face0.wav.tmp-12.wav'
    >>> temp_name("/out/run/", pid=12)
    '/out/.run.tmp-12'
    """
    folder, base = os.path.split(os.path.abspath(path))
    ext = os.path.splitext(base)[1]
    return os.path.join(folder, f".{base}.tmp-{pid or os.getpid()}{ext}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(folder: str) -> list:
    """Delete the hidden temporaries in ``folder`` left by processes that no longer run
    (a killed run); returns their paths. Those of live processes are kept."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = TEMP_RE.match(name)
        if not match or _alive(int(match["pid"])):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                continue
        removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) of an interrupted run in %s", len(removed),
                    folder)
    return removed


WORK_RE = re.compile(r"^avse-extract-(?P<pid>\d+)-")
"""Working folders of ``avse-extract`` in the temp folder: ``avse-extract-<pid>-<random>``."""


def work_folder(root: str | None = None) -> str:
    """A new working folder ``avse-extract-<pid>-*`` under ``root`` (default: the system temp
    folder), after removing those of processes that no longer run (a killed extraction)."""
    import tempfile

    root = root or tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        match = WORK_RE.match(name)
        if match and not _alive(int(match["pid"])):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            logger.info("removed %s, the working folder of an interrupted avse-extract", name)
    return tempfile.mkdtemp(prefix=f"avse-extract-{os.getpid()}-", dir=root)


def sha256(path: str, block: int = 1 << 20) -> str:
    """The sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(folder: str, names) -> dict:
    """``{name: {"size": bytes, "sha256": hex}}`` of the files ``names`` in ``folder``: what
    a model folder's ``model.yaml`` and a checkpoint's ``CKPT.yaml`` record as ``files:``."""
    return {name: {"size": os.path.getsize(os.path.join(folder, name)),
                   "sha256": sha256(os.path.join(folder, name))} for name in names}


def manifest_problem(folder: str, manifest, deep: bool = True) -> str | None:
    """Why the files in ``folder`` do not match ``manifest`` (see :func:`file_manifest`), or
    None when every listed file is there with its size (and, with ``deep``, its sha256)."""
    if not isinstance(manifest, dict):
        return f"'files' must map file names to {{size, sha256}}, got {type(manifest).__name__}"
    for name, want in manifest.items():
        path = os.path.join(folder, str(name))
        if not isinstance(want, dict) or os.path.isabs(str(name)) or ".." in str(name).split("/"):
            return f"bad 'files' entry {name!r}"
        if not os.path.isfile(path):
            return f"{path} not found"
        size = os.path.getsize(path)
        if "size" in want and size != want["size"]:
            return f"{path}: {size} bytes, the manifest says {want['size']}: truncated or damaged"
        if deep and "sha256" in want and sha256(path) != want["sha256"]:
            return (f"{path}: its sha256 differs from the manifest's: changed or damaged after "
                    "it was written")
    return None


def _make_parents(folder: str) -> list:
    """``os.makedirs(folder)``; returns the folders it created, outermost first."""
    created, probe = [], os.path.abspath(folder)
    while probe and not os.path.isdir(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(folder, exist_ok=True)
    return created[::-1]


class OutputStage:
    """The outputs of one run, written under hidden names and committed together.

    :meth:`file` and :meth:`folder` return where to write (a temporary); :meth:`commit`
    renames everything to its final name; leaving the ``with`` block without a commit (an
    error) removes the temporaries and the parent folders the stage created."""

    def __init__(self, point: str = "extract_write"):
        self.point = point
        self.entries: list = []  # (temporary, final)
        self.created: list = []  # parent folders made by the stage
        self.committed = False

    def _prepare(self, final: str) -> str:
        parent = os.path.dirname(os.path.abspath(final))
        self.created += _make_parents(parent)
        remove_stale(parent)
        tmp = temp_name(final)
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        self.entries.append((tmp, os.path.abspath(final)))
        return tmp

    def file(self, final: str) -> str:
        """The temporary to write ``final`` to (its folder is created)."""
        return self._prepare(final)

    def folder(self, final: str) -> str:
        """The temporary folder to fill in place of the folder ``final`` (created)."""
        if os.path.exists(final) and not os.path.isdir(final):
            raise NotADirectoryError(f"{final} exists and is not a folder")
        tmp = self._prepare(final)
        os.makedirs(tmp)
        return tmp

    def commit(self) -> list:
        """Rename every output to its final name; returns the final names."""
        fault_point(self.point)
        for tmp, final in self.entries:
            if not os.path.isdir(tmp):
                os.replace(tmp, final)
            elif not os.path.isdir(final):
                os.rename(tmp, final)
            else:  # an existing folder: file by file
                for name in sorted(os.listdir(tmp)):
                    os.replace(os.path.join(tmp, name), os.path.join(final, name))
                os.rmdir(tmp)
        self.committed = True
        return [final for _, final in self.entries]

    def abort(self) -> None:
        """Remove the temporaries (and the parent folders the stage made, when empty)."""
        for tmp, _ in self.entries:
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.lexists(tmp):
                os.remove(tmp)
        for folder in reversed(self.created):
            try:
                os.rmdir(folder)
            except OSError:
                pass
        self.entries, self.created = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            self.abort()
        return False
