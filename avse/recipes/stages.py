"""The audio-visual stages every talking-face corpus shares (VoxCeleb2, LRS2, LRS3).

A corpus module finds its utterances and assigns their splits; everything after that is
here, working on ``OUT/manifest.jsonl`` and the files below ``OUT``:

- manifest: :func:`run_manifest` probes every entry (:func:`probe_entry`: readable, the
  streams it needs, usable frame size and rate) and writes ``OUT/manifest.jsonl`` with the
  rejections, the ``.done`` marker and the summary line (:mod:`avse.recipes.manifest`).
  An entry holds ``key`` (no dots: a WebDataset key), ``spk``, ``video``, ``clip``,
  ``subset``, ``split``, ``media`` (the mp4) and optional ``audio`` / ``emb`` files that
  replace the mp4's audio / mouth crop (:func:`manifest_entry`).
- extract: :func:`stage_extract` decodes each entry to 16 kHz mono audio and 88x88 uint8
  mouth ROI at 25 fps (a fixed crop of :data:`avse.video.media.MOUTH_CROPS`), or takes the
  precomputed lip embeddings, aligns them (640 samples a frame) and writes
  ``OUT/extract/<split>/<key>.{flac,lips.npy|emb.npy,json}``.
- shards: :func:`stage_shards` packs each split into ``OUT/shards/<split>/`` + meta.json
  (+ ``speakers.txt``), with optional extra json fields (transcripts, token ids).
- lists: :func:`stage_lists` writes VoxMix lists to ``OUT/lists/``: a given list re-written
  for the utterances that survived, or generated 2-mix / 3-mix lists.

:func:`add_stage_parsers` and :func:`run_stage` give every corpus the same ``extract``,
``shards`` and ``lists`` subcommands. Every stage is idempotent; what it skips goes to
``OUT/rejected.tsv`` with the reason and never stops a run, and a re-run does not try it
again unless ``--retry_rejected``.

Every stage survives a kill (``kill -9``, a power cut): re-run the same command and it
completes. Files are written under a temporary name and renamed (left-over ``*.tmp`` files
are removed on start); the manifest and extract stages journal each finished entry
(:class:`~avse.recipes.common.Journal`) and resume after it; a shard split is written
again unless its ``meta.json`` and ``.done`` marker are complete. Fault points
(:mod:`avse.faults`): ``stage_entry`` after each entry probed or extracted and after each
list written, ``shard_write`` after each shard written, before its rename.
"""
from __future__ import annotations

import json
import os
import random
import sys

import numpy as np

from avse.data.align import EMB_DIM, FPS, SAMPLE_RATE, align_av
from avse.data.lists import generate_mixtures, read_list, write_list
from avse.data.shards import encode_flac, encode_npy, write_speakers_file
from avse.faults import fault_point
from avse.video.media import MOUTH_CROPS, MediaError, decode_media, read_audio
from avse.recipes.common import (
    Journal,
    RecipeError,
    Rejections,
    Summary,
    atomic_write,
    check_names,
    hash_seed,
    is_done,
    mark_done,
    pack_split,
    parallel_map,
    params_hash,
    read_jsonl,
    remove_temp_files,
    shards_note,
)
from avse.recipes.manifest import (  # noqa: F401 (the manifest stage, part of this API)
    id_problem,
    manifest_entry,
    probe_duration,
    probe_entry,
    probe_media,
    run_manifest,
)

DEFAULT_MIXTURES = {"train": 20000, "val": 5000, "test": 3000}  # VoxMix sizes
TRACKED_CROPS = ("landmarks", "lipread")  # presets cut from the tracked face (avse.video.crops)
FACE_CROP = "face"  # the tracked face-centred frames kept; the mouth preset is cut at load time
CROPS = tuple(sorted(MOUTH_CROPS)) + TRACKED_CROPS + (FACE_CROP,)


