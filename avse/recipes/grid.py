"""GRID audio-visual corpus (evaluation corpus) -> test shards with word timings + 2/3-mix lists.

Stages (``recipes/GRID/run.sh`` calls them in order; each is idempotent):

1. ``manifest``: find each speaker's videos (``s<k>/<utt>.mpg`` and the release variants of
   :data:`VIDEO_DIRS`), its 25 kHz (or 50 kHz) wav and its ``.align`` file; parse the
   alignment (``start end word`` in 25 kHz samples, 1000 a video frame; ``sil`` / ``sp``
   dropped) into ``text`` and ``words`` (seconds); probe the video and the wav.
2. ``extract``: 16 kHz mono audio resampled from the wav; the face tracked (GRID video is
   not face-centred) and, by default (``--crop face``), the track's face-centred frames and
   landmarks kept (``face.npy``, ``facelm.npy``): the crop preset of the model under
   evaluation is cut from them at load time (the loaders' ``mouth_crop``; the cross-corpus
   table and ``test_sets`` pass the model's), so one staging serves models trained on any
   crop. ``--crop landmarks`` / ``lipread`` (:data:`avse.recipes.stages.TRACKED_CROPS`)
   store one preset's mouth crops instead, cut as ``avse-extract`` does.
3. ``shards``: ``OUT/shards/test/`` + ``meta.json``; the json carries ``text``, ``conf``
   (None) and ``words`` (``[[WORD, start_s, end_s], ...]``).
4. ``lists``: ``voxmix_2mix.csv`` / ``voxmix_3mix.csv`` test lists, sources from different
   speakers, never two utterances of the same sentence, each interferer the candidate
   (of :data:`CANDIDATES` drawn) sharing the fewest words with the sources already chosen
   (GRID sentences share one grammar); seeded (:func:`grid_mixtures`).

Every speaker goes to the ``test`` split (GRID is an evaluation corpus here). Keys are
``s<k>/test/<utt>``. What cannot be used goes to ``OUT/rejected.tsv`` with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re

from avse.data.lists import Mixture, Source, write_list
from avse.recipes import stages
from avse.recipes.common import (
    RecipeError,
    Rejections,
    Summary,
    hash_seed,
    is_done,
    mark_done,
    read_jsonl,
    recipe_parser,
    run_cli,
)
from avse.recipes.transcripts import transcript_fields

LAYOUT_HINT = ("CORPUS/s<k>/<utt>.mpg (or s<k>/video/mpg_6000/, s<k>.mpg_vcd/s<k>/, video/s<k>/), "
               "CORPUS/audio_25k/s<k>/<utt>.wav (or audio_50k), "
               "CORPUS/alignments/s<k>/<utt>.align (or align/s<k>/)")
SPEAKER = re.compile(r"^(s\d+)(?:\.mpg_(?:vcd|6000))?$")
#: folders below a speaker folder where its videos may lie, in order of preference
VIDEO_DIRS = ("", "video/mpg_6000", "mpg_6000", "video/mpg_vcd", "mpg_vcd", "video")
VIDEO_ROOTS = ("", "video", "videos")  # folders of CORPUS holding the speaker folders
AUDIO_DIRS = ("audio_25k", "audio_50k", "audio")
ALIGN_DIRS = ("alignments", "align")
SILENCE = ("sil", "sp")
SAMPLES_PER_SECOND = 25000.0  # the alignment unit: 25 kHz samples (1000 a 25 fps frame)
CANDIDATES = 20  # interferers drawn per source; the one sharing fewest words is taken
DEFAULT_MIXTURES = "test:3000"
DEFAULT_CROP = "face"  # the tracked face-centred frames; any preset cut at load time


class AlignError(ValueError):
    """A ``.align`` file is missing or malformed (the message names file and line)."""


def parse_align(text: str, where: str = "<align>") -> dict:
    """``{"text", "conf": None, "words": [[WORD, start_s, end_s], ...]}`` from a GRID alignment.

    Example
    -------
    >>> a = parse_align("0 23750 sil\\n23750 29500 bin\\n29500 31000 sp\\n31000 36000 blue\\n")
    >>> a["text"], a["words"][1]
    ('BIN BLUE', ['BLUE', 1.24, 1.44])
    """
    words = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 3:
                raise ValueError
            start, end = int(parts[0]), int(parts[1])
        except ValueError:
            raise AlignError(f"{where}:{n}: expected 'start end word', got {line[:40]!r}") from None
        if not 0 <= start <= end:
            raise AlignError(f"{where}:{n}: {parts[2]!r} starts at {start} and ends at {end}")
        if parts[2].lower() not in SILENCE:
            words.append([parts[2].upper(), round(start / SAMPLES_PER_SECOND, 4),
                          round(end / SAMPLES_PER_SECOND, 4)])
    if not words:
        raise AlignError(f"{where}: no words (only sil/sp or empty)")
    return {"text": " ".join(w[0] for w in words), "conf": None, "words": words}


def read_align(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_align(f.read(), where=path)
    except FileNotFoundError:
        raise AlignError(f"no alignment {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AlignError(f"{path}: cannot read ({err})") from None


def _speaker_videos(corpus_dir: str) -> dict:
    """``{speaker: {utt: mpg path}}`` over the accepted layouts (the first found wins)."""
    found = {}
    for root in VIDEO_ROOTS:
        base = os.path.join(corpus_dir, root)
        if not os.path.isdir(base):
            continue
        for name in sorted(os.listdir(base)):
            match = SPEAKER.match(name)
            if not match or not os.path.isdir(os.path.join(base, name)):
                continue
            spk = match.group(1)
            for sub in VIDEO_DIRS:
                for folder in (os.path.join(base, name, sub),
                               os.path.join(base, name, spk, sub)):  # s<k>.mpg_vcd/s<k>/
                    if not os.path.isdir(folder):
                        continue
                    for f in sorted(os.listdir(folder)):
                        if f.lower().endswith(".mpg"):
                            found.setdefault(spk, {}).setdefault(f[:-4],
                                                                 os.path.join(folder, f))
    return found


def _find(corpus_dir: str, dirs, spk: str, utt: str, ext: str) -> str | None:
    for d in dirs:
        for path in (os.path.join(corpus_dir, d, spk, utt + ext),
                     os.path.join(corpus_dir, spk, d, utt + ext)):
            if os.path.isfile(path):
                return path
    return None


def scan_corpus(corpus_dir: str):
    """Entries (every speaker in ``test``) and the rows to reject (no wav, bad ids)."""
    if not os.path.isdir(corpus_dir):
        raise RecipeError(f"--corpus_dir {corpus_dir} does not exist (expected {LAYOUT_HINT})")
    entries, rejected = [], []
    videos = _speaker_videos(corpus_dir)
    for spk in sorted(videos, key=lambda s: int(s[1:])):
        for utt, mpg in sorted(videos[spk].items()):
            entry = stages.manifest_entry(f"{spk}/test/{utt}", spk, spk, utt, "test", mpg,
                                          split="test")
            entry["audio"] = _find(corpus_dir, AUDIO_DIRS, spk, utt, ".wav")
            entry["align"] = (_find(corpus_dir, ALIGN_DIRS, spk, utt, ".align")
                              or os.path.join(corpus_dir, "alignments", spk, utt + ".align"))
            problem = stages.id_problem(spk, utt)
            if not problem and not entry["audio"]:
                problem = f"no wav for {spk}/{utt} under {'/, '.join(AUDIO_DIRS)}/{spk}/"
            if problem:
                rejected.append({"key": entry["key"], "path": mpg, "reason": problem})
            else:
                entries.append(entry)
    if not entries and not rejected:
        raise RecipeError(f"no GRID videos found under {corpus_dir}: expected {LAYOUT_HINT}")
    return entries, rejected


def probe_with_align(entry):
    """Manifest worker: parse the ``.align`` file, then probe the mpg's video and the wav."""
    try:
        entry.update(read_align(entry["align"]))
    except AlignError as err:
        return entry, f"malformed alignment: {err}"
    return stages.probe_entry(entry)


