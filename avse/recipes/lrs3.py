"""LRS3-TED (evaluation corpus) -> WebDataset shards with transcripts + VoxMix test lists.

Stages (``recipes/LRS3/run.sh`` calls them in order; each is idempotent):

1. ``manifest``: scan ``CORPUS/<subset>/<11-char id>/<clip>.{mp4,txt}`` for the chosen
   ``--subsets`` (``test`` by default; ``trainval`` and ``pretrain`` on request), parse the
   transcripts (``Text:`` header; the word table is optional), probe durations.
2. ``extract``: 16 kHz mono audio + 88x88 grayscale mouth ROI at 25 fps from the fixed
   crop ``MOUTH_CROPS["lrs3"]`` (224x224 face-centred frames, as VoxCeleb2;
   :func:`avse.recipes.stages.stage_extract`).
3. ``shards``: ``OUT/shards/<subset>/`` + ``meta.json``; the json carries ``text``,
   ``conf``, ``words`` (and ``tokens`` with ``--tokenizer spm.model``, e.g. LRS2's;
   :func:`avse.recipes.transcripts.stage_shards`).
4. ``lists``: 2-mix / 3-mix VoxMix lists of clean single-talker clips, the sources of a
   mixture from different ids (``--mixtures test:3000``), for cross-corpus evaluation of
   models trained on VoxCeleb2 or LRS2.

Each id folder (one TED talk) is one pseudo-speaker; keys are ``<id>/<subset>/<clip>``.
The split of an utterance is its subset. Unreadable clips and missing or malformed
transcripts go to ``OUT/rejected.tsv``.

Example
-------
``prepare_lrs3("lrs3", "data/lrs3", nj=2)`` prepares the test subset.
"""
from __future__ import annotations

import argparse
import os

from avse.recipes import stages
from avse.recipes.common import RecipeError, check_names, recipe_parser, run_cli
from avse.recipes.transcripts import probe_with_transcript, stage_shards

SUBSETS = ("pretrain", "trainval", "test")
LAYOUT_HINT = "CORPUS/{pretrain,trainval,test}/<11-char id>/<clip>.{mp4,txt}"
DEFAULT_MIXTURES = "test:3000"


def scan_corpus(corpus_dir: str, subsets=("test",)):
    """Entries of the chosen subsets and the rows to reject (ids with dots).

    Raises RecipeError when the corpus or a chosen subset folder is missing, or no clip
    is found.
    """
    if not os.path.isdir(corpus_dir):
        raise RecipeError(f"--corpus_dir {corpus_dir} does not exist (expected {LAYOUT_HINT})")
    entries, rejected = [], []
    for subset in subsets:
        root = os.path.join(corpus_dir, subset)
        if not os.path.isdir(root):
            raise RecipeError(f"{root} not found (expected {LAYOUT_HINT}); choose --subsets "
                              "among the folders present")
        for vid in sorted(os.listdir(root)):
            vid_dir = os.path.join(root, vid)
            if not os.path.isdir(vid_dir):
                continue
            for name in sorted(os.listdir(vid_dir)):
                if not name.endswith(".mp4"):
                    continue
                clip = name[: -len(".mp4")]
                entry = stages.manifest_entry(f"{vid}/{subset}/{clip}", vid, vid, clip, subset,
                                              os.path.join(vid_dir, name), split=subset)
                problem = stages.id_problem(vid, clip)
                if problem:
                    rejected.append({"key": entry["key"], "path": entry["media"],
                                     "reason": problem})
                else:
                    entries.append(entry)
    if not entries and not rejected:
        raise RecipeError(f"no clips found under {corpus_dir} for --subsets "
                          f"{','.join(subsets)}: expected {LAYOUT_HINT}")
    return entries, rejected


def stage_manifest(corpus_dir: str, out_dir: str, subsets=("test",), nj: int = 1,
                   retry_rejected: bool = False) -> list[dict]:
    """Stage 1: write ``OUT/manifest.jsonl``. Returns the kept entries.

    Clips rejected by an earlier run are probed again only with ``retry_rejected``."""
    subsets = check_names(subsets, SUBSETS, "--subsets")
    params = {"corpus_dir": os.path.abspath(corpus_dir), "subsets": list(subsets)}
    return stages.run_manifest(out_dir, params, lambda: scan_corpus(corpus_dir, subsets), nj,
                               task=probe_with_transcript, retry_rejected=retry_rejected)


def prepare_lrs3(corpus_dir: str, out_dir: str, nj: int = 1, subsets=("test",),
                 shard_size: int = 1000, shard_multiple: int = 8,
                 mixtures: str = DEFAULT_MIXTURES, num_speakers=(2, 3), seed: int = 0,
                 tokenizer: str | None = None, stage: int = 1, stop_stage: int = 4):
    """Run stages ``stage..stop_stage`` (see the module docstring)."""
    if stage <= 1 <= stop_stage:
        stage_manifest(corpus_dir, out_dir, subsets, nj)
    if stage <= 2 <= stop_stage:
        stages.stage_extract(out_dir, nj, crop="lrs3")
    if stage <= 3 <= stop_stage:
        stage_shards(out_dir, shard_size, shard_multiple, seed, "lrs3", tokenizer)
    if stage <= 4 <= stop_stage:
        stages.stage_lists(out_dir, None, mixtures, num_speakers=tuple(num_speakers), seed=seed,
                           splits=SUBSETS)


def build_parser() -> argparse.ArgumentParser:
    parser, sub, common = recipe_parser(
        "lrs3", "LRS3 -> WebDataset shards + VoxMix test lists (one subcommand per stage).")
    p = sub.add_parser("manifest", parents=[common], help="stage 1: scan the corpus")
    p.add_argument("--corpus_dir", required=True, help=LAYOUT_HINT)
    p.add_argument("--subsets", default="test", help="comma list of pretrain,trainval,test")
    p.add_argument("--retry_rejected", action="store_true",
                   help="probe again the clips an earlier run rejected")
    parsers = stages.add_stage_parsers(sub, common, "lrs3", DEFAULT_MIXTURES)
    parsers["shards"].add_argument("--tokenizer", help="sentencepiece model (e.g. LRS2's "
                                   "tokenizer/spm.model): add token ids to the json")
    return parser


def _shards(args) -> None:
    stage_shards(args.out_dir, args.shard_size, args.shard_multiple, args.seed, "lrs3",
                 args.tokenizer)


def _run(args) -> None:
    if args.stage == "manifest":
        stage_manifest(args.corpus_dir, args.out_dir, args.subsets, args.nj,
                       args.retry_rejected)
    else:
        stages.run_stage(args, _shards, SUBSETS)


def main(argv=None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
