"""MUSAN -> noise shards (pieces of at most 10 s) in train/val/test splits.

Stages (``recipes/MUSAN/run.sh`` calls them in order; each is idempotent):

1. ``manifest``: scan ``CORPUS/{music,noise,speech}/<subset>/*.wav`` (deeper folders
   too), probe each file's header (rate, channels, length) and assign whole source files
   to ``train``/``val``/``test``: per category, a shuffle seeded by ``--seed`` and
   ``round(n * fraction)`` files to test and val (at least one each once a category has
   3 files), so the noise of val/test lists is never heard in training. Writes
   ``OUT/manifest.jsonl``.
2. ``pieces``: read each file (several channels are averaged; a rate other than 16 kHz
   is resampled with ``scipy.signal.resample_poly``, counted in the summary and kept as
   ``resampled_from`` in the piece's json) and cut it into ``ceil(duration / max_seconds)``
   equal pieces: every piece is at most ``--max_seconds`` (10) long and no short tail is
   left over (a 12 s file gives two 6 s pieces). Files shorter than ``--min_seconds``
   and pieces that are digital silence (no SNR can be set) are skipped. Writes
   ``OUT/pieces/<split>/<category>/<subset>/<stem>-<NNN>.{flac,json}``.
3. ``shards``: pack each split into ``OUT/shards/<split>/shard-%06d.tar`` + ``meta.json``.
   One sample per piece, keyed ``<category>/<subset>/<stem>-<NNN>`` (no dots; characters
   other than letters, digits, ``_`` and ``-`` in names become ``_``): ``flac`` (16-bit,
   16 kHz mono) and ``json`` with ``key``, ``category``, ``subset``, ``source`` (the wav's
   path relative to the corpus), ``start`` and ``duration`` (seconds), ``split``, ``sr``,
   ``num_samples``.

The shards feed :class:`avse.data.noise.MusanNoise` (dynamic mixing) and the noise tuples
of mixture lists (:func:`avse.data.lists.add_noise`, ``make_list_loader(noise_dirs=...)``).

Unreadable files (missing, empty, a symlink loop, a read error, not audio), duplicate keys,
too-short files and silent pieces go to ``OUT/rejected.tsv`` with the reason; they never
stop a run, nor are tried again by a re-run without ``--retry_rejected``. A killed stage
resumes: manifest from its journal, pieces from each file's ``.done.json`` (rejections
too), shards from the splits with a current marker (fault points ``stage_entry``, after
each file of manifest and pieces, and ``shard_write``).

Example
-------
``prepare_musan("MUSAN", "data/musan", nj=4)`` runs the three stages.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re

import numpy as np

from avse.data.align import SAMPLE_RATE
from avse.data.mixing import SILENCE_POWER, power
from avse.data.shards import encode_flac
from avse.faults import fault_point
from avse.recipes.common import (
    Journal,
    RecipeError,
    Rejections,
    Summary,
    atomic_write,
    hash_seed,
    is_done,
    manifest_status,
    mark_done,
    pack_split,
    parallel_map,
    read_jsonl,
    recipe_parser,
    remove_temp_files,
    run_cli,
    shards_note,
    write_jsonl,
)
from avse.video.media import file_problem

CATEGORIES = ("music", "noise", "speech")
LAYOUT_HINT = "CORPUS/{music,noise,speech}/<subset>/*.wav"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def safe_name(name: str) -> str:
    """A key part without dots or separators: other characters than ``[A-Za-z0-9_-]`` -> ``_``."""
    return _UNSAFE.sub("_", name)


# --------------------------------------------------------------------------- manifest
def scan_corpus(corpus_dir: str):
    """List the wav files of a MUSAN tree: ``(entries, rejected)``.

    Entries are dicts with ``key`` (``<category>/<subset>/<stem>``), ``category``,
    ``subset``, ``source`` (path relative to ``corpus_dir``) and ``path``. A file whose key
    repeats an earlier one (names that differ only in unsafe characters) is rejected.
    Raises RecipeError when the folder is missing or holds no wav file.
    """
    if not os.path.isdir(corpus_dir):
        raise RecipeError(f"--corpus_dir {corpus_dir} does not exist (expected {LAYOUT_HINT})")
    entries, rejected, seen = [], [], {}
    for category in CATEGORIES:
        cat_dir = os.path.join(corpus_dir, category)
        if not os.path.isdir(cat_dir):
            continue
        for subset in sorted(os.listdir(cat_dir)):
            sub_dir = os.path.join(cat_dir, subset)
            if not os.path.isdir(sub_dir):
                continue
            for root, dirs, files in os.walk(sub_dir):
                dirs.sort()
                for name in sorted(files):
                    if not name.lower().endswith(".wav"):
                        continue
                    path = os.path.join(root, name)
                    inner = os.path.relpath(path, sub_dir)[:-4].split(os.sep)
                    key = "/".join([category, safe_name(subset)] + [safe_name(p) for p in inner])
                    source = os.path.relpath(path, corpus_dir).replace(os.sep, "/")
                    if key in seen:
                        rejected.append({"key": key, "path": path,
                                         "reason": f"key {key} repeats {seen[key]}"})
                        continue
                    seen[key] = source
                    entries.append({"key": key, "category": category, "subset": subset,
                                    "source": source, "path": path})
    if not entries and not rejected:
        raise RecipeError(f"no wav files found under {corpus_dir}: expected {LAYOUT_HINT}")
    return entries, rejected


def split_counts(n: int, val_fraction: float, test_fraction: float):
    """``(n_val, n_test)`` of ``n`` files: rounded, >= 1 each (fraction > 0) once ``n >= 3``,
    and at least one file left for train.

    Example
    -------
    >>> split_counts(100, 0.1, 0.1), split_counts(3, 0.1, 0.1), split_counts(2, 0.1, 0.1)
    ((10, 10), (1, 1), (0, 0))
    """
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    if n >= 3:
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    while n_val + n_test > max(n - 1, 0):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def assign_splits(entries, val_fraction: float, test_fraction: float, seed: int) -> None:
    """Set ``split`` of every entry: whole files, per category, seeded (see module docstring)."""
    for category in CATEGORIES:
        group = sorted((e for e in entries if e["category"] == category), key=lambda e: e["key"])
        random.Random(hash_seed(seed, category)).shuffle(group)
        n_val, n_test = split_counts(len(group), val_fraction, test_fraction)
        for i, e in enumerate(group):
            e["split"] = "test" if i < n_test else "val" if i < n_test + n_val else "train"


def _probe_task(entry):
    import soundfile as sf

    try:
        if problem := file_problem(entry["path"]):  # before libsndfile: a FIFO blocks it
            raise ValueError(problem)
        info = sf.info(entry["path"])
        if info.frames <= 0 or info.samplerate <= 0:
            raise ValueError("no audio samples")
        entry.update(sr=int(info.samplerate), channels=int(info.channels),
                     frames=int(info.frames), duration=round(info.frames / info.samplerate, 4))
        return entry, None
    except Exception as err:  # any unreadable file is a rejection, never a crash
        return entry, f"cannot read: {' '.join(str(err).split())}"


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise RecipeError(f"--val_fraction {val_fraction} and --test_fraction {test_fraction} "
                          "must be >= 0 with a sum below 1 (the rest is train)")


def stage_manifest(corpus_dir: str, out_dir: str, val_fraction: float = 0.1,
                   test_fraction: float = 0.1, seed: int = 0, nj: int = 1,
                   retry_rejected: bool = False) -> list[dict]:
    """Stage 1: write ``OUT/manifest.jsonl`` (one source file a line). Returns the entries.

    Skipped when done with the same parameters, unless ``retry_rejected``: then only the
    rejected files are probed again. A killed run's probes (same parameters) are reused."""
    check_fractions(val_fraction, test_fraction)
    params = {"corpus_dir": os.path.abspath(corpus_dir), "val_fraction": val_fraction,
              "test_fraction": test_fraction, "seed": seed}
    manifest_path, marker, done, finished = manifest_status(out_dir, params, retry_rejected)
    if finished is not None:
        return finished
    summary = Summary("manifest", unit="files")
    remove_temp_files(out_dir, recursive=False)
    entries, rejected = scan_corpus(corpus_dir)
    journal = Journal(out_dir, "manifest", params)
    known = journal.load()
    if done:  # --retry_rejected over a finished manifest: the kept files keep their probe
        known = {e["key"]: {"key": e["key"], "source": e["source"], "entry": e}
                 for e in read_jsonl(manifest_path)}
    if retry_rejected:
        known = {k: r for k, r in known.items() if "entry" in r}
    kept, bad, resumed, todo = journal.probe(entries, known, _probe_task, nj,
                                             lambda e: e["source"], "path", unit="file")
    rejected += bad
    Rejections(out_dir).replace("manifest", rejected)
    if not kept:
        journal.remove()
        raise RecipeError(f"none of the {len(entries)} wav file(s) under {corpus_dir} could be "
                          f"read; see {os.path.join(out_dir, 'rejected.tsv')}")
    assign_splits(kept, val_fraction, test_fraction, seed)
    kept.sort(key=lambda e: (e["split"], e["key"]))
    write_jsonl(kept, manifest_path)
    mark_done(marker, params, count=len(kept))
    journal.remove()
    counts = {}
    for e in kept:
        counts.setdefault(e["split"], {}).setdefault(e["category"], 0)
        counts[e["split"]][e["category"]] += 1
    note = "; ".join(f"{s}: " + ", ".join(f"{c}={n}" for c, n in sorted(v.items()))
                     for s, v in sorted(counts.items()))
    rates = sorted({e["sr"] for e in kept} - {SAMPLE_RATE})
    if rates:
        note += f"; {sum(e['sr'] != SAMPLE_RATE for e in kept)} file(s) at {rates} Hz " \
                f"will be resampled to {SAMPLE_RATE}"
    if resumed:
        note += f"; resumed {len(resumed)} probed before"
    summary.line(len(kept), len(rejected), sum(e["duration"] for e in kept),
                 processed=len(todo), note=note)
    return kept