def stage_manifest(corpus_dir: str, out_dir: str, nj: int = 1,
                   retry_rejected: bool = False) -> list[dict]:
    """Stage 1: write ``OUT/manifest.jsonl``. Returns the kept entries."""
    params = {"corpus_dir": os.path.abspath(corpus_dir), "corpus": "grid"}
    return stages.run_manifest(out_dir, params, lambda: scan_corpus(corpus_dir), nj,
                               task=probe_with_align, retry_rejected=retry_rejected)


def stage_shards(out_dir: str, shard_size: int = 1000, shard_multiple: int = 8,
                 seed: int = 0) -> dict:
    """Stage 3: the test shards, ``text`` / ``conf`` / ``words`` in every json; meta.json
    names the crop stage 2 used."""
    extra_json, extra_meta = transcript_fields(out_dir)
    return stages.stage_shards(out_dir, shard_size, shard_multiple, seed, corpus="grid",
                               crop=DEFAULT_CROP, extra_json=extra_json, extra_meta=extra_meta)


# --------------------------------------------------------------------------- lists
def grid_mixtures(utts, num: int, num_speakers: int, snr_range=(-10.0, 10.0), seed: int = 0,
                  mix_set: str = "test", candidates: int = CANDIDATES) -> list[Mixture]:
    """``num`` mixtures of ``num_speakers`` sources from different speakers and sentences.

    ``utts``: dicts with ``key`` (``spk/...``), ``spk``, ``text`` and ``duration``. The
    target is drawn uniformly (speaker, then utterance); each interferer is, of up to
    ``candidates`` utterances drawn from the speakers not yet in the row whose sentence is
    none of the row's, the one sharing the fewest words with the row's sources (the first
    drawn on a tie). Rows with no such interferer are not written. Seeded.
    """
    by_spk = {}
    for u in utts:
        by_spk.setdefault(u["spk"], []).append(u)
    speakers = sorted(by_spk)
    rng, out = random.Random(seed), []
    if len(speakers) < num_speakers:
        return out
    for _ in range(num):
        target = rng.choice(by_spk[rng.choice(speakers)])
        row = [target]
        for _ in range(num_speakers - 1):
            used_spk, texts = {u["spk"] for u in row}, {u["text"] for u in row}
            words = set(" ".join(texts).split())
            pool = [u for s in speakers if s not in used_spk for u in by_spk[s]
                    if u["text"] not in texts]
            if not pool:
                break
            drawn = rng.sample(pool, min(candidates, len(pool)))
            row.append(min(drawn, key=lambda u: len(words & set(u["text"].split()))))
        if len(row) < num_speakers:
            continue
        sources = [Source(mix_set, u["spk"], u["key"].split("/", 1)[1],
                          0.0 if i == 0 else round(rng.uniform(*snr_range), 4))
                   for i, u in enumerate(row)]
        length = int(min(u["duration"] for u in row) * 100) / 100.0
        out.append(Mixture(mix_set, tuple(sources), length))
    return out