# --------------------------------------------------------------------------- extract
def extract_utterance(entry: dict, crop: str = "voxceleb2", min_duration: float = 1.0,
                      max_diff_frames: int = 1, detector_device: str = "cpu"):
    """Decode one manifest entry. Returns ``(wav [T] float32 @16 kHz, visual, info)``.

    ``visual`` is uint8 ``[Tv, S, S]`` ROI (the fixed crop ``MOUTH_CROPS[crop]``, or for
    ``crop`` in :data:`TRACKED_CROPS` the face tracked and cropped as ``avse-extract`` does:
    :func:`avse.video.faces.clip_mouths`) or
    float16 ``[Tv, 512]`` embeddings (``entry["emb"]``), and ``T == Tv * 640``. With
    ``crop="face"`` (:data:`FACE_CROP`) ``visual`` is ``{"face.npy": uint8 [Tv, 224, 224]
    face-centred frames (luma), "facelm.npy": float32 [Tv, 5, 2] landmarks in face-frame
    pixels}`` of the tracked face (:func:`clip_faces`), from which any preset is cut at load
    time (:func:`avse.video.crops.crop_faces`). The face detector of the tracked crops runs on
    ``detector_device``, one per device and process (:func:`avse.video.detect.shared_detector`).
    Raises MediaError / AlignmentError / ValueError with a reason.
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
        fixed = MOUTH_CROPS.get(crop, MOUTH_CROPS["voxceleb2"])
        wav, visual = decode_media(entry["media"], want_audio=not entry.get("audio"), crop=fixed)
        if crop in TRACKED_CROPS:  # the face tracked, as avse-extract does on any video
            from avse.video.detect import shared_detector
            from avse.video.faces import clip_mouths

            visual = clip_mouths(entry["media"], crop, shared_detector(detector_device),
                                 n_frames=len(visual))
        elif crop == FACE_CROP:
            from avse.video.detect import shared_detector

            visual, landmarks = clip_faces(entry["media"], n_frames=len(visual),
                                           detector=shared_detector(detector_device))
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
            "visual": "emb" if entry.get("emb") else "lips", "crop": crop}
    if crop == FACE_CROP and not entry.get("emb"):
        visual = {"face.npy": visual, "facelm.npy": landmarks[:len(visual)]}
        info["visual"] = "face"
    return wav, visual, info


def clip_faces(video: str, n_frames: int | None = None, detector=None, **opts):
    """The face-centred frames of a clip's largest face track on its frame grid, as
    :func:`avse.video.faces.clip_mouths` tracks it (grid frames outside the track repeat its
    first / last frame). Returns ``(faces uint8 [Tv, 224, 224], landmarks float32 [Tv, 5, 2]
    in face-frame pixels)``; NoFaceError when no face track is found."""
    from avse.video.faces import largest_track_faces

    faces, landmarks, index = largest_track_faces(video, detector, n_frames, **opts)
    return faces[index], landmarks.astype(np.float32)[index]


def extract_paths(out_dir: str, entry: dict) -> dict:
    """``{field: path}`` of an entry's extracted files (``flac``, the visual ``*.npy``, ``json``).

    Example
    -------
    >>> sorted(extract_paths("OUT", {"split": "test", "key": "id1/v/00001"}))
    ['flac', 'json', 'lips.npy']
    """
    base = os.path.join(out_dir, "extract", entry["split"], entry["key"])
    if entry.get("visual") == "face":  # --crop face: the frames and their landmarks
        return {"flac": base + ".flac", "face.npy": base + ".face.npy",
                "facelm.npy": base + ".facelm.npy", "json": base + ".json"}
    vis = "emb.npy" if entry.get("emb") else "lips.npy"
    return {"flac": base + ".flac", vis: base + "." + vis, "json": base + ".json"}


def _detector_error(device: str, err) -> RecipeError:
    return RecipeError(f"--detector_device {device}: {err}; pass --detector_device cpu (the "
                       "default) or a device this machine has (cuda, cuda:N)")


def _extract_one(task):
    entry, out_dir, opts = task
    if opts["crop"] in TRACKED_CROPS + (FACE_CROP,) and not entry.get("emb"):
        from avse.video.detect import shared_detector

        try:  # the detector of this worker: a failure stops the stage, not one clip
            shared_detector(opts["detector_device"])
        except Exception as err:
            raise _detector_error(opts["detector_device"], f"{type(err).__name__}: {err}") \
                from None
    try:
        wav, visual, info = extract_utterance(entry, **opts)
    except Exception as err:  # rejection with reason; the run goes on
        return entry, None, f"{type(err).__name__}: {err}"
    paths = extract_paths(out_dir, {**entry, "visual": info["visual"]})
    os.makedirs(os.path.dirname(paths["json"]), exist_ok=True)
    for field, path in paths.items():
        if field == "flac":
            atomic_write(path, encode_flac(wav))
        elif field.endswith("npy"):
            atomic_write(path, encode_npy(visual[field] if isinstance(visual, dict) else visual))
    atomic_write(paths["json"], json.dumps(info, sort_keys=True).encode())  # last: done mark
    return entry, info, None


def stage_extract(out_dir: str, nj: int = 1, crop: str = "voxceleb2", min_duration: float = 1.0,
                  max_diff_frames: int = 1, retry_rejected: bool = False,
                  detector_device: str = "cpu") -> list[dict]:
    """Decode every manifest entry not yet extracted (:func:`extract_utterance`).

    ``detector_device`` (``cpu``, ``cuda``, ``cuda:N``) runs the face detector of the tracked
    crops; one unusable here is a RecipeError before any work starts.

    An entry is done when its json exists (written last); one rejected earlier, or by a
    killed run (its journal), stays rejected unless ``retry_rejected``. Returns the infos
    (json) of every kept utterance.
    """
    if crop not in CROPS:
        raise RecipeError(f"unknown --crop {crop!r}; known: {list(CROPS)}")
    if detector_device != "cpu":
        from avse.video.detect import check_device

        try:
            check_device(detector_device)
        except ValueError as err:
            raise _detector_error(detector_device, err) from None
    entries = read_jsonl(os.path.join(out_dir, "manifest.jsonl"))
    remove_temp_files(os.path.join(out_dir, "extract"))  # what a killed run was writing
    rejections = Rejections(out_dir)
    journal = Journal(out_dir, "extract")  # the rejections of a killed run
    old_rejected = {r["key"]: r for r in rejections.for_stage("extract")}
    old_rejected.update({k: {f: r[f] for f in ("key", "path", "reason")}
                         for k, r in journal.load().items()})
    summary = Summary("extract")
    opts = {"crop": crop, "min_duration": min_duration, "max_diff_frames": max_diff_frames,
            "detector_device": detector_device}
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
    journal.start(rejected)
    for entry, info, error in parallel_map(_extract_one, todo, nj, desc="extract", unit="clip"):
        if error:
            rejected.append({"key": entry["key"], "path": entry["media"], "reason": error})
            journal.add(rejected[-1])
        else:
            infos.append(info)
        fault_point("stage_entry")
    rejections.replace("extract", rejected)
    journal.remove()
    summary.line(len(infos), len(rejected), sum(i["duration"] for i in infos),
                 processed=len(todo),
                 note=f"{skipped} already done, {len(todo)} processed")
    return infos


def read_extracted(out_dir: str) -> list[dict]:
    """The infos of the extracted utterances, in manifest order; RecipeError when none."""
    infos = []
    for e in read_jsonl(os.path.join(out_dir, "manifest.jsonl")):
        json_path = extract_paths(out_dir, e)["json"]
        if os.path.isfile(json_path):
            with open(json_path) as f:
                infos.append(json.load(f))
    if not infos:
        raise RecipeError(f"{out_dir}/extract holds no extracted utterance: run stage 2 first")
    return infos


# --------------------------------------------------------------------------- shards
def _samples(out_dir: str, infos, extra_json: dict | None = None):
    for info in infos:
        paths = extract_paths(out_dir, {"split": info["split"], "key": info["key"],
                                        "emb": info["visual"] == "emb", "visual": info["visual"]})
        sample = {"__key__": info["key"]}
        for field, path in paths.items():
            with open(path, "rb") as f:
                sample[field] = f.read()
        if extra_json and info["key"] in extra_json:
            sample["json"] = {**info, **extra_json[info["key"]]}
        yield sample


def _write_speakers(infos):
    def write(split_dir: str) -> None:  # the speaker label list, for speaker classifiers
        write_speakers_file(split_dir, [i["spk"] for i in infos])
    return write


def extracted_crop(out_dir: str, infos, crop: str | None = None) -> str | None:
    """The crop stage 2 used, as each info records it (``crop``); ``crop`` for extracts of
    older runs that do not. RecipeError when the utterances were extracted with different
    crops, or when ``crop`` (older runs) does not name what they hold (face frames or mouth
    crops): meta.json would misname the shards' crop."""
    recorded = sorted({i["crop"] for i in infos if i.get("crop")})
    face = sum(i.get("visual") == "face" for i in infos)
    if len(recorded) > 1 or 0 < face < len(infos):
        raise RecipeError(f"{out_dir}/extract holds utterances of several crops "
                          f"({recorded or 'face frames and mouth crops'}): re-run stage 2 with "
                          "one --crop into a fresh --out_dir")
    used = recorded[0] if recorded else crop
    if (used == FACE_CROP) != bool(face):
        held = "face-centred frames" if face else "mouth crops"
        raise RecipeError(f"{out_dir}/extract holds {held}, not what --crop {used} makes: "
                          "re-run stage 2 with the --crop you want into a fresh --out_dir")
    return used


