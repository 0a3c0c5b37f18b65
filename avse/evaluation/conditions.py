"""Named mixture conditions: their evaluation lists and the one table over them.

A condition (:data:`avse.data.conditions.CONDITIONS`: enhancement, 2mix, 3mix, 2mix_noise,
hard) says how many interfering speakers a mixture has and whether background noise (MUSAN:
noise, music or babble) is added.

The seed notes observe high SI-SDR but low SI-SDRi in easy conditions (enhancement) and the
reverse in hard ones; the condition table puts both side by side so that this shows.

Training can sample conditions (``MixtureConfig(conditions={"2mix": 0.5, "hard": 0.5})``);
evaluation lists for named conditions come from :func:`avse.data.lists.make_condition_lists`,
and a model is evaluated over them into one table by :func:`evaluate_conditions`::

    python -m avse.evaluation.conditions lists --shards data/vox2/shards/test \
        --noise_shards data/musan/shards/test --out_dir data/vox2/lists --num 3000
    python -m avse.evaluation.conditions evaluate --model exp/voxceleb2/dprnn/1 \
        --shards data/vox2/shards/test --noise_shards data/musan/shards/test \
        --lists_dir data/vox2/lists

The lists of one call share their rows: each condition keeps the first 0, 1 or 2 interferers
of the same 3-talker draws and the same noise per row, so conditions differ only in what is
mixed in (files ``<set>_<condition>.csv``, VoxMix rows with ``musan`` noise tuples).

A silent target (``absent``, ``sparse``: rows with an ``activity`` tuple, the sparse span a
fraction of each row drawn in ``--sparse_fraction``, default 0.2-0.8) follows USEV's split:
SI-SDR(i), SDR(i), PESQ and STOI over the target-active samples (undefined, null, for
``absent``), and ``silent_energy``, the output power relative to the mixture over the
target-silent samples in dB (averaged over utterances; null for the other conditions), added
to the table whenever such a condition is evaluated. Undefined cells are null in
``conditions.json``, empty in the csv files and ``null`` in the text table.

Example
-------
>>> _parser().parse_args(["evaluate", "--model", "m", "--shards", "s", "--lists_dir", "l"]).metrics
'si_sdr,si_sdri,sdr,sdri,pesq,stoi'
>>> condition_metrics(["2mix", "absent"], ["si_sdr", "si_sdri"])
('si_sdr', 'si_sdri', 'silent_energy')
"""
from __future__ import annotations

import argparse
import os
import sys

from avse.data.conditions import CONDITIONS, get_condition
from avse.evaluation.registry import DEFAULT_METRICS, check_metrics
from avse.evaluation.report import format_table, means_rows, write_table
from avse.evaluation.scoring import Scorer, score_loader

PROG = "python -m avse.evaluation.conditions"
SILENT_METRIC = "silent_energy"
"""Added to the metrics when a condition with a silent target is evaluated."""


def condition_metrics(conditions, metrics=DEFAULT_METRICS, silent: bool = False) -> tuple:
    """``metrics`` (checked), plus ``silent_energy`` at the end when one of ``conditions``
    (names) has a silent target (``target != "present"``) or ``silent`` is True."""
    metrics = check_metrics(metrics)
    silent = silent or any(c in CONDITIONS and CONDITIONS[c].target != "present"
                           for c in conditions)
    return metrics + (SILENT_METRIC,) if silent and SILENT_METRIC not in metrics else metrics


