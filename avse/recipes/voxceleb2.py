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

This module knows the corpus layout and its splits; stages 2-4 and the probing are the
shared audio-visual stages of :mod:`avse.recipes.stages`.

Clips that cannot be read, are truncated, too short, or whose audio and video disagree
are skipped and listed in ``OUT/rejected.tsv``; they never stop a run.

Example
-------
``prepare_voxceleb2("corpus", "data/vox2", nj=2)`` runs all four stages.
"""
from __future__ import annotations

import argparse
import os

from avse.data.lists import check_known, read_list
from avse.recipes import stages
from avse.recipes.common import RecipeError, hash_seed, recipe_parser, run_cli

SUBSETS = ("dev", "test")
MEDIA_TREES = (("mp4", ".mp4"), ("aac", ".m4a"))
LAYOUT_HINT = "CORPUS/{dev,test}/mp4/<spk>/<video>/<clip>.mp4 (or .../aac/...m4a)"
DEFAULT_MIXTURES = "train:20000,val:5000,test:3000"  # VoxMix sizes


# --------------------------------------------------------------------------- manifest
def scan_corpus(corpus_dir: str, subsets=SUBSETS) -> list[dict]:
    """List every utterance of a VoxCeleb2-layout tree.

    Returns manifest entries (:func:`avse.recipes.stages.manifest_entry`) keyed
    ``spk/video/clip``, whose ``media`` is the mp4, or the m4a when there is no mp4 tree.
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
                            entries.append(stages.manifest_entry(
                                f"{spk}/{video}/{clip}", spk, video, clip, subset,
                                os.path.join(vid_dir, name)))
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
    draw = hash_seed(seed, entry["spk"], entry["video"]) / 0xFFFFFFFF
    return "val" if draw < val_fraction else "train"


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


def select_entries(corpus_dir: str, lists: str | None = None, audio_path: str | None = None,
                   visual_path: str | None = None, val_fraction: float = 0.05, seed: int = 0):
    """The utterances to prepare and their splits, ``(entries, rejected rows)``.

    With ``lists`` (a VoxMix csv) only the utterances it names, in the set it names;
    otherwise all, split by :func:`assign_split`. Entries get their ``audio`` / ``emb``
    file from ``audio_path`` / ``visual_path``; one without is rejected.
    """
    entries = scan_corpus(corpus_dir)
    if lists:
        mixtures = read_list(lists)
        check_known(mixtures, {e["key"] for e in entries}, where=f"--lists {lists}")
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
    return [e for e in entries if e["key"] not in bad], rejected


def stage_manifest(corpus_dir: str, out_dir: str, lists: str | None = None,
                   audio_path: str | None = None, visual_path: str | None = None,
                   val_fraction: float = 0.05, seed: int = 0, nj: int = 1,
                   retry_rejected: bool = False) -> list[dict]:
    """Stage 1: write ``OUT/manifest.jsonl`` (one utterance a line). Returns the entries.

    Clips rejected by an earlier run are probed again only with ``retry_rejected``."""
    for name, path in (("--audio_path", audio_path), ("--visual_path", visual_path)):
        if path and not os.path.isdir(path):
            raise RecipeError(f"{name} {path} does not exist")
    params = {"corpus_dir": os.path.abspath(corpus_dir), "lists": lists,
              "audio_path": audio_path, "visual_path": visual_path,
              "val_fraction": val_fraction, "seed": seed}
    if lists:
        params["lists_mtime"] = os.path.getmtime(lists) if os.path.isfile(lists) else None
    return stages.run_manifest(out_dir, params, lambda: select_entries(
        corpus_dir, lists, audio_path, visual_path, val_fraction, seed), nj,
        retry_rejected=retry_rejected)


# --------------------------------------------------------------------------- driver
def prepare_voxceleb2(corpus_dir: str, out_dir: str, nj: int = 1, lists: str | None = None,
                      audio_path: str | None = None, visual_path: str | None = None,
                      shard_size: int = 1000, shard_multiple: int = 8, seed: int = 0,
                      mixtures: dict | None = None, stage: int = 1, stop_stage: int = 4):
    """Run stages ``stage..stop_stage`` (see the module docstring)."""
    if stage <= 1 <= stop_stage:
        stage_manifest(corpus_dir, out_dir, lists, audio_path, visual_path, seed=seed, nj=nj)
    if stage <= 2 <= stop_stage:
        stages.stage_extract(out_dir, nj=nj)
    if stage <= 3 <= stop_stage:
        stages.stage_shards(out_dir, shard_size, shard_multiple, seed)
    if stage <= 4 <= stop_stage:
        stages.stage_lists(out_dir, lists, mixtures, seed=seed)


def build_parser() -> argparse.ArgumentParser:
    parser, sub, common = recipe_parser(
        "voxceleb2", "VoxCeleb2 -> WebDataset shards + VoxMix lists (one subcommand per stage).")
    p = sub.add_parser("manifest", parents=[common], help="stage 1: scan the corpus")
    p.add_argument("--corpus_dir", required=True, help=LAYOUT_HINT)
    p.add_argument("--lists", help="VoxMix csv: keep only the utterances it names")
    p.add_argument("--audio_path", help="official aac tree or <spk>/<video>/<clip>.wav tree")
    p.add_argument("--visual_path", help="lip embeddings <spk>/<video>/<clip>.npy [T, 512]")
    p.add_argument("--val_fraction", type=float, default=0.05)
    p.add_argument("--retry_rejected", action="store_true",
                   help="probe again the clips an earlier run rejected")
    parsers = stages.add_stage_parsers(sub, common, "voxceleb2", DEFAULT_MIXTURES)
    parsers["lists"].add_argument("--lists", help="VoxMix csv to re-write for the kept utterances")
    return parser


def _shards(args) -> None:
    stages.stage_shards(args.out_dir, args.shard_size, args.shard_multiple, args.seed)


def _run(args) -> None:
    if args.stage == "manifest":
        stage_manifest(args.corpus_dir, args.out_dir, args.lists, args.audio_path,
                       args.visual_path, args.val_fraction, args.seed, args.nj,
                       args.retry_rejected)
    else:
        stages.run_stage(args, _shards)


def main(argv=None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