def stage_lists(out_dir: str, mixtures: str = DEFAULT_MIXTURES, num_speakers=(2, 3),
                snr_range=(-10.0, 10.0), seed: int = 0) -> dict:
    """Stage 4: ``OUT/lists/voxmix_<k>mix.csv`` (:func:`grid_mixtures`). Returns ``{file: rows}``."""
    counts = stages.parse_mixture_counts(mixtures) if isinstance(mixtures, str) else mixtures
    if set(counts) - {"test"}:
        raise RecipeError(f"--mixtures: GRID has only the test split, got {sorted(counts)}")
    if not num_speakers or any(k < 2 for k in num_speakers):
        raise RecipeError(f"--num_speakers must be 2 or more, got {list(num_speakers)}")
    texts = {e["key"]: e["text"] for e in read_jsonl(os.path.join(out_dir, "manifest.jsonl"))}
    utts = [{"key": i["key"], "spk": i["spk"], "duration": i["duration"], "text": texts[i["key"]]}
            for i in stages.read_extracted(out_dir) if i["key"] in texts]
    lists_dir = os.path.join(out_dir, "lists")
    params = {"corpus": "grid", "mixtures": counts, "snr_range": list(snr_range),
              "num_speakers": list(num_speakers), "seed": seed, "candidates": CANDIDATES,
              "keys": sorted(u["key"] for u in utts)}
    marker = os.path.join(out_dir, ".done", "lists")
    if is_done(marker, params):
        print(f"[lists] {lists_dir} is up to date; skipping")
        with open(marker) as f:
            return json.load(f)["files"]
    summary, written = Summary("lists", unit="rows"), {}
    for k in num_speakers:
        rows = grid_mixtures(utts, counts.get("test", 0), k, snr_range,
                             hash_seed(seed, "test", k))
        out = os.path.join(lists_dir, f"voxmix_{k}mix.csv")
        write_list(rows, out)
        written[out] = len(rows)
    Rejections(out_dir).replace("lists", [])
    mark_done(marker, params, files=written)
    summary.line(sum(written.values()), 0, processed=sum(written.values()),
                 note=", ".join(f"{os.path.basename(k)}: {v} rows" for k, v in written.items()))
    return written


