"""VoxCeleb2 -> WebDataset shards + VoxMix mixture lists.

Stages (``recipes/VoxCeleb2/run.sh`` calls them in order; each is idempotent):

1. ``manifest``: scan ``CORPUS/{dev,test}/mp4/<spk>/<video>/<clip>.mp4`` (or the
   audio-only ``CORPUS/{dev,test}/aac/...m4a`` tree when there is no mp4 tree), probe
   durations, assign splits (``test`` from the test set; ``train``/``val`` from dev, whole
   videos to val), optionally restrict to the utterances of a VoxMix list, and write
   ``OUT/manifest.jsonl``.
2. ``extract``: decode each clip with PyAV to 16 kHz mono audio and 88x88 grayscale mouth
   ROI at 25 fps (fixed crop ``MOUTH_CROPS["voxceleb2"]``), or take precomputed lip
   embeddings from ``--visual_path`` (``<spk>/<video>/<clip>.npy``, float ``[T, 512]``);
   align audio to video (640 samples per frame, at most one frame trimmed or padded)
   and write ``OUT/extract/<split>/<spk>/<video>/<clip>.{flac,lips.npy|emb.npy,json}``.
3. ``shards``: pack each split into ``OUT/shards/<split>/shard-%06d.tar`` + ``meta.json``.
4. ``lists``: write VoxMix lists to ``OUT/lists/``: the ``--lists`` file re-written for
   the utterances that survived, or generated 2-mix and 3-mix lists.

Clips that cannot be read, are truncated, too short, or whose audio and video disagree
are skipped and listed in ``OUT/rejected.tsv``; they never stop a run.

Example
-------
``prepare_voxceleb2("corpus", "data/vox2", nj=2)`` runs all four stages.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys

import numpy as np

from avse.data import lists as voxmix
from avse.data.align import EMB_DIM, FPS, SAMPLE_RATE, align_av
from avse.data.shards import encode_flac, encode_npy, write_split
from avse.data.video import MOUTH_CROPS, MediaError, decode_media, read_audio
from avse.recipes.common import (
    common_parser,
    run_cli,
    RecipeError,
    Rejections,
    Summary,
    is_done,
    mark_done,
    parallel_map,
    params_hash,
    read_jsonl,
    write_jsonl,
)

SUBSETS = ("dev", "test")
MEDIA_TREES = (("mp4", ".mp4"), ("aac", ".m4a"))
LAYOUT_HINT = "CORPUS/{dev,test}/mp4/<spk>/<video>/<clip>.mp4 (or .../aac/...m4a)"


# --------------------------------------------------------------------------- manifest
def scan_corpus(corpus_dir: str, subsets=SUBSETS) -> list[dict]:
    """List every utterance of a VoxCeleb2-layout tree.

    Returns dicts with ``key`` (``spk/video/clip``), ``spk``, ``video``, ``clip``,
    ``subset`` and ``media`` (the mp4, or the m4a when there is no mp4 tree).
    Raises RecipeError when the folder is missing or holds no clip.
    """
    if not os.path.isdir(corpus_dir):
        raise RecipeError(f"--corpus_dir {corpus_dir} does not exist (expected {LAYOUT_HINT})")
    entries = []
    for subset in subsets:
        for tree, ext in MEDIA_TREES:
            root = os.path.join(corpus_dir, subset, tree)
            if not os.path.isdir(root):
                continue
            for spk in sorted(os.listdir(root)):
                spk_dir = os.path.join(root, spk)
                if not os.path.isdir(spk_dir):
                    continue
                for video in sorted(os.listdir(spk_dir)):
                    vid_dir = os.path.join(spk_dir, video)
                    if not os.path.isdir(vid_dir):
                        continue
                    for name in sorted(os.listdir(vid_dir)):
                        if name.endswith(ext):
                            clip = name[: -len(ext)]
                            entries.append({
                                "key": f"{spk}/{video}/{clip}", "spk": spk, "video": video,
                                "clip": clip, "subset": subset,
                                "media": os.path.join(vid_dir, name),
                            })
            break  # the mp4 tree wins over the aac tree of the same subset
    if not entries:
        raise RecipeError(f"no clips found under {corpus_dir}: expected {LAYOUT_HINT}")
    bad = [e["key"] for e in entries if "." in e["key"]]
    if bad:
        raise RecipeError(f"utterance ids must not contain dots (WebDataset keys): {bad[:3]}")
    return entries


def assign_split(entry: dict, val_fraction: float, seed: int) -> str:
    """``test`` for the test set; dev videos go to ``val`` with probability ``val_fraction``."""
    if entry["subset"] == "test":
        return "test"
    digest = hashlib.md5(f"{seed}/{entry['spk']}/{entry['video']}".encode()).hexdigest()
    return "val" if int(digest[:8], 16) / 0xFFFFFFFF < val_fraction else "train"


def _find_file(candidates):
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def audio_candidates(audio_path: str, entry: dict) -> list[str]:
    """Where an utterance's audio may lie under ``--audio_path`` (official aac tree or wav tree)."""
    key, subset = entry["key"], entry["subset"]
    return [os.path.join(audio_path, subset, "aac", key + ".m4a"),
            os.path.join(audio_path, subset, "wav", key + ".wav")] + [
        os.path.join(audio_path, key + ext) for ext in (".wav", ".flac", ".m4a")]


