"""Plumbing every recipe shares: parallel map with a progress bar, rejected.tsv, done
markers, atomic writes, manifests, seeds, option checks, the shards stage's per-split loop
and the summary line. The audio-visual stages themselves are in :mod:`avse.recipes.stages`.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import sys
import time

from tqdm import tqdm

from avse.faults import fault_point


class RecipeError(RuntimeError):
    """A recipe cannot run: missing input, empty tree, inconsistent options."""


def _die_with_parent() -> None:
    """Pool initializer: on Linux the worker gets SIGKILL when the recipe process dies (a
    kill -9 leaves no orphan still decoding and writing), elsewhere nothing."""
    parent = os.getppid()
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def parallel_map(fn, items, nj: int = 1, desc: str = "", unit: str = "it"):
    """Apply ``fn`` to every item with ``nj`` worker processes; yield results as they finish.

    Order is not preserved for ``nj > 1``; ``fn`` must be a module-level function and should
    return its own item id with its result. A progress bar goes to stderr. The workers die
    with the calling process (Linux).
    """
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0,
               disable=None)
    try:
        if nj <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update(1)
        else:
            ctx = mp.get_context("fork")
            with ctx.Pool(min(nj, len(items)), initializer=_die_with_parent) as pool:
                for result in pool.imap_unordered(fn, items, chunksize=1):
                    yield result
                    bar.update(1)
    finally:
        bar.close()


REJECT_FIELDS = ["stage", "key", "path", "reason"]


class Rejections:
    """``<out_dir>/rejected.tsv``: what each stage skipped, with the reason.

    Each stage replaces its own rows, so a re-run never duplicates them.
    """

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, "rejected.tsv")
        self.rows = []
        if os.path.isfile(self.path):
            with open(self.path, newline="") as f:
                self.rows = list(csv.DictReader(f, delimiter="\t"))

    def keys(self, stage: str) -> set:
        return {r["key"] for r in self.rows if r["stage"] == stage}

    def for_stage(self, stage: str) -> list:
        return [r for r in self.rows if r["stage"] == stage]

    def replace(self, stage: str, rows) -> None:
        """Set the rows of ``stage`` (dicts with key, path, reason) and save."""
        clean = []
        for r in rows:
            reason = " ".join(str(r["reason"]).split())  # one line, no tabs
            clean.append({"stage": stage, "key": r["key"], "path": r.get("path", ""),
                          "reason": reason})
        self.rows = [r for r in self.rows if r["stage"] != stage] + sorted(clean, key=lambda r: r["key"])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=REJECT_FIELDS, delimiter="\t",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, buf.getvalue())


class Journal:
    """``OUT/.done/<stage>.partial``: the entries a stage has finished, so that a killed stage
    resumes where it stopped instead of starting over.

    One json object a line, each appended and flushed as its entry finishes; the first line
    holds the hash of the stage's parameters (a journal of other parameters is ignored) and
    a torn last line (the kill came mid-write) is dropped. The stage removes the journal once
    its results are written.
    """

    def __init__(self, out_dir: str, stage: str, params: dict | None = None):
        self.path, self.stage = os.path.join(out_dir, ".done", f"{stage}.partial"), stage
        self.head = {"params_hash": params_hash(params or {})}
        self._file = None

    def load(self) -> dict:
        """``{key: row}`` finished by an interrupted run with the same parameters, else ``{}``."""
        try:
            with open(self.path) as f:
                lines = f.read().split("\n")[:-1]  # the part after the last newline is torn
        except OSError:
            return {}
        rows = {}
        try:
            if not lines or json.loads(lines[0]) != self.head:
                return {}
            for line in lines[1:]:
                row = json.loads(line)
                rows[row["key"]] = row
        except (ValueError, KeyError, TypeError):  # a damaged journal: resume what is readable
            pass
        return rows

    def start(self, rows=()) -> None:
        """Begin a fresh journal holding ``rows`` (the finished entries carried over)."""
        atomic_write(self.path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n"
                                        for r in [self.head, *rows]))
        self._file = open(self.path, "a")

    def add(self, row: dict) -> None:
        """Record one finished entry (a dict with ``key``)."""
        self._file.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        self._file.flush()

    def probe(self, entries, known: dict, task, nj: int, source, path_field: str,
              unit: str = "clip"):
        """Run ``task(entry) -> (entry, error or None)`` over ``entries`` in ``nj`` processes,
        journaling each result (fault point ``stage_entry`` after each); an entry whose row in
        ``known`` (:meth:`load`) has the same ``source(entry)`` is taken from there instead.
        Starts the journal. Returns ``(kept entries, rejected rows, resumed rows, todo)``."""
        resumed, todo = [], []
        for e in entries:
            row = known.get(e["key"])
            (resumed if row and row.get("source") == source(e) else todo).append(row or e)
        self.start(resumed)
        kept = [r["entry"] for r in resumed if "entry" in r]
        rejected = [{k: r[k] for k in ("key", "path", "reason")} for r in resumed
                    if "entry" not in r]
        for entry, error in parallel_map(task, todo, nj, desc=self.stage, unit=unit):
            row = {"key": entry["key"], "source": source(entry)}
            if error:
                row.update(path=entry[path_field], reason=error)
                rejected.append({"key": entry["key"], "path": entry[path_field],
                                 "reason": error})
            else:
                row["entry"] = entry
                kept.append(entry)
            self.add(row)
            fault_point("stage_entry")
        return kept, rejected, resumed, todo

    def remove(self) -> None:
        """The stage's results are written: the journal is no longer needed."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if os.path.exists(self.path):
            os.remove(self.path)


