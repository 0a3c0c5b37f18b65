"""TCD-TIMIT (evaluation corpus) -> WebDataset shards + 2-mix / 3-mix test lists.

Layout (as distributed; folder names matched without regard to case)::

    CORPUS/volunteers/<NN><M|F>/Clips/straightcam/<sentence>.mp4      59 volunteers
    CORPUS/lipspeakers/<Lipspkr N>/Clips/straightcam/<sentence>.mp4   3 lipspeakers

The clips are 1920x1080 at about 29.97 fps with the audio in the mp4; ``<sentence>`` is a
TIMIT sentence id (``sa1``, ``sa2``, ``si<N>``, ``sx<N>``). The lipspeaker folder may be
spelt ``Lipspkr1``, ``lipspeaker1``, ``LipSpkr 1``. Where a release ships the audio as
separate wav files, a ``<sentence>.wav`` next to the clip, or in an ``audio`` folder of the
speaker (``<spk>/audio/``, ``<spk>/Clips/audio/``, ``<spk>/Clips/straightcam/audio/``),
replaces the mp4's audio. The 30-degree camera (``30degcam``) is not used.

Stages (``recipes/TCD-TIMIT/run.sh``; each idempotent, the shared AV stages of
:mod:`avse.recipes.stages`):

1. ``manifest``: scan the tree; keys ``<spk>/<subset>/<sentence>`` (speaker ``01M`` or
   ``lipspkr1``), the subset (and split) ``volunteers`` or ``lipspeakers``: every speaker is
   test data, the two groups are kept apart. Probe each clip. With ``--prompts`` (TIMIT's
   ``PROMPTS.TXT``: the clips come without their texts) each clip gets its sentence's ``text``
   (:func:`read_prompts`, :func:`normalise_text`); a clip whose sentence has no prompt keeps
   no text (counted on stderr).
2. ``extract``: 16 kHz mono audio and, at 25 fps (frames resampled by timestamp), the
   tracked face's face-centred frames and landmarks (``--crop face``, the default:
   ``face.npy``, ``facelm.npy``), from which the crop preset of the model under evaluation
   is cut at load time (the loaders' ``mouth_crop``), so one staging serves models trained
   on any crop; or one preset's mouth crops (``--crop landmarks`` / ``lipread``,
   :data:`avse.recipes.stages.TRACKED_CROPS`, cut as ``avse-extract`` does).
3. ``shards``: ``OUT/shards/volunteers/`` and ``OUT/shards/lipspeakers/`` (+ meta.json);
   the json carries ``sentence`` and, where the manifest has one, ``text``.
4. ``lists``: ``OUT/lists/<subset>/voxmix_<k>mix.csv``: per subset, ``k``-speaker
   mixtures of different speakers that never hold two clips of the same sentence (TIMIT's
   sa1 / sa2 are read by everyone), seeded.

Unreadable clips, names that are not TIMIT sentence ids, and what a later stage rejects go
to ``OUT/rejected.tsv``.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys

from avse.recipes import stages
from avse.recipes.common import (
    RecipeError,
    Rejections,
    Summary,
    check_names,
    hash_seed,
    is_done,
    mark_done,
    params_hash,
    read_jsonl,
    recipe_parser,
    run_cli,
)

SUBSETS = ("volunteers", "lipspeakers")
LAYOUT_HINT = ("CORPUS/volunteers/<NN><M|F>/Clips/straightcam/<sentence>.mp4 and "
               "CORPUS/lipspeakers/Lipspkr<N>/Clips/straightcam/<sentence>.mp4")
DEFAULT_MIXTURES = "volunteers:3000,lipspeakers:1000"
DEFAULT_CROP = "face"  # the tracked face-centred frames; any preset cut at load time
SENTENCE = re.compile(r"^(sa[12]|si\d+|sx\d+)$", re.IGNORECASE)
VOLUNTEER = re.compile(r"^(\d{1,2})([MF])$", re.IGNORECASE)
LIPSPEAKER = re.compile(r"^lip[\s_-]?(?:spkr|speaker|spk)[\s_-]?(\d+)$", re.IGNORECASE)
CAMERA = "straightcam"
AUDIO_DIRS = (("audio",), ("Clips", "audio"), ("Clips", CAMERA, "audio"))
PROMPT = re.compile(r"^(.*\S)\s*\(([^()\s]+)\)\s*$")  # "<sentence text> (<id>)"


class PromptsError(RecipeError):
    """TIMIT's PROMPTS.TXT is missing or has a malformed line (the message names file and line)."""


