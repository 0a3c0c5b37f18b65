"""Cross-corpus evaluation: one model on the test lists of several corpora, one table.

The seed's paper reports its models on several evaluation corpora side by side (SI-SDR,
SI-SDRi, SDR, SDRi, PESQ, STOI per corpus). Each corpus is a recipe's output folder
(``--out_dir`` of ``recipes/<Corpus>/run.sh``): its test shards ``OUT/shards/<set>/`` and a
VoxMix list ``OUT/lists/<file>.csv``::

    python -m avse.evaluation.cross_corpus --model exp/voxceleb2/dprnn/1 \\
        --corpus voxceleb2=data/vox2 lrs2=data/lrs2 lrs3=data/lrs3 \\
        grid=data/grid:voxmix_2mix.csv tcdtimit=data/tcdtimit:voxmix_2mix.csv \\
        --out_dir exp/voxceleb2/dprnn/1/eval/cross_corpus

A corpus is ``NAME=OUT_DIR[:LIST]``. ``NAME`` is one of :data:`CORPORA` (any spelling of
case, ``-`` and ``_``: ``TCD-TIMIT`` is ``tcdtimit``), whose default list is
:data:`DEFAULT_LIST` (the 2-mix list every recipe's ``lists`` stage writes), or any other
label with an explicit ``LIST`` (e.g. ``tcdtimit_lipspeakers=data/tcd:lipspeakers_2mix.csv``).
``LIST`` is a path, or a file name inside ``OUT_DIR/lists/`` (then ``OUT_DIR``). Only the
rows of the list's ``--set`` (default ``test``) are evaluated (VoxCeleb2's and LRS2's lists
also hold train and val rows; a list of one set is used whole), the first
``--max_mixtures`` of them, read from the shards of their set, ``OUT_DIR/shards/<set>/``.
TCD-TIMIT keeps its volunteers and lipspeakers apart (:data:`DEFAULT_LISTS`): ``tcdtimit``
is the volunteers' list and shards, ``tcd_lip=OUT:lipspeakers/voxmix_2mix.csv`` the
lipspeakers'.

The scoring is the evaluation package's (:func:`~avse.evaluation.scoring.score_loader`, one
:class:`~avse.evaluation.scoring.Scorer` for every corpus: a missing PESQ/STOI package is
reported once), the mixtures as the list loader makes them for testing (full length, in
order, normalised as the model's ``inference`` section says), written by
:func:`~avse.evaluation.report.write_table`: ``<out_dir>/cross_corpus.{txt,csv,json}`` (one
row per corpus: ``corpus, mixtures, <metrics>``; the csv adds ``status`` and ``error``) and
``<out_dir>/<corpus>.csv`` (per mixture).

A corpus that cannot be evaluated (a missing folder, shard split or list, a list naming
utterances the shards lack, a model that does not fit its shards) does not stop the others:
its row is null, its error (naming the corpus and the path) is in the csv's ``error``
column, in ``cross_corpus.json`` under ``failed`` and on stderr, and the exit code is 1.
Bad arguments (a malformed ``--corpus``, an unknown name without a list, a model that does
not load, an unknown metric) stop before anything is evaluated, with exit code 2.

Example
-------
>>> parse_corpus("TCD-TIMIT=data/tcd")
Corpus(name='tcdtimit', out_dir='data/tcd', list=None)
>>> parse_corpus("grid=data/grid:test_2mix.csv")
Corpus(name='grid', out_dir='data/grid', list='test_2mix.csv')
>>> parse_corpus("tcd_lipspeakers=data/tcd:lists/lip.csv").name
'tcd_lipspeakers'
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass

from avse.evaluation.registry import DEFAULT_METRICS
from avse.evaluation.report import format_table, means_rows, write_table
from avse.evaluation.scoring import Scorer, score_loader

logger = logging.getLogger(__name__)

__all__ = ["CORPORA", "DEFAULT_LIST", "DEFAULT_LISTS", "Corpus", "CorpusError", "parse_corpus",
           "resolve_list", "resolve_corpus", "evaluate_corpora", "table_rows", "main"]

PROG = "python -m avse.evaluation.cross_corpus"
TABLE = "cross_corpus"
CORPORA = {"voxceleb2": "VoxCeleb2", "lrs2": "LRS2", "lrs3": "LRS3", "grid": "GRID",
           "tcdtimit": "TCD-TIMIT"}
"""Known corpus names (canonical: lower case, no ``-`` / ``_``) and how papers spell them."""
DEFAULT_LIST = "voxmix_2mix.csv"
"""The list (in ``OUT/lists/``) a known corpus is evaluated on when ``LIST`` is not given:
the 2-mix VoxMix list of the recipes' ``lists`` stage (VoxCeleb2, LRS2, LRS3, GRID), except
where :data:`DEFAULT_LISTS` says otherwise."""
DEFAULT_LISTS = {"tcdtimit": os.path.join("volunteers", DEFAULT_LIST)}
"""TCD-TIMIT keeps volunteers and lipspeakers apart (``OUT/lists/<subset>/``, shards
``OUT/shards/<subset>/``): the volunteers by default; the lipspeakers with
``tcdtimit_lipspeakers=OUT:lipspeakers/voxmix_2mix.csv``."""
FACE_SHARDS = "face"  # meta.json crop of face-centred shards (avse.recipes.stages.FACE_CROP)


class CorpusError(ValueError):
    """A corpus that cannot be evaluated; the message names the corpus and the path."""


@dataclass(frozen=True)
class Corpus:
    """One ``--corpus``: table label, recipe output folder, list (None: the default)."""

    name: str
    out_dir: str
    list: str | None = None


def canonical(name: str) -> str:
    """``"TCD-TIMIT"`` -> ``"tcdtimit"`` (lower case, ``-`` and ``_`` dropped).

    >>> canonical("LRS3"), canonical("tcd_timit")
    ('lrs3', 'tcdtimit')
    """
    return re.sub(r"[-_]", "", name.strip().lower())


def parse_corpus(spec: str) -> Corpus:
    """``NAME=OUT_DIR[:LIST]`` -> :class:`Corpus` (a known ``NAME`` in its canonical form).

    ``OUT_DIR`` may hold a ``:`` when it is an existing folder and no ``LIST`` follows.
    A ``NAME`` that is not in :data:`CORPORA` needs a ``LIST``."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name or not rest or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"--corpus {spec!r}: expected NAME=OUT_DIR[:LIST] (NAME of letters, "
                         f"digits, '.', '_', '-'; known: {', '.join(CORPORA)})")
    out_dir, list_path = rest, None
    if ":" in rest and not os.path.isdir(rest):
        out_dir, _, list_path = rest.rpartition(":")
        if not out_dir or not list_path:
            raise ValueError(f"--corpus {spec!r}: empty OUT_DIR or LIST in NAME=OUT_DIR[:LIST]")
    known = canonical(name) in CORPORA
    if not known and list_path is None:
        raise ValueError(f"--corpus {spec!r}: unknown corpus {name!r} (known: "
                         f"{', '.join(CORPORA)}); another name needs its list: "
                         f"{name}=OUT_DIR:LIST")
    return Corpus(canonical(name) if known else name, out_dir, list_path)