def manifest_status(out_dir: str, params: dict, retry_rejected: bool = False):
    """``(manifest path, its marker, done, rows)`` of a manifest stage: ``done`` when it was
    finished with the same ``params``; ``rows``: the finished manifest when the stage has
    nothing to do (done and no ``retry_rejected``; it says so), else None."""
    path = os.path.join(out_dir, "manifest.jsonl")
    marker = os.path.join(out_dir, ".done", "manifest")
    done = is_done(marker, params) and os.path.isfile(path)
    if done and not retry_rejected:
        print(f"[manifest] {path} is up to date; skipping")
        return path, marker, done, read_jsonl(path)
    return path, marker, done, None


def remove_temp_files(folder: str, recursive: bool = True) -> int:
    """Delete the ``*.tmp`` files a killed run left below ``folder`` (the temporary names of
    :func:`atomic_write`); returns how many."""
    removed = 0
    for root, dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(".tmp"):
                os.remove(os.path.join(root, name))
                removed += 1
        if not recursive:
            break
    return removed


def params_hash(params: dict) -> str:
    """A short stable digest of ``params`` (json with sorted keys)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_done(marker: str, params: dict) -> bool:
    """True when ``marker`` exists and was written with the same parameters."""
    if not os.path.isfile(marker):
        return False
    try:
        with open(marker) as f:
            return json.load(f).get("params_hash") == params_hash(params)
    except (OSError, ValueError):
        return False


def mark_done(marker: str, params: dict, **info) -> None:
    """Write ``marker`` (json: the hash of ``params``, the params, ``info``)."""
    atomic_write(marker, json.dumps({"params_hash": params_hash(params), "params": params, **info},
                                    indent=2, default=str))


def hash_seed(seed: int, *parts) -> int:
    """A stable integer seed derived from ``seed`` and names (same on every machine).

    Example
    -------
    >>> hash_seed(0, "train", 2) == hash_seed(0, "train", 2) != hash_seed(1, "train", 2)
    True
    """
    return int(hashlib.md5("/".join(map(str, (seed,) + parts)).encode()).hexdigest()[:8], 16)


def atomic_write(path: str, data) -> None:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` through a temporary file, so a reader
    never sees half a file; the parent folder is created."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_jsonl(rows, path: str) -> None:
    """One json object a line, written atomically."""
    atomic_write(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def read_jsonl(path: str) -> list:
    """The rows of a jsonl file; RecipeError when it is missing (an earlier stage did not run)."""
    if not os.path.isfile(path):
        raise RecipeError(f"{path} not found: run the earlier stage first")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Summary:
    """Times a stage and prints its closing line: kept, rejected, hours, throughput."""

    def __init__(self, stage: str, unit: str = "clips"):
        self.stage, self.unit, self.start = stage, unit, time.time()

    def line(self, kept: int, rejected: int, seconds_of_audio: float | None = None,
             processed: int | None = None, note: str = "") -> str:
        elapsed = max(time.time() - self.start, 1e-9)
        processed = kept + rejected if processed is None else processed
        hours = "" if seconds_of_audio is None else f"{seconds_of_audio / 3600.0:.3f} h, "
        text = (f"[{self.stage}] kept {kept}, rejected {rejected}, {hours}"
                f"{processed / elapsed:.1f} {self.unit}/s ({elapsed:.1f} s)")
        if note:
            text += f"; {note}"
        print(text, flush=True)
        return text


def check_names(names, known, option: str) -> tuple:
    """``names`` (a comma list or a sequence) checked against ``known``; RecipeError if not.

    Example
    -------
    >>> check_names("test,train,test", ("train", "val", "test"), "--splits")
    ('test', 'train')
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise RecipeError(f"{option}: unknown or no name(s) {unknown}; choose among {list(known)}")
    return tuple(dict.fromkeys(names))