# --------------------------------------------------------------------------- entry points
def prepare_grid(corpus_dir: str, out_dir: str, nj: int = 1, crop: str = DEFAULT_CROP,
                 shard_size: int = 1000, shard_multiple: int = 8,
                 mixtures: str = DEFAULT_MIXTURES, num_speakers=(2, 3), seed: int = 0,
                 stage: int = 1, stop_stage: int = 4,
                 detector_device: str = "cpu"):
    """Run stages ``stage..stop_stage`` (see the module docstring); ``detector_device``:
    the face detector's torch device in stage 2 (``cpu``, ``cuda``, ``cuda:N``)."""
    if stage <= 1 <= stop_stage:
        stage_manifest(corpus_dir, out_dir, nj)
    if stage <= 2 <= stop_stage:
        stages.stage_extract(out_dir, nj, crop=crop, detector_device=detector_device)
    if stage <= 3 <= stop_stage:
        stage_shards(out_dir, shard_size, shard_multiple, seed)
    if stage <= 4 <= stop_stage:
        stage_lists(out_dir, mixtures, tuple(num_speakers), seed=seed)


def build_parser() -> argparse.ArgumentParser:
    parser, sub, common = recipe_parser(
        "grid", "GRID -> WebDataset test shards + 2/3-mix test lists (one subcommand per stage).")
    p = sub.add_parser("manifest", parents=[common], help="stage 1: scan the corpus")
    p.add_argument("--corpus_dir", required=True, help=LAYOUT_HINT)
    p.add_argument("--retry_rejected", action="store_true",
                   help="probe again the clips an earlier run rejected")
    stages.add_stage_parsers(sub, common, DEFAULT_CROP, DEFAULT_MIXTURES)
    return parser


def _run(args) -> None:
    if args.stage == "manifest":
        stage_manifest(args.corpus_dir, args.out_dir, args.nj, args.retry_rejected)
    elif args.stage == "shards":
        stage_shards(args.out_dir, args.shard_size, args.shard_multiple, args.seed)
    elif args.stage == "lists":
        stage_lists(args.out_dir, args.mixtures, tuple(args.num_speakers),
                    tuple(args.snr_range), args.seed)
    else:
        stages.run_stage(args, None)


def main(argv=None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