def _csvs(folder: str) -> str:
    found = sorted(f for f in os.listdir(folder) if f.endswith(".csv")) if os.path.isdir(
        folder) else []
    return f"{folder} holds {', '.join(found)}" if found else f"{folder} holds no .csv list"


def resolve_list(corpus: Corpus) -> str:
    """The list path of ``corpus``; :class:`CorpusError` naming the corpus and what is
    missing (the folder, the list: with the paths tried and the lists ``OUT/lists`` holds)."""
    where = f"corpus {corpus.name}"
    if not os.path.isdir(corpus.out_dir):
        raise CorpusError(f"{where}: folder {corpus.out_dir} not found (the recipe's --out_dir)")
    lists_dir = os.path.join(corpus.out_dir, "lists")
    if corpus.list is None:
        path = os.path.join(lists_dir, DEFAULT_LISTS.get(corpus.name, DEFAULT_LIST))
        if not os.path.isfile(path):
            raise CorpusError(f"{where}: mixture list {path} not found (run the recipe's lists "
                              f"stage, or name one: {corpus.name}=OUT_DIR:LIST; "
                              f"{_csvs(os.path.dirname(path))})")
        return path
    tried = [corpus.list] if os.path.isabs(corpus.list) else [
        os.path.join(lists_dir, corpus.list), os.path.join(corpus.out_dir, corpus.list),
        corpus.list]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise CorpusError(f"{where}: mixture list {corpus.list} not found (tried "
                      f"{', '.join(dict.fromkeys(tried))}; {_csvs(lists_dir)})")