def visual_candidates(visual_path: str, entry: dict) -> list[str]:
    """Where an utterance's lip embedding may lie under ``--visual_path``."""
    return [os.path.join(visual_path, entry["key"] + ".npy"),
            os.path.join(visual_path, entry["subset"], entry["key"] + ".npy")]


def probe_duration(path: str) -> float:
    """Duration in seconds from the container header (no decoding)."""
    if path.endswith((".wav", ".flac")):
        import soundfile as sf

        return float(sf.info(path).duration)
    import av

    try:
        with av.open(path) as container:
            if container.duration is not None:
                return container.duration / 1_000_000
            stream = (container.streams.video or container.streams.audio)[0]
            return float(stream.duration * stream.time_base)
    except Exception as err:
        raise MediaError(f"{path}: cannot open ({err})") from err


def _probe_task(entry):
    try:
        entry["duration"] = round(probe_duration(entry["audio"] or entry["media"]), 4)
        return entry, None
    except Exception as err:  # any unreadable file is a rejection, never a crash
        return entry, str(err)


def stage_manifest(corpus_dir: str, out_dir: str, lists: str | None = None,
                   audio_path: str | None = None, visual_path: str | None = None,
                   val_fraction: float = 0.05, seed: int = 0, nj: int = 1) -> list[dict]:
    """Stage 1: write ``OUT/manifest.jsonl`` (one utterance a line). Returns the entries."""
    for name, path in (("--audio_path", audio_path), ("--visual_path", visual_path)):
        if path and not os.path.isdir(path):
            raise RecipeError(f"{name} {path} does not exist")
    params = {"corpus_dir": os.path.abspath(corpus_dir), "lists": lists,
              "audio_path": audio_path, "visual_path": visual_path,
              "val_fraction": val_fraction, "seed": seed}
    manifest_path = os.path.join(out_dir, "manifest.jsonl")
    marker = os.path.join(out_dir, ".done", "manifest")
    if lists:
        params["lists_mtime"] = os.path.getmtime(lists) if os.path.isfile(lists) else None
    if is_done(marker, params) and os.path.isfile(manifest_path):
        print(f"[manifest] {manifest_path} is up to date; skipping")
        return read_jsonl(manifest_path)
    summary = Summary("manifest")
    entries = scan_corpus(corpus_dir)
    if lists:
        mixtures = voxmix.read_list(lists)
        voxmix.check_known(mixtures, {e["key"] for e in entries}, where=f"--lists {lists}")
        wanted = {}
        for mix in mixtures:
            for src in mix.sources:
                wanted.setdefault(src.key, src.set)
        entries = [e for e in entries if e["key"] in wanted]
        for e in entries:
            e["split"] = wanted[e["key"]]
    else:
        for e in entries:
            e["split"] = assign_split(e, val_fraction, seed)
    rejected = []
    for e in entries:
        e["audio"] = e["emb"] = None
        if audio_path:
            e["audio"] = _find_file(audio_candidates(audio_path, e))
            if e["audio"] is None:
                rejected.append({"key": e["key"], "path": e["media"],
                                 "reason": f"no audio file under --audio_path {audio_path}"})
        if visual_path:
            e["emb"] = _find_file(visual_candidates(visual_path, e))
            if e["emb"] is None:
                rejected.append({"key": e["key"], "path": e["media"],
                                 "reason": f"no lip embedding <spk>/<video>/<clip>.npy under "
                                           f"--visual_path {visual_path}"})
    if not visual_path and any(e["media"].endswith(".m4a") for e in entries):
        raise RecipeError(f"{corpus_dir} has an audio-only (aac) tree: give --visual_path with "
                          "lip embeddings, or use the mp4 tree")
    bad = {r["key"] for r in rejected}
    entries = [e for e in entries if e["key"] not in bad]
    return finish_manifest(out_dir, entries, rejected, marker, params, summary, nj)