def stage_shards(out_dir: str, shard_size: int = 1000, shard_multiple: int = 8,
                 seed: int = 0, corpus: str = "voxceleb2", crop: str = "voxceleb2",
                 extra_json: dict | None = None, extra_meta: dict | None = None) -> dict:
    """Pack the extracted utterances of each split into shards. Returns ``{split: meta}``.

    Utterances are shuffled with ``seed``; the shard count is a multiple of
    ``shard_multiple`` unless a split is too small for one sample a shard (then fewer
    shards, none empty). meta.json names the crop stage 2 recorded (:func:`extracted_crop`;
    ``crop`` for extracts of older runs). ``extra_json`` (``key -> dict``) adds fields to the
    samples' json
    (transcripts, token ids); ``extra_meta`` adds fields to every split's meta.json. Both
    are part of the parameters that decide whether a finished split is up to date.
    """
    by_split = {}
    for info in read_extracted(out_dir):
        by_split.setdefault(info["split"], []).append(info)
    crop = extracted_crop(out_dir, [i for infos in by_split.values() for i in infos], crop)
    summary = Summary("shards")
    metas, total, seconds = {}, 0, 0.0
    for split, infos in sorted(by_split.items()):
        random.Random(seed).shuffle(infos)
        params = {"keys": [i["key"] for i in infos], "shard_size": shard_size,
                  "shard_multiple": shard_multiple, "seed": seed}
        if extra_json is not None or extra_meta:
            params["extra"] = params_hash({"meta": extra_meta, "json": [
                (extra_json or {}).get(i["key"]) for i in infos]})
        meta = {"split": split, "corpus": corpus, "visual": sorted({i["visual"] for i in infos}),
                "roi_size": 112 if crop == "lipread" else 88, "crop": crop, **(extra_meta or {})}
        if crop == FACE_CROP:  # the mouth preset is cut at load time (loaders' mouth_crop)
            meta.update(roi_size=None, face_size=224, face_gray="luma")
        metas[split], written = pack_split(
            out_dir, split, params, _samples(out_dir, infos, extra_json), len(infos),
            shard_size, shard_multiple, meta, on_written=_write_speakers(infos))
        if written:
            total += metas[split]["count"]
            seconds += metas[split]["hours"] * 3600
    summary.line(total, 0, seconds, note=shards_note(metas))
    return metas


