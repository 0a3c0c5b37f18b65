"""The embedding stage: lip embeddings of every prepared utterance, written as shards that the
``embedding`` visual encoder trains on (SEANet-style training with no outside script).

Usage (``recipes/<Corpus>/run.sh --frontend FILE`` runs it after the other stages)::

    python -m avse.recipes.embed --out_dir PREP --frontend FILE [--preset NAME]
        [--splits train,val,test] [--batch_frames 2000] [--device cpu|cuda] [--nj 1]
        [--emb_dir shards_emb]

For every split of ``PREP/shards`` (default: all), the front-end FILE (ours, or a published
``visual_frontend.pt`` converted on the fly; :func:`avse.embed.load`) embeds every utterance
and ``PREP/<emb_dir>/<split>/shard-*.tar`` + ``meta.json`` get the same keys, ``flac`` and
``json`` plus ``emb.npy`` (float16 ``[Tv, frame_dim]`` @25 fps, as long as the utterance's
lips) instead of ``lips.npy``; meta.json records ``visual: [emb]``, ``crop`` (the preset),
``frame_dim`` and ``frontend`` (file, sha1, type, format). Point an experiment's
``train_shards`` / ``valid_shards`` / test ``shards`` there (``in_dim`` = ``frame_dim``);
training records the front-end in its ``model.yaml`` (:func:`avse.experiment.main`).

The region the front-end reads is its preset (``--preset``, else the one its file records;
``lipread`` for a published file). When the shards hold that crop already (same ``crop`` in
their meta.json) their ``lips.npy`` is read; otherwise the source videos named by
``PREP/manifest.jsonl`` are decoded again (:func:`avse.embed.video_region`; e.g. ``lipread``,
the central 112x112 of the face frame, which 88x88 mouth shards do not hold), with ``--nj``
decoding processes. Each utterance goes through the front-end whole, in one pass; clips of
the same length share a batch of at most ``--batch_frames`` frames (a longer clip goes in
windows of that many frames with context on both sides, which gives the same numbers).

Resumable and idempotent like the other stages: a split is done when its marker
``PREP/.done/<emb_dir>_<split>`` matches the front-end's sha1, the preset and the source
split; a rerun skips it. Embeddings go to ``PREP/<emb_dir>/.work/`` clip by clip (an
interrupted split resumes there), the shards to a temporary folder renamed into place at the
end, so no half-written split is ever visible. Clips that cannot be embedded (no source video,
decoding errors, lengths that disagree by more than 2 frames, non-finite values) are skipped
and listed in ``PREP/rejected.tsv`` (stage ``embed``); one summary line closes the stage.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys

import numpy as np
from tqdm import tqdm

from avse.embed import (EmbedError, embed_sequence, file_sha1, load, resolve_preset,
                        run_frontend, video_region)
from avse.recipes.common import (RecipeError, Rejections, Summary, atomic_write, check_names,
                                 is_done, mark_done, params_hash, read_jsonl, run_cli)

STAGE = "embed"
EMB_DIR = "shards_emb"
MAX_DIFF_FRAMES = 2  # video decoded again vs the shards' lips: at most this many frames apart
GENERATED_META = ("format_version", "count", "hours", "speakers", "fields", "num_shards",
                  "shard_pattern", "shard_counts", "sample_rate", "fps", "created")


def frontend_record(path: str, frontend, preset: str) -> dict:
    """What meta.json records of the front-end: file, sha1, type, format, frame_dim, preset."""
    from avse.models.frontends import frontend_info

    info = frontend_info(path)
    return {"file": os.path.abspath(path), "sha1": file_sha1(path), "type": info["type"],
            "format": info["format"], "frame_dim": int(frontend.frame_dim), "preset": preset}


def region_source(meta: dict, preset: str) -> str:
    """``"lips"`` when the split's ``lips.npy`` is the preset's region, else ``"video"``.

    Example
    -------
    >>> region_source({"crop": "voxceleb2", "fields": ["flac", "json", "lips.npy"]}, "voxceleb2")
    'lips'
    >>> region_source({"crop": "voxceleb2", "fields": ["flac", "json", "lips.npy"]}, "lipread")
    'video'
    """
    has_lips = "lips.npy" in meta.get("fields", [])
    return "lips" if meta.get("crop") == preset and has_lips else "video"


def fit_frames(emb: np.ndarray, n_frames: int, max_diff: int = MAX_DIFF_FRAMES) -> np.ndarray:
    """``emb [T, D]`` trimmed, or padded by repeating its last row, to ``n_frames`` rows;
    ValueError when ``T`` is more than ``max_diff`` away.

    Example
    -------
    >>> fit_frames(np.arange(6.0).reshape(3, 2), 4).tolist()
    [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [4.0, 5.0]]
    """
    diff = n_frames - len(emb)
    if abs(diff) > max_diff or len(emb) == 0:
        raise ValueError(f"the video gives {len(emb)} frames but the shards hold {n_frames} "
                         f"(more than {max_diff} apart)")
    if diff > 0:
        return np.concatenate([emb, np.repeat(emb[-1:], diff, axis=0)])
    return emb[:n_frames]


def _decode_video(item):
    """Worker: ``(item, region, None)`` or ``(item, None, reason)``."""
    key, n_frames, media, preset = item
    try:
        return item, video_region(media, preset, n_frames), None
    except Exception as err:  # any unreadable clip is a rejection, never a crash
        return item, None, f"{type(err).__name__}: {err}"


def _decoded(items: list, nj: int, block: int = 8):
    """:func:`_decode_video` over ``items`` with ``nj`` processes, one block decoding ahead
    of the one being consumed (memory bounded by two blocks), in order."""
    if nj <= 1 or len(items) <= 1:
        yield from map(_decode_video, items)
        return
    size = max(block, 2 * nj)
    with mp.get_context("fork").Pool(nj) as pool:
        pending = pool.map_async(_decode_video, items[:size])
        for start in range(size, len(items) + size, size):
            nxt = pool.map_async(_decode_video, items[start:start + size]) \
                if start < len(items) else None
            yield from pending.get()
            pending = nxt


def _sources(split_dir: str, source: str, preset: str, manifest: dict | None, nj: int,
             skip=frozenset()):
    """Yield ``(key, n_frames, path, region or None, reason or None)`` for every utterance
    whose key is not in ``skip``."""
    from avse.data.shards import decode_npy, iter_json, iter_split

    if source == "lips":
        for raw in iter_split(split_dir, decode=False):
            if raw["__key__"] not in skip:
                n = int(json.loads(raw["json"])["num_frames"])
                yield raw["__key__"], n, split_dir, decode_npy(raw["lips.npy"]), None
        return
    items, missing = [], []
    for key, info in iter_json(split_dir):
        if key in skip:
            continue
        entry = manifest.get(key)
        media = entry.get("media") if entry else None
        if not media or media.endswith((".m4a", ".wav", ".flac")):
            missing.append((key, int(info["num_frames"]), media or split_dir,
                            "no source video in manifest.jsonl" if not media else
                            "the source is audio only (no video to crop)"))
        else:
            items.append((key, int(info["num_frames"]), media, preset))
    for key, n, path, reason in missing:
        yield key, n, path, None, reason
    for (key, n, media, _), region, reason in _decoded(items, nj):
        yield key, n, media, region, reason


class _Batcher:
    """Clips waiting for the front-end, grouped by shape; a group goes through when it holds
    ``batch_frames`` frames (or when the buffer holds 4x that). A clip longer than
    ``batch_frames`` goes alone, in windows with context (:func:`avse.embed.embed_sequence`:
    the same numbers as one pass, memory bounded)."""

    def __init__(self, frontend, device, batch_frames: int, done):
        self.fe, self.device, self.batch_frames, self.done = frontend, device, batch_frames, done
        self.groups, self.frames = {}, 0

    def add(self, key, n_frames, path, region):
        if len(region) > self.batch_frames:
            blocks = embed_sequence(self.fe, lambda a, b: region[a:b], len(region), self.device,
                                    window=self.batch_frames)
            self.done(key, n_frames, path, np.concatenate([e for _, e in blocks]))
            return
        group = self.groups.setdefault((region.shape, region.dtype.str), [])
        group.append((key, n_frames, path, region))
        self.frames += len(region)
        if sum(len(r[3]) for r in group) >= self.batch_frames:
            self.flush(group)
        elif self.frames >= 4 * self.batch_frames:
            self.flush(max(self.groups.values(), key=len))

    def flush(self, group=None):
        for g in ([group] if group is not None else list(self.groups.values())):
            per = max(1, self.batch_frames // max(len(g[0][3]), 1)) if g else 1
            while g:
                part, g[:] = g[:per], g[per:]
                emb = run_frontend(self.fe, np.stack([r[3] for r in part]), self.device)
                self.frames -= sum(len(r[3]) for r in part)
                for (key, n_frames, path, _), e in zip(part, emb):
                    self.done(key, n_frames, path, e)
        self.groups = {k: v for k, v in self.groups.items() if v}


def _work_path(work: str, key: str) -> str:
    return os.path.join(work, key + ".npy")


def _embed_clips(split_dir, source, preset, manifest, fe, device, batch_frames, nj, work, split):
    """Pass 1: every clip's embedding in ``work`` (clips already there are kept). Returns
    ``(kept keys, rejected rows, clips computed now)``."""
    kept, rejected, computed = set(), [], [0]

    def done(key, n_frames, path, emb):
        try:
            emb = fit_frames(emb, n_frames)
            if not np.all(np.isfinite(emb)) or np.abs(emb).max() > np.finfo(np.float16).max:
                raise ValueError("the front-end gave NaN/Inf or values beyond float16's range")
        except ValueError as err:
            rejected.append({"key": key, "path": path, "reason": str(err)})
            return
        from avse.data.shards import encode_npy

        atomic_write(_work_path(work, key), encode_npy(emb.astype(np.float16)))
        kept.add(key)
        computed[0] += 1

    batcher = _Batcher(fe, device, batch_frames, done)
    from avse.data.shards import read_meta

    total = read_meta(split_dir)["count"]
    with tqdm(total=total, desc=f"embed {split}", unit="clip", dynamic_ncols=True,
              mininterval=1.0, disable=None) as bar:
        from avse.data.shards import iter_json

        have = {k for k, _ in iter_json(split_dir) if os.path.isfile(_work_path(work, k))}
        kept.update(have)  # resumed: embedded by an interrupted run
        bar.update(len(have))
        for key, n_frames, path, region, reason in _sources(split_dir, source, preset, manifest,
                                                          nj, have):
            if reason is not None:
                rejected.append({"key": key, "path": path, "reason": reason})
            elif len(region) == 0:
                rejected.append({"key": key, "path": path, "reason": "no video frame decoded"})
            else:
                batcher.add(key, n_frames, path, region)
            bar.update(1)
        batcher.flush()
    return kept, rejected, computed[0]


def _samples(split_dir: str, kept: set, work: str, frame_dim: int):
    """Pass 2: the source samples of ``kept`` keys, in shard order, with ``emb.npy``."""
    from avse.data.shards import iter_split

    for raw in iter_split(split_dir, decode=False):
        key = raw["__key__"]
        if key not in kept:
            continue
        info = {**json.loads(raw["json"]), "visual": "emb", "frame_dim": frame_dim}
        with open(_work_path(work, key), "rb") as f:
            yield {"__key__": key, "flac": raw["flac"], "json": info, "emb.npy": f.read()}


def embed_split(out_dir: str, split: str, fe, record: dict, emb_dir: str = EMB_DIR,
                batch_frames: int = 2000, device: str = "cpu", nj: int = 1,
                manifest: dict | None = None):
    """One split: ``(meta, rejected rows, clips computed now, keys handled)``; skipped
    (computed None, the rows its marker recorded) when its marker is current."""
    from avse.data.shards import read_meta, write_speakers_file, write_split
    from avse.video.crops import PRESET_SIZES

    split_dir = os.path.join(out_dir, "shards", split)
    src = read_meta(split_dir)
    preset = record["preset"]
    params = {"frontend_sha1": record["sha1"], "preset": preset, "source": {
        k: src.get(k) for k in ("count", "created", "shard_counts", "crop")}}
    root = os.path.join(out_dir, emb_dir)
    final, marker = os.path.join(root, split), os.path.join(out_dir, ".done", f"{emb_dir}_{split}")
    if is_done(marker, params) and os.path.isfile(os.path.join(final, "meta.json")):
        print(f"[{STAGE}] {final} is up to date; skipping")
        with open(marker) as f:
            rows = json.load(f).get("rejected", [])
        return read_meta(final), rows, None, {r["key"] for r in rows}
    source = region_source(src, preset)
    if source == "video" and manifest is None:
        raise RecipeError(f"{out_dir}/manifest.jsonl not found: the preset {preset!r} is not the "
                          f"shards' crop {src.get('crop')!r}, so the source videos it names are "
                          "read again")
    work_root = os.path.join(root, ".work")
    work = os.path.join(work_root, f"{split}-{params_hash(params)}")
    for name in os.listdir(work_root) if os.path.isdir(work_root) else []:
        if name.startswith(split + "-") and os.path.join(work_root, name) != work:
            shutil.rmtree(os.path.join(work_root, name))  # another front-end's leftovers
    kept, rejected, computed = _embed_clips(split_dir, source, preset, manifest, fe, device,
                                            batch_frames, nj, work, split)
    if not kept:
        raise RecipeError(f"{split_dir}: no utterance could be embedded; see "
                          f"{os.path.join(out_dir, 'rejected.tsv')}")
    extra = {k: v for k, v in src.items() if k not in GENERATED_META}
    extra.update({"split": split, "visual": ["emb"], "crop": preset, "preset": preset,
                  "roi_size": PRESET_SIZES[preset], "frame_dim": int(fe.frame_dim),
                  "frontend": record, "source": {"shards": f"shards/{split}", "region": source,
                                                 "count": src["count"]}})
    tmp, old = os.path.join(root, f".tmp-{split}"), os.path.join(root, f".old-{split}")
    for path in (tmp, old):
        shutil.rmtree(path, ignore_errors=True)
    meta = write_split(_samples(split_dir, kept, work, int(fe.frame_dim)), tmp,
                       max(src["shard_counts"]), src["num_shards"], n_samples=len(kept),
                       extra_meta=extra)
    write_speakers_file(tmp)
    if os.path.isdir(final):
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    mark_done(marker, params, count=meta["count"], rejected=rejected)
    shutil.rmtree(work, ignore_errors=True)
    return meta, rejected, computed, kept | {r["key"] for r in rejected}


def stage_embed(out_dir: str, frontend: str, preset: str | None = None, splits=None,
                batch_frames: int = 2000, device: str = "cpu", nj: int = 1,
                emb_dir: str = EMB_DIR) -> dict:
    """The stage over ``splits`` (default: every split of ``PREP/shards``). Returns
    ``{split: meta}``. RecipeError for a bad front-end, preset or split name."""
    root = os.path.join(out_dir, "shards")
    present = sorted(d for d in os.listdir(root) if os.path.isfile(
        os.path.join(root, d, "meta.json"))) if os.path.isdir(root) else []
    if not present:
        raise RecipeError(f"{root} holds no finished shard split: run the shards stage first")
    splits = check_names(splits or present, present, "--splits")
    if batch_frames < 1 or "/" in emb_dir or emb_dir in ("", ".", "..", "shards"):
        raise RecipeError(f"--batch_frames must be >= 1 and --emb_dir a folder name other than "
                          f"'shards', got {batch_frames}, {emb_dir!r}")
    try:
        fe = load(frontend, device)
        preset = resolve_preset(fe, preset, frontend)
    except EmbedError as err:
        raise RecipeError(str(err)) from None
    record = frontend_record(frontend, fe, preset)
    manifest_path = os.path.join(out_dir, "manifest.jsonl")
    manifest = ({e["key"]: e for e in read_jsonl(manifest_path)}
                if os.path.isfile(manifest_path) else None)
    summary = Summary(STAGE)
    metas, rejected, computed, seconds, handled = {}, [], 0, 0.0, set()
    for split in splits:
        meta, rows, n, keys = embed_split(out_dir, split, fe, record, emb_dir, batch_frames,
                                          device, nj, manifest)
        metas[split], rejected, handled = meta, rejected + rows, handled | keys
        if n is not None:
            computed += n
            seconds += meta["hours"] * 3600
    name = STAGE if emb_dir == EMB_DIR else f"{STAGE}:{emb_dir}"
    table = Rejections(out_dir)  # the rows of the splits not run now stay
    table.replace(name, [r for r in table.for_stage(name) if r["key"] not in handled] + rejected)
    summary.line(sum(m["count"] for m in metas.values()), len(rejected), seconds,
                 processed=computed, note=f"{computed} embedded now, preset {preset}, "
                 f"{record['type']} front-end ({record['format']}), {fe.frame_dim}-d; splits "
                 + ", ".join(f"{s}={m['count']}" for s, m in metas.items())
                 + f" in {os.path.join(out_dir, emb_dir)}")
    return metas


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m avse.recipes.embed",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", required=True, help="the recipe's output (shards/, manifest.jsonl)")
    p.add_argument("--frontend", required=True, help="front-end file (ours or a published "
                                                     "visual_frontend.pt)")
    p.add_argument("--preset", help="crop preset (default: the file's; lipread if published)")
    p.add_argument("--splits", help="comma list (default: every split of OUT/shards)")
    p.add_argument("--batch_frames", type=int, default=2000,
                   help="frames per front-end batch (clips of equal length batched together)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--nj", type=int, default=1, help="video decoding processes")
    p.add_argument("--emb_dir", default=EMB_DIR, help="output folder name under OUT")
    return p


def _run(args) -> None:
    stage_embed(args.out_dir, args.frontend, args.preset, args.splits, args.batch_frames,
                args.device, args.nj, args.emb_dir)


def main(argv=None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