def finish_manifest(out_dir: str, entries, rejected: list, marker: str, params: dict,
                    summary: Summary, nj: int = 1, task=_probe_task) -> list[dict]:
    """Shared end of every recipe's manifest stage.

    Runs ``task(entry) -> (entry, error or None)`` (default: probe the duration) on every
    entry, appends the failures to ``rejected`` (rows found earlier), writes
    ``OUT/manifest.jsonl``, the manifest rows of rejected.tsv, the done marker and the
    summary line. Returns the kept entries. Raises RecipeError (after writing
    rejected.tsv) when no entry is kept.
    """
    kept = []
    for entry, error in parallel_map(task, entries, nj, desc="manifest", unit="clip"):
        if error:
            rejected.append({"key": entry["key"], "path": entry["media"], "reason": error})
        else:
            kept.append(entry)
    Rejections(out_dir).replace("manifest", rejected)
    if not kept:
        raise RecipeError(f"all {len(rejected)} clips were rejected; see "
                          f"{os.path.join(out_dir, 'rejected.tsv')}")
    kept.sort(key=lambda e: (e["split"], e["key"]))
    write_jsonl(kept, os.path.join(out_dir, "manifest.jsonl"))
    splits = {s: sum(e["split"] == s for e in kept) for s in sorted({e["split"] for e in kept})}
    mark_done(marker, params, count=len(kept))
    summary.line(len(kept), len(rejected), sum(e["duration"] for e in kept),
                 note="splits " + ", ".join(f"{k}={v}" for k, v in splits.items()))
    return kept