def pack_split(out_dir: str, split: str, params: dict, samples, n_samples: int,
               shard_size: int, shard_multiple: int, extra_meta: dict, on_written=None):
    """The shards stage for one split: ``OUT/shards/<split>/`` unless its marker is current.

    ``samples`` is an iterable of webdataset samples (read lazily, only when the split is
    written); ``params`` decide whether the ``OUT/.done/shards_<split>`` marker is current;
    ``on_written(split_dir)`` runs after a fresh write, before the marker. Returns
    ``(meta, written)``: the split's meta.json and whether it was written now.
    """
    from avse.data.shards import write_split

    split_dir = os.path.join(out_dir, "shards", split)
    marker = os.path.join(out_dir, ".done", f"shards_{split}")
    meta_path = os.path.join(split_dir, "meta.json")
    if is_done(marker, params) and os.path.isfile(meta_path):
        print(f"[shards] {split_dir} is up to date; skipping")
        with open(meta_path) as f:
            return json.load(f), False
    meta = write_split(samples, split_dir, shard_size, shard_multiple, n_samples=n_samples,
                       extra_meta=extra_meta)
    if on_written is not None:
        on_written(split_dir)
    mark_done(marker, params, count=meta["count"])
    return meta, True


def shards_note(metas: dict) -> str:
    """The summary note of a shards stage: ``splits train=12 in 4 shards, ...``."""
    return "splits " + ", ".join(f"{s}={m['count']} in {m['num_shards']} shards"
                                 for s, m in metas.items())


def common_parser(out_help: str = "where manifest, shards, lists go") -> argparse.ArgumentParser:
    """The options every stage subcommand takes: ``--out_dir``, ``--seed``, ``--nj``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out_dir", required=True, help=out_help)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--nj", type=int, default=1, help="worker processes")
    return common


def recipe_parser(corpus: str, description: str,
                  out_help: str = "where manifest, shards, lists go"):
    """``(parser, subparsers, common)`` of ``python -m avse.recipes.<corpus>``: one subcommand
    per stage (``dest="stage"``), each built with ``parents=[common]`` (:func:`common_parser`)."""
    parser = argparse.ArgumentParser(prog=f"python -m avse.recipes.{corpus}",
                                     description=description)
    sub = parser.add_subparsers(dest="stage", required=True)
    return parser, sub, common_parser(out_help)


def run_cli(parser: argparse.ArgumentParser, stage_fn, argv=None) -> int:
    """Parse, run ``stage_fn(args)``; recipe and data errors print ``error: ...``, return 2."""
    from avse.data.align import AlignmentError
    from avse.data.lists import ListError
    from avse.data.shards import ShardError

    args = parser.parse_args(argv)
    try:
        stage_fn(args)
    except (RecipeError, ListError, AlignmentError, ShardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