def resolve_corpus(corpus: Corpus, set_name: str = "test", max_mixtures=None):
    """``(list path, rows, shard split folder)``: the list's rows of set ``set_name`` (all
    of them when the list holds one set only, e.g. TCD-TIMIT's ``volunteers``), the first
    ``max_mixtures``, and ``OUT_DIR/shards/<the rows' set>``; :class:`CorpusError` naming the
    corpus and the path that is missing."""
    from avse.data.lists import read_list
    from avse.data.loaders.list_mode import select_rows

    where = f"corpus {corpus.name}"
    path = resolve_list(corpus)
    rows = select_rows(read_list(path), set_name, path)[:max_mixtures]
    if not rows:
        raise CorpusError(f"{where}: {path} holds no {set_name} rows")
    split = rows[0].set
    shards = os.path.join(corpus.out_dir, "shards", split)
    if not os.path.isdir(shards):
        raise CorpusError(f"{where}: no {split} shards {shards} for {path} (run the recipe's "
                          "shards stage)")
    return path, rows, shards


def _crop_note(shards: str, model_crop: str | None, where: str) -> str | None:
    """The shards' crop preset (meta.json); a warning when the model was trained on another.
    Shards of face-centred frames (``"face"``, a recipe's ``--crop face``) are cut to the
    model's crop at load time: no mismatch."""
    from avse.data.shards import read_meta

    crop = read_meta(shards).get("crop")
    if crop == FACE_SHARDS:
        return crop
    if crop and model_crop and crop != model_crop:
        logger.warning("%s: the shards hold the %r crop, the model was trained on %r; its "
                       "numbers on this corpus mix a crop mismatch into the domain shift",
                       where, crop, model_crop)
    return crop


def evaluate_corpora(model, corpora, metrics=DEFAULT_METRICS, max_mixtures: int | None = None,
                     out_dir: str | None = None, set_name: str = "test", seed: int = 0,
                     device: str = "cpu", visual_field: str = "auto", normalise="peak",
                     model_crop: str | None = None, progress: bool = False,
                     model_dir: str | None = None) -> dict:
    """Evaluate ``model`` (an AVSEModel) on each :class:`Corpus` of ``corpora``.

    Returns ``{"model": model_dir, "set", "metrics", "corpora": {name: {"out_dir",
    "shards", "list", "set", "crop", "mixtures", "summary"}}, "failed": {name: error},
    "order"}``;
    a corpus that fails (any error, named with the corpus) is listed under ``failed`` and
    the others are evaluated.
    With ``out_dir``: ``<name>.csv`` per corpus and the table ``cross_corpus.{txt,csv,json}``
    (:func:`table_rows`; the json is the returned dict). ``normalise``: the test mixtures'
    normalisation (:class:`~avse.data.mixing.MixtureConfig`; None for models whose
    ``inference`` section says ``mixture_norm: none``)."""
    from avse.data.loaders import make_list_loader
    from avse.data.mixing import MixtureConfig

    names = [c.name for c in corpora]
    if len(set(names)) != len(names):
        raise ValueError(f"corpus names must differ, got {names}")
    scorer = Scorer(metrics)
    config = MixtureConfig(crop_seconds=None, normalise=normalise)
    done, failed = {}, {}
    for corpus in corpora:
        where, path = f"corpus {corpus.name}", None
        try:
            path = resolve_list(corpus)  # its errors name the list
            path, rows, shards = resolve_corpus(corpus, set_name, max_mixtures)
            crop = _crop_note(shards, model_crop, where)
            loader = make_list_loader(shards, rows, stage="test", config=config, batch_size=1,
                                      seed=seed, visual_field=visual_field, set_name=rows[0].set,
                                      mouth_crop=model_crop if crop == FACE_SHARDS else None)
            crop = f"{crop}:{model_crop}" if crop == FACE_SHARDS else crop  # the crop cut
            print(f"[{corpus.name}] {len(rows)} mixtures: {path} on {shards}", file=sys.stderr)
            tracker = score_loader(model, loader, scorer, device=device, progress=progress,
                                   desc=corpus.name)
        except Exception as err:  # noqa: BLE001 -- one corpus failing leaves the others
            message = str(err) if str(err).startswith(where) else (
                f"{where}: {err}" if path is None or path in str(err) else
                f"{where} ({path}): {err}")
            logger.debug("%s failed", where, exc_info=True)
            print(f"{PROG}: {message}", file=sys.stderr)
            failed[corpus.name] = message
            continue
        done[corpus.name] = {"out_dir": corpus.out_dir, "shards": shards, "list": path,
                             "set": rows[0].set,
                             "crop": crop, "mixtures": len(tracker), "summary": tracker.summary()}
        if out_dir:
            tracker.write_csv(os.path.join(out_dir, f"{corpus.name}.csv"))
    result = {"model": model_dir, "set": set_name, "metrics": list(scorer.metrics),
              "corpora": done, "failed": failed, "order": names}
    if out_dir:
        write_table(table_rows(result), out_dir, TABLE, ("txt", "csv", "json"),
                    columns=table_columns(result), data=result)
    return result