# --------------------------------------------------------------------------- extract
def extract_utterance(entry: dict, crop: str = "voxceleb2", min_duration: float = 1.0,
                      max_diff_frames: int = 1):
    """Decode one utterance. Returns ``(wav [T] float32, visual, info)``.

    ``visual`` is uint8 ``[Tv, 88, 88]`` ROI or float16 ``[Tv, 512]`` embeddings, and
    ``T == Tv * 640``. Raises MediaError / AlignmentError / ValueError with a reason.
    """
    if entry.get("emb"):
        emb = np.load(entry["emb"], allow_pickle=False)
        if emb.ndim != 2 or emb.shape[1] != EMB_DIM or not np.issubdtype(emb.dtype, np.floating):
            raise ValueError(f"{entry['emb']}: lip embedding must be float [T, {EMB_DIM}], "
                             f"got {emb.dtype} {list(emb.shape)}")
        if not np.all(np.isfinite(emb)):
            raise ValueError(f"{entry['emb']}: lip embedding has NaN or Inf values")
        visual = emb.astype(np.float16)
        wav = read_audio(entry["audio"] or entry["media"])
    else:
        wav, visual = decode_media(entry["media"], want_audio=not entry.get("audio"),
                                   crop=MOUTH_CROPS[crop])
        if entry.get("audio"):
            wav = read_audio(entry["audio"])
    declared = float(entry.get("duration") or 0.0)
    decoded = max(len(wav) / SAMPLE_RATE, len(visual) / FPS)
    if declared and decoded < declared - 0.2:
        raise MediaError(f"truncated: decoded {decoded:.2f} s of the declared {declared:.2f} s")
    wav, visual = align_av(wav, visual, max_diff_frames)
    duration = len(visual) / FPS
    if duration < min_duration:
        raise ValueError(f"too short: {duration:.2f} s < --min_duration {min_duration} s")
    peak = float(np.max(np.abs(wav))) if len(wav) else 0.0
    if peak == 0.0:
        raise ValueError("silent: the audio is all zeros")
    info = {"key": entry["key"], "spk": entry["spk"], "video": entry["video"],
            "clip": entry["clip"], "subset": entry["subset"], "split": entry["split"],
            "duration": round(duration, 4), "num_frames": int(len(visual)),
            "num_samples": int(len(wav)), "sr": SAMPLE_RATE, "fps": FPS,
            "visual": "emb" if entry.get("emb") else "lips"}
    return wav, visual, info


def extract_paths(out_dir: str, entry: dict) -> dict:
    base = os.path.join(out_dir, "extract", entry["split"], entry["key"])
    vis = "emb.npy" if entry.get("emb") else "lips.npy"
    return {"flac": base + ".flac", vis: base + "." + vis, "json": base + ".json"}


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _extract_task(task):
    entry, out_dir, opts = task
    try:
        wav, visual, info = extract_utterance(entry, **opts)
    except Exception as err:  # rejection with reason; the run goes on
        return entry, None, f"{type(err).__name__}: {err}"
    paths = extract_paths(out_dir, entry)
    os.makedirs(os.path.dirname(paths["json"]), exist_ok=True)
    for field, path in paths.items():
        if field == "flac":
            _atomic_write(path, encode_flac(wav))
        elif field.endswith("npy"):
            _atomic_write(path, encode_npy(visual))
    _atomic_write(paths["json"], json.dumps(info, sort_keys=True).encode())  # last: done mark
    return entry, info, None


def stage_extract(out_dir: str, nj: int = 1, crop: str = "voxceleb2", min_duration: float = 1.0,
                  max_diff_frames: int = 1, retry_rejected: bool = False) -> list[dict]:
    """Stage 2: decode every manifest entry not yet extracted. Returns the kept infos."""
    if crop not in MOUTH_CROPS:
        raise RecipeError(f"unknown --crop {crop!r}; known: {sorted(MOUTH_CROPS)}")
    entries = read_jsonl(os.path.join(out_dir, "manifest.jsonl"))
    rejections = Rejections(out_dir)
    old_rejected = {r["key"]: r for r in rejections.for_stage("extract")}
    summary = Summary("extract")
    opts = {"crop": crop, "min_duration": min_duration, "max_diff_frames": max_diff_frames}
    todo, infos, rejected = [], [], []
    for e in entries:
        json_path = extract_paths(out_dir, e)["json"]
        if os.path.isfile(json_path):
            with open(json_path) as f:
                infos.append(json.load(f))
        elif e["key"] in old_rejected and not retry_rejected:
            rejected.append(old_rejected[e["key"]])
        else:
            todo.append((e, out_dir, opts))
    skipped = len(infos) + len(rejected)
    for entry, info, error in parallel_map(_extract_task, todo, nj, desc="extract", unit="clip"):
        if error:
            rejected.append({"key": entry["key"], "path": entry["media"], "reason": error})
        else:
            infos.append(info)
    rejections.replace("extract", rejected)
    summary.line(len(infos), len(rejected), sum(i["duration"] for i in infos),
                 processed=len(todo),
                 note=f"{skipped} already done, {len(todo)} processed")
    return infos