# --------------------------------------------------------------------------- lists
def parse_mixture_counts(text: str) -> dict:
    """``"train:20000,val:5000,test:3000"`` -> dict.

    Example
    -------
    >>> parse_mixture_counts("train:20,test:6")
    {'train': 20, 'test': 6}
    """
    counts = {}
    for part in text.split(","):
        name, sep, num = part.partition(":")
        if not sep or not num.strip().isdigit():
            raise RecipeError(f"--mixtures expects 'split:count,...', got {text!r}")
        counts[name.strip()] = int(num)
    return counts


def _rewrite_list(lists: str, known: set, lists_dir: str):
    """The rows of the VoxMix list ``lists`` whose sources are all ``known``, written to
    ``lists_dir``; returns ``(path, rows written, rejected rows)``."""
    keep, dropped = [], []
    for n, mix in enumerate(read_list(lists), 1):
        missing = [s.key for s in mix.sources if s.key not in known]
        if missing:
            dropped.append({"key": mix.target.key, "path": f"{lists}:{n}",
                            "reason": f"mixture drops: {', '.join(missing)} rejected "
                                      "or not extracted"})
        else:
            keep.append(mix)
    out = os.path.join(lists_dir, os.path.basename(lists))
    write_list(keep, out)
    fault_point("stage_entry")
    return out, len(keep), dropped


def _generate_lists(infos, mixtures: dict, snr_range, num_speakers, seed: int,
                    lists_dir: str) -> dict:
    """``voxmix_<k>mix.csv`` for each ``k``: ``mixtures[split]`` rows per split, the
    sources of a row from different speakers; returns ``{path: rows}``."""
    by_split, written = {}, {}
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
            rows += generate_mixtures(pool, num, k, snr_range, seed=hash_seed(seed, split, k),
                                      mix_set=split)
        out = os.path.join(lists_dir, f"voxmix_{k}mix.csv")
        write_list(rows, out)
        written[out] = len(rows)
        fault_point("stage_entry")
    return written