def normalise_text(text: str) -> str:
    """A prompt as the LRS transcripts are written: upper case, words of letters, digits and
    inner apostrophes; other punctuation (hyphens too) separates words.

    Example
    -------
    >>> normalise_text("Don't ask me to carry an oily rag like that.")
    "DON'T ASK ME TO CARRY AN OILY RAG LIKE THAT"
    >>> normalise_text('"A well-lit room," she said; "why?"')
    'A WELL LIT ROOM SHE SAID WHY'
    """
    words = re.sub(r"[^A-Za-z0-9']+", " ", text).split()
    return " ".join(w.strip("'").upper() for w in words if w.strip("'"))


def parse_prompts(text: str, where: str = "<prompts>") -> dict:
    """``{sentence id: normalised text}`` from TIMIT's ``PROMPTS.TXT``: one ``<sentence text>
    (<id>)`` a line (ids as :data:`SENTENCE`, lower-cased), ``;`` comment lines and blank
    lines skipped. PromptsError naming ``where:<line>`` for any other line, or an id given
    twice with different texts.

    Example
    -------
    >>> parse_prompts("; comment\\nShe had your dark suit in greasy wash water all year. (sa1)")
    {'sa1': 'SHE HAD YOUR DARK SUIT IN GREASY WASH WATER ALL YEAR'}
    """
    prompts, first = {}, {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        match = PROMPT.match(line.strip())
        if not match or not SENTENCE.match(match.group(2)) or not normalise_text(match.group(1)):
            raise PromptsError(f"{where}:{n}: expected '<sentence text> (<id>)' with a TIMIT "
                               f"sentence id (sa1, sa2, si<N>, sx<N>), got {line.strip()[:60]!r}")
        sid, words = match.group(2).lower(), normalise_text(match.group(1))
        if prompts.get(sid, words) != words:
            raise PromptsError(f"{where}:{n}: {sid} given again with another text (first at "
                               f"line {first[sid]})")
        prompts[sid] = words
        first.setdefault(sid, n)
    return prompts


def read_prompts(path: str) -> dict:
    """:func:`parse_prompts` of a file; a missing, unreadable or empty one is a PromptsError."""
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as f:
            prompts = parse_prompts(f.read(), where=path)
    except FileNotFoundError:
        raise PromptsError(f"--prompts {path}: no such file (TIMIT's PROMPTS.TXT, in the "
                           "TIMIT release's DOC folder)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PromptsError(f"--prompts {path}: cannot read ({err})") from None
    if not prompts:
        raise PromptsError(f"--prompts {path}: no '<sentence text> (<id>)' line")
    return prompts


def speaker_id(subset: str, folder: str) -> str | None:
    """The speaker id of a speaker folder, or None when it is not one.

    Example
    -------
    >>> speaker_id("volunteers", "01M"), speaker_id("lipspeakers", "lipspeaker2")
    ('01M', 'lipspkr2')
    >>> speaker_id("lipspeakers", "Lipspkr 3"), speaker_id("volunteers", "notes")
    ('lipspkr3', None)
    """
    if subset == "volunteers":
        m = VOLUNTEER.match(folder)
        return f"{int(m.group(1)):02d}{m.group(2).upper()}" if m else None
    m = LIPSPEAKER.match(folder)
    return f"lipspkr{int(m.group(1))}" if m else None


def _children(folder: str) -> dict:
    """``{lower-case name: real name}`` of the entries of ``folder`` ({} if none)."""
    try:
        return {n.lower(): n for n in sorted(os.listdir(folder))}
    except OSError:
        return {}


def _find(folder: str, *names) -> str | None:
    """``folder/names...`` matched without regard to case, or None."""
    for name in names:
        real = _children(folder).get(name.lower())
        if real is None:
            return None
        folder = os.path.join(folder, real)
    return folder


def _wav_for(spk_dir: str, clip_dir: str, sentence: str) -> str | None:
    for folder in [clip_dir] + [_find(spk_dir, *d) for d in AUDIO_DIRS]:
        real = _children(folder).get(f"{sentence.lower()}.wav") if folder else None
        if real:
            return os.path.join(folder, real)
    return None


def scan_corpus(corpus_dir: str, subsets=SUBSETS):
    """Entries of the chosen subsets and the rows to reject (names that are not TIMIT
    sentence ids, a sentence twice for one speaker).

    Raises RecipeError when the corpus or every chosen subset folder is missing, or no
    clip is found.
    """
    if not os.path.isdir(corpus_dir):
        raise RecipeError(f"--corpus_dir {corpus_dir} does not exist (expected {LAYOUT_HINT})")
    entries, rejected, found = [], [], []
    for subset in subsets:
        root = _find(corpus_dir, subset)
        if root is None or not os.path.isdir(root):
            print(f"[manifest] {subset}: no {subset}/ folder under {corpus_dir}",
                  file=sys.stderr)
            continue
        found.append(subset)
        for folder in sorted(os.listdir(root)):
            spk = speaker_id(subset, folder)
            spk_dir = os.path.join(root, folder)
            clip_dir = _find(spk_dir, "Clips", CAMERA)
            if spk is None or clip_dir is None:
                continue
            seen = set()
            for name in sorted(os.listdir(clip_dir)):
                stem, ext = os.path.splitext(name)
                if ext.lower() != ".mp4":
                    continue
                sentence = stem.lower()
                entry = stages.manifest_entry(f"{spk}/{subset}/{sentence}", spk, spk, sentence,
                                              subset, os.path.join(clip_dir, name),
                                              split=subset)
                entry["audio"] = _wav_for(spk_dir, clip_dir, sentence)
                problem = None
                if not SENTENCE.match(sentence):
                    problem = f"{name}: not a TIMIT sentence id (sa1, sa2, si<N>, sx<N>)"
                elif sentence in seen:
                    problem = f"sentence {sentence} twice for speaker {spk}"
                seen.add(sentence)
                if problem:
                    rejected.append({"key": entry["key"], "path": entry["media"],
                                     "reason": problem})
                else:
                    entries.append(entry)
    if not found:
        raise RecipeError(f"none of {list(subsets)} under {corpus_dir}: expected {LAYOUT_HINT}")
    if not entries and not rejected:
        raise RecipeError(f"no clips found under {corpus_dir}: expected {LAYOUT_HINT}")
    return entries, rejected


def with_prompts(scanned, prompts: dict | None):
    """``scan_corpus``'s ``(entries, rejected)`` with each entry's ``text`` from ``prompts``
    (``{sentence: text}``) where it has one."""
    entries, rejected = scanned
    for e in entries:
        if prompts and e["clip"] in prompts:
            e["text"] = prompts[e["clip"]]
    return entries, rejected


def stage_manifest(corpus_dir: str, out_dir: str, subsets=SUBSETS, nj: int = 1,
                   retry_rejected: bool = False, prompts: str | None = None) -> list[dict]:
    """Stage 1: write ``OUT/manifest.jsonl``; with ``prompts`` (TIMIT's PROMPTS.TXT) each
    entry gets its sentence's ``text`` (:func:`with_prompts`), and the kept clips whose
    sentence has no prompt (no text) are counted on stderr. Returns the kept entries."""
    subsets = check_names(subsets, SUBSETS, "--subsets")
    params = {"corpus_dir": os.path.abspath(corpus_dir), "subsets": list(subsets)}
    texts = None
    if prompts:
        texts = read_prompts(prompts)
        params["prompts"] = params_hash(texts)
    kept = stages.run_manifest(
        out_dir, params, lambda: with_prompts(scan_corpus(corpus_dir, subsets), texts), nj,
        retry_rejected=retry_rejected)
    missing = sorted({e["clip"] for e in kept if "text" not in e}) if texts else []
    if missing:
        print(f"[manifest] warning: {sum('text' not in e for e in kept)} clip(s) of "
              f"{len(missing)} sentence(s) have no prompt in {prompts} and keep no text: "
              f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}", file=sys.stderr)
    return kept


def stage_shards(out_dir: str, shard_size: int = 1000, shard_multiple: int = 8,
                 seed: int = 0) -> dict:
    """Stage 3: one shard split per subset; the json adds ``sentence`` and, where the
    manifest has one (``--prompts``), ``text``; meta.json names the crop stage 2 used."""
    infos = stages.read_extracted(out_dir)
    texts = {e["key"]: e["text"] for e in read_jsonl(os.path.join(out_dir, "manifest.jsonl"))
             if e.get("text")}
    extra = {i["key"]: {"sentence": i["clip"], **({"text": texts[i["key"]]}
                                                  if i["key"] in texts else {})}
             for i in infos}
    return stages.stage_shards(out_dir, shard_size, shard_multiple, seed, "tcdtimit",
                               DEFAULT_CROP, extra_json=extra)


def draw_mixtures(pool, num: int, k: int, snr_range, seed: int, mix_set: str):
    """``num`` rows of ``k`` sources from different speakers and different sentences.

    ``pool``: dicts with ``key`` (``spk/...``), ``spk``, ``sentence``, ``duration``. Raises
    RecipeError when no such row can be drawn (fewer than ``k`` speakers, or their clips
    share sentences)."""
    from avse.data.lists import Mixture, Source

    by_spk = {}
    for u in pool:
        by_spk.setdefault(u["spk"], []).append(u)
    speakers, rng, rows = sorted(by_spk), random.Random(seed), []
    if len(speakers) < k:
        raise RecipeError(f"{mix_set}: {len(speakers)} speaker(s), fewer than {k}")
    failures = 0
    while len(rows) < num:
        picked, used = [], set()
        for spk in rng.sample(speakers, k):
            free = [u for u in by_spk[spk] if u["sentence"] not in used]
            if not free:
                break
            picked.append(rng.choice(free))
            used.add(picked[-1]["sentence"])
        if len(picked) < k:
            failures += 1
            if failures > 1000 + 10 * num:
                raise RecipeError(f"{mix_set}: cannot draw {k}-mixtures of different "
                                  "sentences from these clips")
            continue
        sources = []
        for i, u in enumerate(picked):
            snr = 0.0 if i == 0 else round(rng.uniform(*snr_range), 4)
            spk, path = u["key"].split("/", 1)
            sources.append(Source(mix_set, spk, path, snr))
        length = int(min(u["duration"] for u in picked) * 100) / 100.0
        rows.append(Mixture(mix_set, tuple(sources), length))
    return rows


def stage_lists(out_dir: str, mixtures=DEFAULT_MIXTURES, snr_range=(-10.0, 10.0),
                num_speakers=(2, 3), seed: int = 0) -> dict:
    """Stage 4: ``OUT/lists/<subset>/voxmix_<k>mix.csv`` (:func:`draw_mixtures`); a subset
    with too few speakers gets no ``k``-mix list (said on stderr). Returns ``{file: rows}``."""
    from avse.data.lists import write_list

    if isinstance(mixtures, str):
        mixtures = stages.parse_mixture_counts(mixtures)
    check_names(list(mixtures), SUBSETS, "--mixtures")
    if not num_speakers or any(k < 2 for k in num_speakers):
        raise RecipeError(f"--num_speakers must be 2 or more, got {list(num_speakers)}")
    infos = stages.read_extracted(out_dir)
    params = {"mixtures": mixtures, "snr_range": list(snr_range), "seed": seed,
              "num_speakers": list(num_speakers), "keys": sorted(i["key"] for i in infos)}
    marker = os.path.join(out_dir, ".done", "lists")
    if is_done(marker, params):
        print(f"[lists] {out_dir}/lists is up to date; skipping")
        return _read_marker_files(marker)
    summary, written = Summary("lists", unit="rows"), {}
    for subset, num in mixtures.items():
        pool = [{"key": i["key"], "spk": i["spk"], "sentence": i["clip"],
                 "duration": i["duration"]} for i in infos if i["split"] == subset]
        n_spk = len({u["spk"] for u in pool})
        for k in num_speakers:
            if num <= 0 or n_spk < k:
                print(f"[lists] {subset}: {n_spk} speaker(s); no {k}-mix list", file=sys.stderr)
                continue
            rows = draw_mixtures(pool, num, k, snr_range, hash_seed(seed, subset, k), subset)
            path = os.path.join(out_dir, "lists", subset, f"voxmix_{k}mix.csv")
            write_list(rows, path)
            written[path] = len(rows)
    Rejections(out_dir).replace("lists", [])
    mark_done(marker, params, files=written)
    summary.line(sum(written.values()), 0, processed=sum(written.values()),
                 note=", ".join(f"{os.path.relpath(p, out_dir)}: {n} rows"
                                for p, n in written.items()))
    return written


def _read_marker_files(marker: str) -> dict:
    import json

    with open(marker) as f:
        return json.load(f)["files"]


def prepare_tcdtimit(corpus_dir: str, out_dir: str, nj: int = 1, subsets=SUBSETS,
                     crop: str = DEFAULT_CROP, shard_size: int = 1000,
                     shard_multiple: int = 8, mixtures: str = DEFAULT_MIXTURES,
                     num_speakers=(2, 3), seed: int = 0, stage: int = 1, stop_stage: int = 4,
                     detector_device: str = "cpu", prompts: str | None = None):
    """Run stages ``stage..stop_stage`` (see the module docstring); ``detector_device``:
    the face detector's torch device in stage 2 (``cpu``, ``cuda``, ``cuda:N``);
    ``prompts``: TIMIT's PROMPTS.TXT for the clips' ``text`` (stage 1)."""
    if stage <= 1 <= stop_stage:
        stage_manifest(corpus_dir, out_dir, subsets, nj, prompts=prompts)
    if stage <= 2 <= stop_stage:
        stages.stage_extract(out_dir, nj, crop=crop, detector_device=detector_device)
    if stage <= 3 <= stop_stage:
        stage_shards(out_dir, shard_size, shard_multiple, seed)
    if stage <= 4 <= stop_stage:
        stage_lists(out_dir, mixtures, num_speakers=tuple(num_speakers), seed=seed)


def build_parser() -> argparse.ArgumentParser:
    parser, sub, common = recipe_parser(
        "tcdtimit", "TCD-TIMIT -> WebDataset shards + 2-/3-mix test lists (one subcommand "
        "per stage).")
    p = sub.add_parser("manifest", parents=[common], help="stage 1: scan the corpus")
    p.add_argument("--corpus_dir", required=True, help=LAYOUT_HINT)
    p.add_argument("--subsets", default=",".join(SUBSETS),
                   help="comma list of volunteers,lipspeakers")
    p.add_argument("--retry_rejected", action="store_true",
                   help="probe again the clips an earlier run rejected")
    p.add_argument("--prompts", help="TIMIT's PROMPTS.TXT ('<sentence text> (<id>)' lines): "
                   "each clip's text in the shards' json")
    stages.add_stage_parsers(sub, common, DEFAULT_CROP, DEFAULT_MIXTURES)
    return parser


def _run(args) -> None:
    if args.stage == "manifest":
        stage_manifest(args.corpus_dir, args.out_dir, args.subsets, args.nj,
                       args.retry_rejected, args.prompts)
    elif args.stage == "shards":
        stage_shards(args.out_dir, args.shard_size, args.shard_multiple, args.seed)
    elif args.stage == "lists":
        stage_lists(args.out_dir, args.mixtures, tuple(args.snr_range),
                    tuple(args.num_speakers), args.seed)
    else:
        stages.run_stage(args, None, SUBSETS)


def main(argv=None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