# --------------------------------------------------------------------------- shards
def _sample_reader(out_dir: str, infos, extra_json: dict | None = None):
    for info in infos:
        paths = extract_paths(out_dir, {"split": info["split"], "key": info["key"],
                                        "emb": info["visual"] == "emb"})
        sample = {"__key__": info["key"]}
        for field, path in paths.items():
            with open(path, "rb") as f:
                sample[field] = f.read()
        if extra_json and info["key"] in extra_json:
            sample["json"] = {**info, **extra_json[info["key"]]}
        yield sample


def stage_shards(out_dir: str, shard_size: int = 1000, shard_multiple: int = 8,
                 seed: int = 0, corpus: str = "voxceleb2", crop: str = "voxceleb2",
                 extra_json: dict | None = None, extra_meta: dict | None = None) -> dict:
    """Stage 3: pack the extracted utterances of each split into shards. Returns metas.

    ``extra_json`` (``key -> dict``) adds fields to the samples' json (transcripts, token
    ids); ``extra_meta`` adds fields to every split's meta.json. Both are part of the
    parameters that decide whether a finished split is up to date.
    """
    entries = read_jsonl(os.path.join(out_dir, "manifest.jsonl"))
    summary = Summary("shards")
    metas, total, seconds = {}, 0, 0.0
    by_split = {}
    for e in entries:
        json_path = extract_paths(out_dir, e)["json"]
        if os.path.isfile(json_path):
            with open(json_path) as f:
                by_split.setdefault(e["split"], []).append(json.load(f))
    if not by_split:
        raise RecipeError(f"{out_dir}/extract holds no extracted utterance: run stage 2 first")
    for split, infos in sorted(by_split.items()):
        random.Random(seed).shuffle(infos)
        split_dir = os.path.join(out_dir, "shards", split)
        params = {"keys": [i["key"] for i in infos], "shard_size": shard_size,
                  "shard_multiple": shard_multiple, "seed": seed}
        if extra_json is not None or extra_meta:
            params["extra"] = params_hash({"meta": extra_meta, "json": [
                (extra_json or {}).get(i["key"]) for i in infos]})
        marker = os.path.join(out_dir, ".done", f"shards_{split}")
        if is_done(marker, params) and os.path.isfile(os.path.join(split_dir, "meta.json")):
            with open(os.path.join(split_dir, "meta.json")) as f:
                metas[split] = json.load(f)
            print(f"[shards] {split_dir} is up to date; skipping")
            continue
        visual = sorted({i["visual"] for i in infos})
        meta = write_split(_sample_reader(out_dir, infos, extra_json), split_dir, shard_size,
                           shard_multiple, n_samples=len(infos),
                           extra_meta={"split": split, "corpus": corpus, "visual": visual,
                                       "roi_size": 88, "crop": crop, **(extra_meta or {})})
        with open(os.path.join(split_dir, "speakers.txt"), "w") as f:  # speaker label list
            f.write("".join(spk + "\n" for spk in sorted({i["spk"] for i in infos})))
        mark_done(marker, params, count=meta["count"])
        metas[split] = meta
        total += meta["count"]
        seconds += meta["hours"] * 3600
    summary.line(total, 0, seconds, note="splits " + ", ".join(
        f"{s}={m['count']} in {m['num_shards']} shards" for s, m in metas.items()))
    return metas


# --------------------------------------------------------------------------- lists
DEFAULT_MIXTURES = {"train": 20000, "val": 5000, "test": 3000}  # VoxMix sizes