# --------------------------------------------------------------------------- pieces
def piece_bounds(n_samples: int, max_samples: int) -> list[tuple]:
    """``ceil(n / max)`` equal pieces ``[(start, stop), ...]`` covering ``n`` samples.

    Example
    -------
    >>> piece_bounds(12, 10), piece_bounds(10, 10), piece_bounds(21, 10)
    ([(0, 6), (6, 12)], [(0, 10)], [(0, 7), (7, 14), (14, 21)])
    """
    n_pieces = max(1, math.ceil(n_samples / max_samples))
    edges = [round(i * n_samples / n_pieces) for i in range(n_pieces + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _piece_dir(out_dir: str, split: str) -> str:
    return os.path.join(out_dir, "pieces", split)


def _done_path(out_dir: str, entry: dict) -> str:
    return os.path.join(_piece_dir(out_dir, entry["split"]), entry["key"] + ".done.json")


def read_wav(path: str):
    """``(wav [T] float32 mono @16 kHz, original rate)``: channels averaged, resampled."""
    import soundfile as sf

    wav, sr = sf.read(path, dtype="float32", always_2d=True)
    wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(SAMPLE_RATE, int(sr))
        wav = resample_poly(wav, SAMPLE_RATE // g, int(sr) // g).astype(np.float32)
    return wav, int(sr)


def _pieces_task(job):
    entry, out_dir, params = job
    try:
        if problem := file_problem(entry["path"]):
            raise ValueError(problem)
        wav, sr = read_wav(entry["path"])
        if len(wav) < params["min_seconds"] * SAMPLE_RATE:
            return _rejected(out_dir, entry, params, f"{len(wav) / SAMPLE_RATE:.2f} s, shorter "
                             f"than --min_seconds {params['min_seconds']}")
    except Exception as err:  # any unreadable file is a rejection, never a crash
        return _rejected(out_dir, entry, params, f"cannot read: {' '.join(str(err).split())}")
    infos, dropped = [], []  # the pieces, and the silent ones left out
    max_samples = int(round(params["max_seconds"] * SAMPLE_RATE))
    for i, (a, b) in enumerate(piece_bounds(len(wav), max_samples)):
        key = f"{entry['key']}-{i:03d}"
        piece = wav[a:b]
        if power(np.clip(piece, -1, 1)) <= SILENCE_POWER:
            dropped.append({"key": key, "path": entry["path"],
                            "reason": f"silent piece at {a / SAMPLE_RATE:.2f} s: no SNR can "
                                      "be set"})
            continue
        info = {"key": key, "category": entry["category"], "subset": entry["subset"],
                "source": entry["source"], "split": entry["split"],
                "start": round(a / SAMPLE_RATE, 4), "duration": round((b - a) / SAMPLE_RATE, 4),
                "sr": SAMPLE_RATE, "num_samples": int(b - a)}
        if sr != SAMPLE_RATE:
            info["resampled_from"] = sr
        base = os.path.join(_piece_dir(out_dir, entry["split"]), key)
        atomic_write(base + ".flac", encode_flac(piece))
        atomic_write(base + ".json", json.dumps(info, sort_keys=True).encode())
        infos.append(info)
    done = {"params": params, "pieces": infos, "dropped": dropped}
    atomic_write(_done_path(out_dir, entry), json.dumps(done, sort_keys=True).encode())
    return entry, done, None


def _rejected(out_dir: str, entry: dict, params: dict, reason: str):
    """A rejected file: its done file says why (a re-run tries it only if --retry_rejected)."""
    done = {"params": params, "pieces": [], "dropped": [], "error": reason}
    atomic_write(_done_path(out_dir, entry), json.dumps(done, sort_keys=True).encode())
    return entry, None, reason


def _load_done(out_dir: str, entry: dict, params: dict):
    path = _done_path(out_dir, entry)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    return done if done.get("params") == params else None


def stage_pieces(out_dir: str, max_seconds: float = 10.0, min_seconds: float = 1.0,
                 nj: int = 1, retry_rejected: bool = False) -> list[dict]:
    """Stage 2: cut every manifest file not yet done into pieces. Returns the piece infos."""
    if not 0 < min_seconds <= max_seconds:
        raise RecipeError(f"need 0 < --min_seconds ({min_seconds}) <= --max_seconds "
                          f"({max_seconds})")
    entries = read_jsonl(os.path.join(out_dir, "manifest.jsonl"))
    params = {"max_seconds": float(max_seconds), "min_seconds": float(min_seconds)}
    marker = os.path.join(out_dir, ".done", "pieces")
    rejections = Rejections(out_dir)  # older runs kept pieces rejections only in rejected.tsv
    old = {r["key"]: r for r in rejections.for_stage("pieces")
           if is_done(marker, params) and not retry_rejected}
    summary = Summary("pieces", unit="files")
    todo, infos, rejected, n_done = [], [], [], 0
    remove_temp_files(os.path.join(out_dir, "pieces"))
    for e in entries:
        done = _load_done(out_dir, e, params)
        if done is not None and "error" in done and not retry_rejected:
            rejected.append({"key": e["key"], "path": e["path"], "reason": done["error"]})
        elif done is not None and "error" not in done:
            infos += done["pieces"]
            rejected += done["dropped"]
            n_done += 1
        elif e["key"] in old:
            rejected.append(old[e["key"]])
        else:
            todo.append((e, out_dir, params))
    resampled, n_kept = 0, n_done
    for entry, done, error in parallel_map(_pieces_task, todo, nj, desc="pieces", unit="file"):
        if error:
            rejected.append({"key": entry["key"], "path": entry["path"], "reason": error})
        else:
            infos += done["pieces"]
            rejected += done["dropped"]
            resampled += entry["sr"] != SAMPLE_RATE
            n_kept += 1
        fault_point("stage_entry")
    rejections.replace("pieces", rejected)
    mark_done(marker, params)
    note = f"{len(infos)} pieces <= {max_seconds:g} s; {n_done} files already done, " \
           f"{len(todo)} processed"
    if resampled:
        note += f", {resampled} resampled to {SAMPLE_RATE} Hz"
    summary.line(n_kept, len(rejected), sum(i["duration"] for i in infos), processed=len(todo),
                 note=note)
    return infos


# --------------------------------------------------------------------------- shards
def category_totals(infos) -> dict:
    """``{category: {"count", "hours"}}`` of piece infos (for meta.json).

    Example
    -------
    >>> category_totals([{"category": "noise", "duration": 1800.0}])
    {'noise': {'count': 1, 'hours': 0.5}}
    """
    categories = {}
    for i in infos:
        c = categories.setdefault(i["category"], {"count": 0, "hours": 0.0})
        c["count"] += 1
        c["hours"] += i["duration"] / 3600.0
    for c in categories.values():
        c["hours"] = round(c["hours"], 6)
    return categories


def _samples(out_dir: str, infos):
    for info in infos:
        base = os.path.join(_piece_dir(out_dir, info["split"]), info["key"])
        with open(base + ".flac", "rb") as f:
            flac = f.read()
        yield {"__key__": info["key"], "flac": flac, "json": info}


def stage_shards(out_dir: str, max_seconds: float = 10.0, min_seconds: float = 1.0,
                 shard_size: int = 1000, shard_multiple: int = 1, seed: int = 0) -> dict:
    """Stage 3: pack the pieces of each split into shards. Returns ``{split: meta}``."""
    entries = read_jsonl(os.path.join(out_dir, "manifest.jsonl"))
    params_pieces = {"max_seconds": float(max_seconds), "min_seconds": float(min_seconds)}
    by_split = {}
    for e in entries:
        done = _load_done(out_dir, e, params_pieces)
        if done is not None:
            by_split.setdefault(e["split"], []).extend(done["pieces"])
    if not any(by_split.values()):
        raise RecipeError(f"{out_dir}/pieces holds no piece cut with --max_seconds {max_seconds} "
                          f"--min_seconds {min_seconds}: run stage 2 (pieces) first, with the "
                          "same options")
    summary = Summary("shards", unit="pieces")
    metas, total, seconds = {}, 0, 0.0
    for split, infos in sorted(by_split.items()):
        infos = sorted(infos, key=lambda i: i["key"])
        random.Random(hash_seed(seed, split)).shuffle(infos)
        params = {"keys": [i["key"] for i in infos], "shard_size": shard_size,
                  "shard_multiple": shard_multiple, "seed": seed, **params_pieces}
        meta = {"split": split, "corpus": "musan", "categories": category_totals(infos),
                "max_seconds": float(max_seconds), "sources": len({i["source"] for i in infos})}
        metas[split], written = pack_split(out_dir, split, params, _samples(out_dir, infos),
                                           len(infos), shard_size, shard_multiple, meta)
        if written:
            total += metas[split]["count"]
            seconds += metas[split]["hours"] * 3600
    summary.line(total, 0, seconds, note=shards_note(metas))
    return metas


# --------------------------------------------------------------------------- driver
def prepare_musan(corpus_dir: str, out_dir: str, nj: int = 1, max_seconds: float = 10.0,
                  min_seconds: float = 1.0, val_fraction: float = 0.1, test_fraction: float = 0.1,
                  shard_size: int = 1000, shard_multiple: int = 1, seed: int = 0,
                  stage: int = 1, stop_stage: int = 3, retry_rejected: bool = False):
    """Run stages ``stage..stop_stage`` (see the module docstring)."""
    if stage <= 1 <= stop_stage:
        stage_manifest(corpus_dir, out_dir, val_fraction, test_fraction, seed, nj, retry_rejected)
    if stage <= 2 <= stop_stage:
        stage_pieces(out_dir, max_seconds, min_seconds, nj, retry_rejected)
    if stage <= 3 <= stop_stage:
        stage_shards(out_dir, max_seconds, min_seconds, shard_size, shard_multiple, seed)


def build_parser() -> argparse.ArgumentParser:
    parser, sub, common = recipe_parser(
        "musan", "MUSAN -> noise shards in train/val/test splits (one subcommand per stage).",
        "where manifest, pieces, shards go")
    pieces = argparse.ArgumentParser(add_help=False)
    pieces.add_argument("--max_seconds", type=float, default=10.0, help="longest piece")
    pieces.add_argument("--min_seconds", type=float, default=1.0, help="shortest file kept")
    p = sub.add_parser("manifest", parents=[common], help="stage 1: scan, probe, split files")
    p.add_argument("--corpus_dir", required=True, help=LAYOUT_HINT)
    p.add_argument("--val_fraction", type=float, default=0.1, help="files per category")
    p.add_argument("--test_fraction", type=float, default=0.1, help="files per category")
    p.add_argument("--retry_rejected", action="store_true", help="probe rejected files again")
    p = sub.add_parser("pieces", parents=[common, pieces], help="stage 2: cut files into pieces")
    p.add_argument("--retry_rejected", action="store_true", help="read rejected files again")
    p = sub.add_parser("shards", parents=[common, pieces], help="stage 3: write shards")
    p.add_argument("--shard_size", type=int, default=1000, help="max pieces per shard")
    p.add_argument("--shard_multiple", type=int, default=1,
                   help="shard count is a multiple of this")
    return parser


def _run(args) -> None:
    if args.stage == "manifest":
        stage_manifest(args.corpus_dir, args.out_dir, args.val_fraction, args.test_fraction,
                       args.seed, args.nj, args.retry_rejected)
    elif args.stage == "pieces":
        stage_pieces(args.out_dir, args.max_seconds, args.min_seconds, args.nj,
                     args.retry_rejected)
    elif args.stage == "shards":
        stage_shards(args.out_dir, args.max_seconds, args.min_seconds, args.shard_size,
                     args.shard_multiple, args.seed)


def main(argv=None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