def stage_lists(out_dir: str, lists: str | None = None, mixtures=None,
                snr_range=(-10.0, 10.0), num_speakers=(2, 3), seed: int = 0,
                splits=None) -> dict:
    """Write VoxMix lists under ``OUT/lists``. Returns ``{file: row count}``.

    With ``lists``: the given list re-written with the rows whose utterances all survived
    extraction (dropped rows go to rejected.tsv). Without: ``voxmix_<k>mix.csv`` for each
    ``k`` in ``num_speakers``, ``mixtures[split]`` rows per split (a dict, or the text
    ``"split:rows,..."``), from the extracted utterances. With ``splits`` (the corpus's
    split names), the names in ``mixtures`` are checked against them and a split that
    is absent from the manifest is reported.
    """
    if isinstance(mixtures, str):
        mixtures = parse_mixture_counts(mixtures)
    mixtures = dict(DEFAULT_MIXTURES if mixtures is None else mixtures)
    if any(k < 2 for k in num_speakers) or not num_speakers:
        raise RecipeError(f"--num_speakers must be 2 or more, got {list(num_speakers)}")
    if splits is not None:
        check_names(list(mixtures), splits, "--mixtures")
        present = {e["split"] for e in read_jsonl(os.path.join(out_dir, "manifest.jsonl"))}
        for split in sorted(s for s, n in mixtures.items() if n > 0 and s not in present):
            print(f"[lists] {split}: not in the manifest (see --splits / --subsets); "
                  f"no {split} rows", file=sys.stderr)
    summary = Summary("lists", unit="rows")
    infos = read_extracted(out_dir)
    lists_dir = os.path.join(out_dir, "lists")
    params = {"lists": lists, "mixtures": mixtures, "snr_range": list(snr_range),
              "num_speakers": list(num_speakers), "seed": seed,
              "keys": sorted(i["key"] for i in infos)}
    marker = os.path.join(out_dir, ".done", "lists")
    if is_done(marker, params):
        print(f"[lists] {lists_dir} is up to date; skipping")
        with open(marker) as f:
            return json.load(f)["files"]
    dropped = []
    if lists:
        out, n_rows, dropped = _rewrite_list(lists, {i["key"] for i in infos}, lists_dir)
        written = {out: n_rows}
    else:
        written = _generate_lists(infos, mixtures, snr_range, num_speakers, seed, lists_dir)
    Rejections(out_dir).replace("lists", dropped)
    mark_done(marker, params, files=written)
    summary.line(sum(written.values()), len(dropped), processed=sum(written.values()),
                 note=", ".join(f"{os.path.basename(k)}: {v} rows" for k, v in written.items()))
    return written


# --------------------------------------------------------------------------- command line
def add_stage_parsers(sub, common, crop: str, mixtures: str, numbers=(2, 3, 4)) -> dict:
    """The ``extract``, ``shards`` and ``lists`` subcommands (stage ``numbers``); returns them
    by name, for a corpus to add its own options."""
    parsers = {}
    p = parsers["extract"] = sub.add_parser(
        "extract", parents=[common], help=f"stage {numbers[0]}: decode audio + mouth ROI")
    p.add_argument("--crop", default=crop, help=f"mouth crop preset {list(CROPS)} (landmarks, "
                   "lipread: the face tracked, as avse-extract does on real videos; face: "
                   "the tracked face-centred frames kept, any preset cut at load time)")
    p.add_argument("--min_duration", type=float, default=1.0, help="seconds")
    p.add_argument("--max_diff_frames", type=int, default=1)
    p.add_argument("--retry_rejected", action="store_true")
    p.add_argument("--detector_device", default="cpu", help="torch device of the face detector "
                   "of the tracked crops: cpu, cuda, cuda:N (one detector per worker)")
    p = parsers["shards"] = sub.add_parser(
        "shards", parents=[common], help=f"stage {numbers[1]}: write WebDataset shards")
    p.add_argument("--shard_size", type=int, default=1000, help="max utterances per shard")
    p.add_argument("--shard_multiple", type=int, default=8,
                   help="shard count is a multiple of this (ranks x workers)")
    p = parsers["lists"] = sub.add_parser(
        "lists", parents=[common], help=f"stage {numbers[2]}: VoxMix mixture lists")
    p.add_argument("--mixtures", default=mixtures, help="rows per split, 'split:count,...'")
    p.add_argument("--num_speakers", type=int, nargs="+", default=[2, 3])
    p.add_argument("--snr_range", type=float, nargs=2, default=(-10.0, 10.0))
    return parsers


def run_stage(args, shards, splits=None) -> None:
    """Run the ``extract``, ``shards`` (``shards(args)``, the corpus's) or ``lists``
    subcommand parsed by :func:`add_stage_parsers`."""
    if args.stage == "extract":
        stage_extract(args.out_dir, args.nj, args.crop, args.min_duration,
                      args.max_diff_frames, args.retry_rejected, args.detector_device)
    elif args.stage == "shards":
        shards(args)
    elif args.stage == "lists":
        stage_lists(args.out_dir, getattr(args, "lists", None), args.mixtures,
                    tuple(args.snr_range), tuple(args.num_speakers), args.seed, splits)
