"""Pieces every recipe shares: parallel map with a progress bar, rejected.tsv,
done markers, manifests and the summary line.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time

from tqdm import tqdm


class RecipeError(RuntimeError):
    """A recipe cannot run: missing input, empty tree, inconsistent options."""


def parallel_map(fn, items, nj: int = 1, desc: str = "", unit: str = "it"):
    """Apply ``fn`` to every item with ``nj`` worker processes; yield results as they finish.

    Order is not preserved for ``nj > 1``; ``fn`` must be a module-level function and should
    return its own item id with its result. A progress bar goes to stderr.
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
            with ctx.Pool(min(nj, len(items))) as pool:
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
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=REJECT_FIELDS, delimiter="\t",
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


def params_hash(params: dict) -> str:
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
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as f:
        json.dump({"params_hash": params_hash(params), "params": params, **info}, f, indent=2,
                  default=str)


def write_jsonl(rows, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str) -> list:
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


def common_parser(out_help: str = "where manifest, shards, lists go") -> argparse.ArgumentParser:
    """The options every stage subcommand takes: ``--out_dir``, ``--seed``, ``--nj``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out_dir", required=True, help=out_help)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--nj", type=int, default=1, help="worker processes")
    return common


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