def evaluate_conditions(model, shards, lists: dict, noise_dirs=None, metrics=DEFAULT_METRICS,
                        max_mixtures=None, out_dir: str | None = None, seed: int = 0,
                        device: str = "cpu", mouth_crop: str | None = None) -> dict:
    """Evaluate ``model`` (an AVSEModel) on each ``{condition: list path}``; returns
    ``{condition: summary}`` and, with ``out_dir``, writes ``<condition>.csv`` (per mixture),
    ``conditions.csv`` / ``conditions.txt`` (the table) and ``conditions.json`` (the
    summaries). ``silent_energy`` is added to ``metrics`` when a condition (or a list row)
    has a silent target (:func:`condition_metrics`). ``mouth_crop``: the model's crop preset,
    cut from face shards (``--crop face``) at load time."""
    from avse.data.lists import read_list
    from avse.data.loaders import make_list_loader
    from avse.data.mixing import MixtureConfig

    rows_of = {name: read_list(path)[:max_mixtures] for name, path in lists.items()}
    silent_rows = any(m.activity is not None for rows in rows_of.values() for m in rows)
    # one scorer: a missing PESQ/STOI package is reported once
    scorer = Scorer(condition_metrics(lists, metrics, silent_rows))
    results = {}
    for name, rows in rows_of.items():
        loader = make_list_loader(shards, rows, stage="test",
                                  config=MixtureConfig(crop_seconds=None), batch_size=1,
                                  seed=seed, noise_dirs=noise_dirs, mouth_crop=mouth_crop)
        # the per-mixture csv keeps its offset column (always 0: the lips as they are)
        tracker = score_loader(model, loader, scorer, [({"offset": 0}, None)], device)
        results[name] = tracker.summary()
        if out_dir:
            tracker.write_csv(os.path.join(out_dir, f"{name}.csv"))
    if out_dir:
        write_table(means_rows(results, scorer.metrics), out_dir, "conditions",
                    ("txt", "csv", "json"), data=results)
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG,
                                description="Named mixture conditions: lists and evaluation.")
    sub = p.add_subparsers(dest="command", required=True)
    names = ",".join(CONDITIONS)
    lp = sub.add_parser("lists", help="write one mixture list per condition")
    lp.add_argument("--shards", required=True, help="speech shard split, e.g. OUT/shards/test")
    lp.add_argument("--noise_shards", help="MUSAN noise shard split (conditions with noise)")
    lp.add_argument("--out_dir", required=True)
    lp.add_argument("--num", type=int, default=3000, help="rows per condition")
    lp.add_argument("--conditions", default=names, help=f"comma list (default {names})")
    lp.add_argument("--snr_range", type=float, nargs=2, default=(-10.0, 10.0))
    lp.add_argument("--sparse_fraction", type=float, nargs=2, default=(0.2, 0.8),
                    metavar=("LO", "HI"), help="sparse: the target speaks in a span of this "
                    "fraction of each row, uniform (default %(default)s)")
    lp.add_argument("--seed", type=int, default=0)
    ep = sub.add_parser("evaluate", help="evaluate a model on the condition lists: one table")
    ep.add_argument("--model", required=True, help="experiment or exported model folder")
    ep.add_argument("--shards", required=True, nargs="+", help="speech shard split(s)")
    ep.add_argument("--noise_shards", nargs="+", help="MUSAN noise shard split(s)")
    ep.add_argument("--lists_dir", required=True, help="folder of <set>_<condition>.csv")
    ep.add_argument("--set", dest="set_name", default="test")
    ep.add_argument("--conditions", default=names)
    ep.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                    help="comma list (default %(default)s)")
    ep.add_argument("--max_mixtures", type=int, default=None)
    ep.add_argument("--out_dir", help="default <model>/eval/conditions")
    ep.add_argument("--device", default="cpu")
    ep.add_argument("--gate", action="store_true", help="gate the estimates with the model's "
                    "activity head, as avse-extract --gate does (avse.gating)")
    ep.add_argument("--gate_threshold", type=float, default=0.5)
    ep.add_argument("--gate_db", type=float, default=30.0, help="attenuation of silent frames")
    return p


def main(argv=None) -> int:
    from avse.models.io import ModelLoadError

    args = _parser().parse_args(argv)
    try:
        conds = [get_condition(c.strip()).name for c in args.conditions.split(",") if c.strip()]
        if args.command == "lists":
            from avse.data.lists import make_condition_lists

            paths = make_condition_lists(args.shards, args.out_dir, args.num, args.noise_shards,
                                         conds, args.seed, args.snr_range,
                                         sparse_fraction=args.sparse_fraction)
            for name, path in paths.items():
                print(f"{name:12s} {path}")
            return 0
        from avse.models.io import load_inference_config, load_model

        metrics = condition_metrics(conds, [m.strip() for m in args.metrics.split(",")
                                            if m.strip()])
        lists = {c: os.path.join(args.lists_dir, f"{args.set_name}_{c}.csv") for c in conds}
        missing = [p for p in lists.values() if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"missing condition list(s): {', '.join(missing)} (write them with "
                             f"{PROG} lists)")
        out_dir = args.out_dir or os.path.join(
            args.model, "eval", "conditions_gated" if args.gate else "conditions")
        model = load_model(args.model)
        if args.gate:
            from avse.gating import Gate, GatedModel

            model = GatedModel(model, Gate(args.gate_threshold, args.gate_db),
                               where=f"model {args.model}")
        results = evaluate_conditions(model, args.shards, lists,
                                      args.noise_shards, metrics, args.max_mixtures, out_dir,
                                      device=args.device,
                                      mouth_crop=load_inference_config(args.model).get("crop"))
        print(format_table(means_rows(results, metrics)))
        print(f"wrote {out_dir}/conditions.{{txt,csv,json}}")
        return 0
    except (ValueError, OSError, ModelLoadError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