def table_rows(result: dict) -> list:
    """One row per corpus (in the order given): ``corpus, mixtures, <metric means>, status,
    error`` (``ok`` and an empty error, or ``failed``: mixtures 0, null means, the error)."""
    metrics, done = result["metrics"], result["corpora"]
    summaries = {name: done[name]["summary"] if name in done else {} for name in result["order"]}
    rows = means_rows(summaries, metrics, label="corpus")
    for row in rows:
        name = row["corpus"]
        means = {m: row.pop(m) for m in metrics}
        row.update(mixtures=done[name]["mixtures"] if name in done else 0, **means,
                   status="ok" if name in done else "failed",
                   error=result["failed"].get(name, ""))
    return rows


def table_columns(result: dict) -> list:
    """The text table's columns: the csv's without ``error`` (and ``status`` only when a
    corpus failed)."""
    cols = ["corpus", "mixtures", *result["metrics"]]
    return cols + ["status"] if result["failed"] else cols


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Evaluate one model on the test lists "
                                "of several corpora into one table (SI-SDR(i), SDR(i), PESQ, "
                                "STOI per corpus).")
    p.add_argument("--model", required=True, help="experiment or exported model folder")
    p.add_argument("--corpus", required=True, action="extend", nargs="+", metavar="SPEC",
                   help="NAME=OUT_DIR[:LIST], repeatable; NAME one of "
                        f"{', '.join(CORPORA)} (default LIST: OUT_DIR/lists/{DEFAULT_LIST}) or "
                        "a label with its LIST (a path, or a file in OUT_DIR/lists/)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help="comma list (default %(default)s)")
    p.add_argument("--max_mixtures", type=int, default=None,
                   help="the first N rows of each list's set (default all)")
    p.add_argument("--set", dest="set_name", default="test",
                   help="the rows of a list holding several sets (default %(default)s); the "
                        "shard split is the rows' set (TCD-TIMIT: volunteers / lipspeakers)")
    p.add_argument("--out_dir", help="default <model>/eval/cross_corpus")
    p.add_argument("--device", default="cpu")
    p.add_argument("--visual_field", default="auto", help="lips or emb (default: the one the "
                   "shards hold)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="a progress bar per corpus")
    return p


def main(argv=None) -> int:
    from avse.evaluation.registry import check_metrics
    from avse.models.io import ModelLoadError, load_inference_config, load_model

    args = _parser().parse_args(argv)
    try:
        if args.max_mixtures is not None and args.max_mixtures < 1:
            raise ValueError(f"--max_mixtures must be 1 or more, got {args.max_mixtures}")
        metrics = check_metrics([m.strip() for m in args.metrics.split(",") if m.strip()])
        corpora = [parse_corpus(spec) for spec in args.corpus]
        names = [c.name for c in corpora]
        if len(set(names)) != len(names):
            raise ValueError(f"--corpus names must differ (label repeats with NAME=OUT:LIST), "
                             f"got {', '.join(names)}")
        model = load_model(args.model)
        inference = load_inference_config(args.model)
    except (ValueError, OSError, ModelLoadError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    out_dir = args.out_dir or os.path.join(args.model, "eval", TABLE)
    normalise = None if inference.get("mixture_norm") == "none" else "peak"
    result = evaluate_corpora(model, corpora, metrics, args.max_mixtures, out_dir, args.set_name,
                              args.seed, args.device, args.visual_field, normalise,
                              model_crop=inference.get("crop"), progress=args.progress,
                              model_dir=args.model)
    print(format_table(table_rows(result), table_columns(result)))
    print(f"wrote {out_dir}/{TABLE}.{{txt,csv,json}}")
    if result["failed"]:
        print(f"{PROG}: {len(result['failed'])} of {len(corpora)} corpora failed:\n  "
              + "\n  ".join(result["failed"].values()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
