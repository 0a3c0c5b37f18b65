"""LRS2-BBC -> WebDataset shards (with transcripts and token ids) + VoxMix mixture lists.

Stages (``recipes/LRS2/run.sh`` calls them in order; each is idempotent):

1. ``manifest``: read the filelists ``CORPUS/{pretrain,train,val,test}.txt`` (one
   ``<video id>/<clip>`` a line; a trailing tag such as `` NF`` or `` MV`` is ignored),
   find ``CORPUS/main/<video id>/<clip>.{mp4,txt}`` (``pretrain/...`` for pretrain.txt),
   parse the transcripts, probe durations and write ``OUT/manifest.jsonl``.
2. ``extract``: 16 kHz mono audio + 88x88 grayscale mouth ROI at 25 fps from the fixed
   crop ``MOUTH_CROPS["lrs2"]`` (:func:`avse.recipes.stages.stage_extract`).
3. ``tokens``: train a sentencepiece model on the *train* split's transcripts
   (``OUT/tokenizer/spm.model``, ``spm.vocab``, ``tokenizer.json``;
   :func:`avse.recipes.transcripts.stage_tokens`).
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
import os

from avse.recipes import stages
from avse.recipes.common import RecipeError, check_names, recipe_parser, run_cli
from avse.recipes.transcripts import probe_with_transcript, stage_shards, stage_tokens

SPLITS = ("pretrain", "train", "val", "test")
LAYOUT_HINT = ("CORPUS/{main,pretrain}/<video id>/<clip>.{mp4,txt} and the filelists "
               "CORPUS/{pretrain,train,val,test}.txt")
DEFAULT_MIXTURES = "train:20000,val:5000,test:3000"


# --------------------------------------------------------------------------- manifest
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
                problem = stages.id_problem(vid, clip)
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
                    entries.append(stages.manifest_entry(key, vid, vid, clip, subset, media, split))
                seen.setdefault(key, where)
    if not entries and not rejected:
        raise RecipeError(f"the filelists {', '.join(f'{s}.txt' for s in splits)} in "
                          f"{corpus_dir} are empty")
    return entries, rejected


def stage_manifest(corpus_dir: str, out_dir: str, splits=SPLITS, nj: int = 1,
                   retry_rejected: bool = False) -> list[dict]:
    """Stage 1: write ``OUT/manifest.jsonl`` from the filelists. Returns the kept entries.

    Clips rejected by an earlier run are probed again only with ``retry_rejected``."""
    splits = check_names(splits, SPLITS, "--splits")
    params = {"corpus_dir": os.path.abspath(corpus_dir), "splits": list(splits), "lists_mtime": [
        os.path.getmtime(p) if os.path.isfile(p) else None
        for p in (os.path.join(corpus_dir, f"{s}.txt") for s in splits)]}
    return stages.run_manifest(out_dir, params, lambda: read_filelists(corpus_dir, splits), nj,
                               task=probe_with_transcript, retry_rejected=retry_rejected)


# --------------------------------------------------------------------------- driver
def prepare_lrs2(corpus_dir: str, out_dir: str, nj: int = 1, splits=SPLITS,
                 vocab_size: int = 500, shard_size: int = 1000, shard_multiple: int = 8,
                 mixtures: str = DEFAULT_MIXTURES, num_speakers=(2, 3), seed: int = 0,
                 stage: int = 1, stop_stage: int = 5):
    """Run stages ``stage..stop_stage`` (see the module docstring)."""
    if stage <= 1 <= stop_stage:
        stage_manifest(corpus_dir, out_dir, splits, nj)
    if stage <= 2 <= stop_stage:
        stages.stage_extract(out_dir, nj, crop="lrs2")
    if stage <= 3 <= stop_stage:
        stage_tokens(out_dir, vocab_size)
    if stage <= 4 <= stop_stage:
        stage_shards(out_dir, shard_size, shard_multiple, seed, "lrs2")
    if stage <= 5 <= stop_stage:
        stages.stage_lists(out_dir, None, mixtures, num_speakers=tuple(num_speakers), seed=seed,
                           splits=SPLITS)


def build_parser() -> argparse.ArgumentParser:
    parser, sub, common = recipe_parser(
        "lrs2", "LRS2-BBC -> WebDataset shards + VoxMix lists (one subcommand per stage).")
    p = sub.add_parser("manifest", parents=[common], help="stage 1: read the filelists")
    p.add_argument("--corpus_dir", required=True, help=LAYOUT_HINT)
    p.add_argument("--splits", default=",".join(SPLITS),
                   help="filelists to prepare, e.g. train,val,test (no pretrain)")
    p.add_argument("--retry_rejected", action="store_true",
                   help="probe again the clips an earlier run rejected")
    p = sub.add_parser("tokens", parents=[common], help="stage 3: train sentencepiece")
    p.add_argument("--vocab_size", type=int, default=500, help="upper bound on the pieces")
    p.add_argument("--model_type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    p.add_argument("--byte_fallback", action="store_true",
                   help="encode unseen characters as bytes (needs --vocab_size > ~300)")
    stages.add_stage_parsers(sub, common, "lrs2", DEFAULT_MIXTURES, numbers=(2, 4, 5))
    return parser


def _shards(args) -> None:
    stage_shards(args.out_dir, args.shard_size, args.shard_multiple, args.seed, "lrs2")


def _run(args) -> None:
    if args.stage == "manifest":
        stage_manifest(args.corpus_dir, args.out_dir, args.splits, args.nj,
                       args.retry_rejected)
    elif args.stage == "tokens":
        stage_tokens(args.out_dir, args.vocab_size, args.model_type, args.byte_fallback)
    else:
        stages.run_stage(args, _shards, SPLITS)


def main(argv=None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