def parse_mixture_counts(text: str) -> dict:
    """``"train:20000,val:5000,test:3000"`` -> dict."""
    counts = {}
    for part in text.split(","):
        name, sep, num = part.partition(":")
        if not sep or not num.strip().isdigit():
            raise RecipeError(f"--mixtures expects 'split:count,...', got {text!r}")
        counts[name.strip()] = int(num)
    return counts


def stage_lists(out_dir: str, lists: str | None = None, mixtures: dict | None = None,
                snr_range=(-10.0, 10.0), num_speakers=(2, 3), seed: int = 0) -> dict:
    """Stage 4: write VoxMix lists under ``OUT/lists``. Returns ``{file: row count}``.

    With ``lists``: the given list re-written with the rows whose utterances all survived
    extraction (dropped rows go to rejected.tsv). Without: ``voxmix_<k>mix.csv`` for each
    ``k`` in ``num_speakers``, ``mixtures[split]`` rows per split, from extracted utterances.
    """
    mixtures = dict(DEFAULT_MIXTURES if mixtures is None else mixtures)
    summary = Summary("lists", unit="rows")
    infos = []
    for e in read_jsonl(os.path.join(out_dir, "manifest.jsonl")):
        json_path = extract_paths(out_dir, e)["json"]
        if os.path.isfile(json_path):
            with open(json_path) as f:
                infos.append(json.load(f))
    if not infos:
        raise RecipeError(f"{out_dir}/extract holds no extracted utterance: run stage 2 first")
    lists_dir = os.path.join(out_dir, "lists")
    params = {"lists": lists, "mixtures": mixtures, "snr_range": list(snr_range),
              "num_speakers": list(num_speakers), "seed": seed,
              "keys": sorted(i["key"] for i in infos)}
    marker = os.path.join(out_dir, ".done", "lists")
    if is_done(marker, params):
        print(f"[lists] {lists_dir} is up to date; skipping")
        with open(marker) as f:
            return json.load(f)["files"]
    written, dropped = {}, []
    if lists:
        rows = voxmix.read_list(lists)
        known = {i["key"] for i in infos}
        keep = []
        for n, mix in enumerate(rows, 1):
            missing = [s.key for s in mix.sources if s.key not in known]
            if missing:
                dropped.append({"key": mix.target.key, "path": f"{lists}:{n}",
                                "reason": f"mixture drops: {', '.join(missing)} rejected "
                                          "or not extracted"})
            else:
                keep.append(mix)
        out = os.path.join(lists_dir, os.path.basename(lists))
        voxmix.write_list(keep, out)
        written[out] = len(keep)
    else:
        by_split = {}
        for info in infos:
            by_split.setdefault(info["split"], []).append(
                {"key": info["key"], "spk": info["spk"], "set": info["split"],
                 "duration": info["duration"]})
        for k in num_speakers:
            rows = []
            for split, num in mixtures.items():
                pool = by_split.get(split, [])
                if num <= 0 or not pool:
                    continue
                if len({u["spk"] for u in pool}) < k:
                    print(f"[lists] {split}: fewer than {k} speakers; no {k}-mix rows",
                          file=sys.stderr)
                    continue
                rows += voxmix.generate_mixtures(pool, num, k, snr_range,
                                                 seed=hash_seed(seed, split, k), mix_set=split)
            out = os.path.join(lists_dir, f"voxmix_{k}mix.csv")
            voxmix.write_list(rows, out)
            written[out] = len(rows)
    Rejections(out_dir).replace("lists", dropped)
    mark_done(marker, params, files=written)
    summary.line(sum(written.values()), len(dropped), processed=sum(written.values()),
                 note=", ".join(f"{os.path.basename(k)}: {v} rows" for k, v in written.items()))
    return written


