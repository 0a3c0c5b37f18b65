"""LRS2-BBC -> WebDataset shards (with transcripts and token ids) + VoxMix mixture lists.

Stages (``recipes/LRS2/run.sh`` calls them in order; each is idempotent):

1. ``manifest``: read the filelists ``CORPUS/{pretrain,train,val,test}.txt`` (one
   ``<video id>/<clip>`` a line; a trailing tag such as `` NF`` or `` MV`` is ignored),
   find ``CORPUS/main/<video id>/<clip>.{mp4,txt}`` (``pretrain/...`` for pretrain.txt),
   parse the transcripts, probe durations and write ``OUT/manifest.jsonl``.
2. ``extract``: 16 kHz mono audio + 88x88 grayscale mouth ROI at 25 fps from the fixed
   crop ``MOUTH_CROPS["lrs2"]`` (the VoxCeleb2 extract code, other crop).
3. ``tokens``: train a sentencepiece model on the *train* split's transcripts
   (``OUT/tokenizer/spm.model``, ``spm.vocab``, ``tokenizer.json``).
4. ``shards``: ``OUT/shards/<split>/shard-%06d.tar`` + ``meta.json``; each sample's json
   carries ``text``, ``conf``, ``words`` ([word, start s, end s]) and ``tokens`` (ids).
5. ``lists``: VoxMix 2-mix / 3-mix lists whose sources come from different videos.

LRS2 has no speaker labels: every video is one pseudo-speaker (``spk`` = video id), and
utterance keys are ``<video id>/<main|pretrain>/<clip>`` (unique across the two trees;
a VoxMix row names ``<set>,<video id>,<main|pretrain>/<clip>,<snr>``).
A filelist line whose mp4 is missing, a malformed transcript or an unreadable clip is
skipped and listed in ``OUT/rejected.tsv``; it never stops a run.

Example
-------
``prepare_lrs2("mvlrs_v1", "data/lrs2", nj=2)`` runs all five stages.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys

from avse.data.video import MOUTH_CROPS
from avse.recipes import voxceleb2 as vox
from avse.recipes.common import (
    common_parser,
    run_cli,
    RecipeError,
    Summary,
    is_done,
    mark_done,
    params_hash,
    read_jsonl,
)

SPLITS = ("pretrain", "train", "val", "test")
LAYOUT_HINT = ("CORPUS/{main,pretrain}/<video id>/<clip>.{mp4,txt} and the filelists "
               "CORPUS/{pretrain,train,val,test}.txt")
DEFAULT_MIXTURES = "train:20000,val:5000,test:3000"


# --------------------------------------------------------------------------- transcripts
class TranscriptError(ValueError):
    """A transcript file is missing or malformed (the message names file and line)."""


_HEADER = re.compile(r"^([A-Za-z]+):\s*(.*)$")


def parse_transcript(text: str, where: str = "<transcript>") -> dict:
    """Parse an LRS2 / LRS3 transcript.

    The file starts with ``Text:  <WORDS>``, then header lines such as ``Conf:  <n>``, a
    blank line and, optionally, a ``WORD START END ASDSCORE`` table (times in seconds).
    Returns ``{"text": str, "conf": number or None, "words": [[word, start, end], ...]}``;
    raises TranscriptError naming ``where:<line>``.

    Example
    -------
    >>> t = parse_transcript("Text:  HELLO THERE\\nConf:  4\\n\\nWORD START END ASDSCORE\\n"
    ...                      "HELLO 0.10 0.40 5.1\\nTHERE 0.45 0.80 4.2\\n")
    >>> t["text"], t["conf"], t["words"][1]
    ('HELLO THERE', 4, ['THERE', 0.45, 0.8])
    """
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if not first.startswith("Text:"):
        raise TranscriptError(f"{where}:1: expected 'Text:  <WORDS>', got {first[:40]!r}")
    words_text = " ".join(first[len("Text:"):].split())
    if not words_text:
        raise TranscriptError(f"{where}:1: the 'Text:' line is empty")
    conf, n = None, 1
    while n < len(lines) and lines[n].strip():  # header lines up to the first blank line
        match = _HEADER.match(lines[n].strip())
        if not match:
            raise TranscriptError(f"{where}:{n + 1}: expected 'Name:  value' or a blank line, "
                                  f"got {lines[n][:40]!r}")
        if match.group(1) == "Conf":
            try:
                conf = float(match.group(2))
            except ValueError:
                raise TranscriptError(f"{where}:{n + 1}: 'Conf:' must be a number, "
                                      f"got {match.group(2)[:20]!r}") from None
            conf = int(conf) if conf.is_integer() else conf
        n += 1
    rows = [(i + 1, line.split()) for i, line in enumerate(lines[n:], n) if line.strip()]
    words = []
    if rows:
        lineno, header = rows[0]
        if [h.upper() for h in header[:3]] != ["WORD", "START", "END"]:
            raise TranscriptError(f"{where}:{lineno}: expected the 'WORD START END ASDSCORE' "
                                  f"table header, got {' '.join(header)[:40]!r}")
        for lineno, parts in rows[1:]:
            try:
                if len(parts) != len(header):
                    raise ValueError
                start, end = float(parts[1]), float(parts[2])
                [float(p) for p in parts[3:]]
            except ValueError:
                raise TranscriptError(f"{where}:{lineno}: expected '{' '.join(header)}', "
                                      f"got {' '.join(parts)[:40]!r}") from None
            if not 0.0 <= start <= end:
                raise TranscriptError(f"{where}:{lineno}: word {parts[0]!r} starts at {start} "
                                      f"and ends at {end}")
            words.append([parts[0], start, end])
    return {"text": words_text, "conf": conf, "words": words}


def read_transcript(path: str) -> dict:
    """:func:`parse_transcript` of a file; a missing or undecodable file is a TranscriptError."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise TranscriptError(f"no transcript {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TranscriptError(f"{path}: cannot read ({err})") from None
    return parse_transcript(text, where=path)


# --------------------------------------------------------------------------- manifest
def lrs_entry(vid: str, subset: str, clip: str, split: str, media: str) -> dict:
    """A manifest entry of the LRS corpora: the video is the pseudo-speaker."""
    return {"key": f"{vid}/{subset}/{clip}", "spk": vid, "video": vid, "clip": clip,
            "subset": subset, "split": split, "media": media, "audio": None, "emb": None}


def bad_name(vid: str, clip: str) -> str | None:
    """Why ``<vid>/<clip>`` cannot be an utterance id (None when it can)."""
    if not vid or not clip or "/" in clip:
        return "expected '<video id>/<clip>'"
    if "." in vid or "." in clip:
        return "ids must not contain dots (WebDataset keys)"
    return None


def read_filelists(corpus_dir: str, splits=SPLITS):
    """Entries named by ``CORPUS/<split>.txt`` and the rows to reject (missing mp4, bad line).

    Raises RecipeError when the corpus folder or a selected filelist is missing, or when
    the filelists name nothing.
    """
    if not os.path.isdir(corpus_dir):
        raise RecipeError(f"--corpus_dir {corpus_dir} does not exist (expected {LAYOUT_HINT})")
    missing = [f"{s}.txt" for s in splits
               if not os.path.isfile(os.path.join(corpus_dir, f"{s}.txt"))]
    if missing:
        raise RecipeError(f"{corpus_dir} has no filelist {', '.join(missing)} (expected "
                          f"{LAYOUT_HINT}); leave a split out with --splits")
    entries, rejected, seen = [], [], {}
    for split in splits:
        subset = "pretrain" if split == "pretrain" else "main"
        filelist = os.path.join(corpus_dir, f"{split}.txt")
        with open(filelist) as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                vid, _, clip = fields[0].partition("/")
                where, key = f"{split}.txt:{n}", f"{vid}/{subset}/{clip}"
                media = os.path.join(corpus_dir, subset, vid, clip + ".mp4")
                problem = bad_name(vid, clip)
                if problem:
                    rejected.append({"key": fields[0], "path": filelist,
                                     "reason": f"{where}: {problem}, got {fields[0]!r}"})
                elif key in seen:
                    rejected.append({"key": key, "path": filelist,
                                     "reason": f"{where}: listed again (first at {seen[key]})"})
                elif not os.path.isfile(media):
                    rejected.append({"key": key, "path": media,
                                     "reason": f"{where} names a clip whose mp4 does not exist"})
                else:
                    entries.append(lrs_entry(vid, subset, clip, split, media))
                seen.setdefault(key, where)
    if not entries and not rejected:
        raise RecipeError(f"the filelists {', '.join(f'{s}.txt' for s in splits)} in "
                          f"{corpus_dir} are empty")
    return entries, rejected


def probe_with_transcript(entry):
    """Manifest worker: parse ``<clip>.txt`` beside the mp4, then probe the duration."""
    try:
        entry.update(read_transcript(os.path.splitext(entry["media"])[0] + ".txt"))
    except TranscriptError as err:
        return entry, f"malformed transcript: {err}"
    return vox._probe_task(entry)


def stage_manifest(corpus_dir: str, out_dir: str, splits=SPLITS, nj: int = 1) -> list[dict]:
    """Stage 1: write ``OUT/manifest.jsonl`` from the filelists. Returns the kept entries."""
    splits = check_names(splits, SPLITS, "--splits")
    params = {"corpus_dir": os.path.abspath(corpus_dir), "splits": list(splits), "lists_mtime": [
        os.path.getmtime(p) if os.path.isfile(p) else None
        for p in (os.path.join(corpus_dir, f"{s}.txt") for s in splits)]}
    return run_manifest(out_dir, params, lambda: read_filelists(corpus_dir, splits), nj)


def run_manifest(out_dir: str, params: dict, scan, nj: int = 1) -> list[dict]:
    """The manifest stage of the LRS corpora: ``scan() -> (entries, rejected)``, then the
    transcripts and durations of the entries (:func:`avse.recipes.voxceleb2.finish_manifest`).
    """
    manifest_path = os.path.join(out_dir, "manifest.jsonl")
    marker = os.path.join(out_dir, ".done", "manifest")
    if is_done(marker, params) and os.path.isfile(manifest_path):
        print(f"[manifest] {manifest_path} is up to date; skipping")
        return read_jsonl(manifest_path)
    summary = Summary("manifest")
    entries, rejected = scan()
    return vox.finish_manifest(out_dir, entries, rejected, marker, params, summary, nj,
                               task=probe_with_transcript)


def check_names(names, known, option: str) -> tuple:
    """``names`` (a comma list or a sequence) checked against ``known``; RecipeError if not."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise RecipeError(f"{option}: unknown or no name(s) {unknown}; choose among {list(known)}")
    return tuple(dict.fromkeys(names))


# --------------------------------------------------------------------------- tokens
def tokenizer_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "tokenizer")


def stage_tokens(out_dir: str, vocab_size: int = 500, model_type: str = "unigram",
                 byte_fallback: bool = False, train_split: str = "train") -> dict:
    """Stage 3: train sentencepiece on the ``train_split`` transcripts of the manifest.

    Writes ``OUT/tokenizer/{spm.model, spm.vocab, tokenizer.json}``; ``vocab_size`` is an
    upper bound (``hard_vocab_limit=False``: a small corpus gives fewer pieces). Without
    ``byte_fallback``, characters never seen in training become ``<unk>`` (id 0).
    Returns the tokenizer.json dict.
    """
    import sentencepiece as spm

    if vocab_size < 2:
        raise RecipeError(f"--vocab_size must be at least 2, got {vocab_size}")
    entries = read_jsonl(os.path.join(out_dir, "manifest.jsonl"))
    texts = [e["text"] for e in entries if e["split"] == train_split]
    if not texts:
        raise RecipeError(f"no {train_split} transcripts in {out_dir}/manifest.jsonl: the tokens "
                          f"stage trains on the {train_split} split (include it in --splits)")
    tok_dir = tokenizer_dir(out_dir)
    info_path = os.path.join(tok_dir, "tokenizer.json")
    params = {"vocab_size": vocab_size, "model_type": model_type, "byte_fallback": byte_fallback,
              "train_split": train_split, "texts": params_hash(texts)}
    marker = os.path.join(out_dir, ".done", "tokens")
    if is_done(marker, params) and os.path.isfile(info_path):
        print(f"[tokens] {tok_dir} is up to date; skipping")
        with open(info_path) as f:
            return json.load(f)
    summary = Summary("tokens", unit="transcripts")
    os.makedirs(tok_dir, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=os.path.join(tok_dir, "spm"),
            vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
            character_coverage=1.0, byte_fallback=byte_fallback, unk_id=0, bos_id=-1,
            eos_id=-1, pad_id=-1, num_threads=1, minloglevel=2)
    except (RuntimeError, OSError) as err:
        raise RecipeError(f"sentencepiece could not train on {len(texts)} {train_split} "
                          f"transcripts (--vocab_size {vocab_size}, --model_type {model_type}): "
                          f"{err}") from None
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "spm.model"))
    lossy = sum(sp.decode(sp.encode(e["text"])) != e["text"] for e in entries)
    info = {"model": "spm.model", "vocab": "spm.vocab", "vocab_size": sp.get_piece_size(),
            "requested_vocab_size": vocab_size, "model_type": model_type,
            "byte_fallback": byte_fallback, "unk_id": 0, "trained_on": train_split,
            "num_transcripts": len(texts)}
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    mark_done(marker, params, vocab_size=info["vocab_size"])
    note = f"{info['vocab_size']} pieces"
    if info["vocab_size"] < vocab_size:
        note += f" (asked {vocab_size}: the {train_split} transcripts support no more)"
    note += f"; {len(entries) - lossy} of {len(entries)} transcripts decode back exactly"
    if lossy:
        note += f" ({lossy} hold characters unseen in {train_split}: <unk>; try --byte_fallback)"
    summary.line(len(texts), 0, processed=len(texts), note=note)
    return info


# --------------------------------------------------------------------------- shards
def transcript_fields(out_dir: str, tokenizer: str | None = None):
    """``(extra_json, extra_meta)`` for the shards: transcript fields per key, and token ids
    from the sentencepiece model ``tokenizer`` when given."""
    extra = {e["key"]: {"text": e["text"], "conf": e["conf"], "words": e["words"]}
             for e in read_jsonl(os.path.join(out_dir, "manifest.jsonl"))}
    meta = {}
    if tokenizer:
        import sentencepiece as spm

        if not os.path.isfile(tokenizer):
            raise RecipeError(f"tokenizer model {tokenizer} not found")
        sp = spm.SentencePieceProcessor(model_file=tokenizer)
        for fields in extra.values():
            fields["tokens"] = sp.encode(fields["text"])
        with open(tokenizer, "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        shards_dir = os.path.join(out_dir, "shards")  # the path is relative to a split folder
        meta = {"tokenizer": os.path.join("..", os.path.relpath(tokenizer, shards_dir)),
                "tokenizer_sha1": digest, "vocab_size": sp.get_piece_size()}
    return extra, meta


def stage_shards(out_dir: str, shard_size: int = 1000, shard_multiple: int = 8, seed: int = 0,
                 corpus: str = "lrs2", tokenizer: str | None = "auto") -> dict:
    """Stage 4: the VoxCeleb2 shard stage with the transcript (and token) fields in the json.

    ``tokenizer="auto"`` takes ``OUT/tokenizer/spm.model`` when the tokens stage wrote it.
    """
    if tokenizer == "auto":
        tokenizer = os.path.join(tokenizer_dir(out_dir), "spm.model")
        if not os.path.isfile(tokenizer):
            print(f"[shards] no {tokenizer}: the json holds no token ids (run the tokens stage)",
                  file=sys.stderr)
            tokenizer = None
    extra_json, extra_meta = transcript_fields(out_dir, tokenizer)
    return vox.stage_shards(out_dir, shard_size, shard_multiple, seed, corpus=corpus, crop=corpus,
                            extra_json=extra_json, extra_meta=extra_meta)


# --------------------------------------------------------------------------- lists
def stage_lists(out_dir: str, mixtures: str = DEFAULT_MIXTURES, num_speakers=(2, 3),
                snr_range=(-10.0, 10.0), seed: int = 0, splits=SPLITS) -> dict:
    """Stage 5: generated VoxMix lists; the sources of a mixture come from different videos.

    ``mixtures`` is ``"split:rows,..."`` (split names among ``splits``).
    """
    counts = vox.parse_mixture_counts(mixtures) if isinstance(mixtures, str) else dict(mixtures)
    check_names(list(counts), splits, "--mixtures")
    if any(k < 2 for k in num_speakers) or not num_speakers:
        raise RecipeError(f"--num_speakers must be 2 or more, got {list(num_speakers)}")
    present = {e["split"] for e in read_jsonl(os.path.join(out_dir, "manifest.jsonl"))}
    for split in sorted(s for s, n in counts.items() if n > 0 and s not in present):
        print(f"[lists] {split}: not in the manifest (see --splits / --subsets); no {split} rows",
              file=sys.stderr)
    return vox.stage_lists(out_dir, None, counts, snr_range, tuple(num_speakers), seed)


# --------------------------------------------------------------------------- driver
def prepare_lrs2(corpus_dir: str, out_dir: str, nj: int = 1, splits=SPLITS,
                 vocab_size: int = 500, shard_size: int = 1000, shard_multiple: int = 8,
                 mixtures: str = DEFAULT_MIXTURES, num_speakers=(2, 3), seed: int = 0,
                 stage: int = 1, stop_stage: int = 5):
    """Run stages ``stage..stop_stage`` (see the module docstring)."""
    if stage <= 1 <= stop_stage:
        stage_manifest(corpus_dir, out_dir, splits, nj)
    if stage <= 2 <= stop_stage:
        vox.stage_extract(out_dir, nj, crop="lrs2")
    if stage <= 3 <= stop_stage:
        stage_tokens(out_dir, vocab_size)
    if stage <= 4 <= stop_stage:
        stage_shards(out_dir, shard_size, shard_multiple, seed)
    if stage <= 5 <= stop_stage:
        stage_lists(out_dir, mixtures, num_speakers, seed=seed)


def add_common_stages(sub, common, crop: str, mixtures: str) -> dict:
    """The ``extract``, ``shards`` and ``lists`` subcommands of the LRS recipes."""
    parsers = {}
    p = parsers["extract"] = sub.add_parser("extract", parents=[common],
                                            help="decode audio + mouth ROI")
    p.add_argument("--crop", default=crop, help=f"mouth crop preset {sorted(MOUTH_CROPS)}")
    p.add_argument("--min_duration", type=float, default=1.0, help="seconds")
    p.add_argument("--max_diff_frames", type=int, default=1)
    p.add_argument("--retry_rejected", action="store_true")
    p = parsers["shards"] = sub.add_parser("shards", parents=[common],
                                           help="write WebDataset shards")
    p.add_argument("--shard_size", type=int, default=1000, help="max utterances per shard")
    p.add_argument("--shard_multiple", type=int, default=8,
                   help="shard count is a multiple of this (ranks x workers)")
    p = parsers["lists"] = sub.add_parser("lists", parents=[common], help="VoxMix lists")
    p.add_argument("--mixtures", default=mixtures, help="rows per split, 'split:count,...'")
    p.add_argument("--num_speakers", type=int, nargs="+", default=[2, 3])
    p.add_argument("--snr_range", type=float, nargs=2, default=(-10.0, 10.0))
    return parsers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m avse.recipes.lrs2",
        description="LRS2-BBC -> WebDataset shards + VoxMix lists (one subcommand per stage).")
    sub = parser.add_subparsers(dest="stage", required=True)
    common = common_parser()
    p = sub.add_parser("manifest", parents=[common], help="stage 1: read the filelists")
    p.add_argument("--corpus_dir", required=True, help=LAYOUT_HINT)
    p.add_argument("--splits", default=",".join(SPLITS),
                   help="filelists to prepare, e.g. train,val,test (no pretrain)")
    p = sub.add_parser("tokens", parents=[common], help="stage 3: train sentencepiece")
    p.add_argument("--vocab_size", type=int, default=500, help="upper bound on the pieces")
    p.add_argument("--model_type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    p.add_argument("--byte_fallback", action="store_true",
                   help="encode unseen characters as bytes (needs --vocab_size > ~300)")
    add_common_stages(sub, common, "lrs2", DEFAULT_MIXTURES)
    return parser


def run_common_stage(args, corpus: str, splits, tokenizer=None) -> None:
    """Dispatch the ``extract``, ``shards`` and ``lists`` subcommands."""
    if args.stage == "extract":
        vox.stage_extract(args.out_dir, args.nj, args.crop, args.min_duration,
                          args.max_diff_frames, args.retry_rejected)
    elif args.stage == "shards":
        stage_shards(args.out_dir, args.shard_size, args.shard_multiple, args.seed, corpus,
                     tokenizer)
    elif args.stage == "lists":
        stage_lists(args.out_dir, args.mixtures, args.num_speakers, tuple(args.snr_range),
                    args.seed, splits)


def _run(args) -> None:
    if args.stage == "manifest":
        stage_manifest(args.corpus_dir, args.out_dir, args.splits, args.nj)
    elif args.stage == "tokens":
        stage_tokens(args.out_dir, args.vocab_size, args.model_type, args.byte_fallback)
    else:
        run_common_stage(args, "lrs2", SPLITS, tokenizer="auto")


def main(argv=None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