def hash_seed(seed: int, *parts) -> int:
    """A stable integer seed derived from ``seed`` and names (same on every machine)."""
    return int(hashlib.md5("/".join(map(str, (seed,) + parts)).encode()).hexdigest()[:8], 16)


# --------------------------------------------------------------------------- driver
def prepare_voxceleb2(corpus_dir: str, out_dir: str, nj: int = 1, lists: str | None = None,
                      audio_path: str | None = None, visual_path: str | None = None,
                      shard_size: int = 1000, shard_multiple: int = 8, seed: int = 0,
                      mixtures: dict | None = None, stage: int = 1, stop_stage: int = 4):
    """Run stages ``stage..stop_stage`` (see the module docstring)."""
    if stage <= 1 <= stop_stage:
        stage_manifest(corpus_dir, out_dir, lists, audio_path, visual_path, seed=seed, nj=nj)
    if stage <= 2 <= stop_stage:
        stage_extract(out_dir, nj=nj)
    if stage <= 3 <= stop_stage:
        stage_shards(out_dir, shard_size, shard_multiple, seed)
    if stage <= 4 <= stop_stage:
        stage_lists(out_dir, lists, mixtures, seed=seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m avse.recipes.voxceleb2",
        description="VoxCeleb2 -> WebDataset shards + VoxMix lists (one subcommand per stage).")
    sub = parser.add_subparsers(dest="stage", required=True)
    common = common_parser()
    p = sub.add_parser("manifest", parents=[common], help="stage 1: scan the corpus")
    p.add_argument("--corpus_dir", required=True, help=LAYOUT_HINT)
    p.add_argument("--lists", help="VoxMix csv: keep only the utterances it names")
    p.add_argument("--audio_path", help="official aac tree or <spk>/<video>/<clip>.wav tree")
    p.add_argument("--visual_path", help="lip embeddings <spk>/<video>/<clip>.npy [T, 512]")
    p.add_argument("--val_fraction", type=float, default=0.05)
    p = sub.add_parser("extract", parents=[common], help="stage 2: decode audio + lips")
    p.add_argument("--crop", default="voxceleb2", help=f"mouth crop preset {sorted(MOUTH_CROPS)}")
    p.add_argument("--min_duration", type=float, default=1.0, help="seconds")
    p.add_argument("--max_diff_frames", type=int, default=1)
    p.add_argument("--retry_rejected", action="store_true")
    p = sub.add_parser("shards", parents=[common], help="stage 3: write WebDataset shards")
    p.add_argument("--shard_size", type=int, default=1000, help="max utterances per shard")
    p.add_argument("--shard_multiple", type=int, default=8,
                   help="shard count is a multiple of this (ranks x workers)")
    p = sub.add_parser("lists", parents=[common], help="stage 4: VoxMix mixture lists")
    p.add_argument("--lists", help="VoxMix csv to re-write for the kept utterances")
    p.add_argument("--mixtures", default="train:20000,val:5000,test:3000",
                   help="rows per split for generated lists")
    p.add_argument("--snr_range", type=float, nargs=2, default=(-10.0, 10.0))
    p.add_argument("--num_speakers", type=int, nargs="+", default=[2, 3])
    return parser


def _run(args) -> None:
    if args.stage == "manifest":
        stage_manifest(args.corpus_dir, args.out_dir, args.lists, args.audio_path,
                       args.visual_path, args.val_fraction, args.seed, args.nj)
    elif args.stage == "extract":
        stage_extract(args.out_dir, args.nj, args.crop, args.min_duration,
                      args.max_diff_frames, args.retry_rejected)
    elif args.stage == "shards":
        stage_shards(args.out_dir, args.shard_size, args.shard_multiple, args.seed)
    elif args.stage == "lists":
        stage_lists(args.out_dir, args.lists, parse_mixture_counts(args.mixtures),
                    tuple(args.snr_range), tuple(args.num_speakers), args.seed)


def main(argv=None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
