"""Named mixture conditions and the one-table report over them.

A condition says how many interfering speakers a mixture has and whether background
noise (MUSAN: noise, music or babble) is added:

============  ===========  =====  ==================================================
name          interferers  noise  what it is
============  ===========  =====  ==================================================
enhancement   0            yes    speech + background noise -> speech
2mix          1            no     two talkers (VoxMix)
3mix          2            no     three talkers
2mix_noise    1            yes    two talkers + background noise
hard          2            yes    three talkers + background noise
============  ===========  =====  ==================================================

The seed notes observe high SI-SDR but low SI-SDRi in easy conditions (enhancement) and the
reverse in hard ones; :func:`condition_table` puts both side by side so that this shows.

Training can sample conditions (``MixtureConfig(conditions={"2mix": 0.5, "hard": 0.5})``);
evaluation lists for named conditions come from :func:`make_condition_lists`, and a model
is evaluated over them into one table by :func:`evaluate_conditions`::

    python -m avse.conditions lists --shards data/vox2/shards/test \
        --noise_shards data/musan/shards/test --out_dir data/vox2/lists --num 3000
    python -m avse.conditions evaluate --model exp/voxceleb2/dprnn/1 \
        --shards data/vox2/shards/test --noise_shards data/musan/shards/test \
        --lists_dir data/vox2/lists

The lists of one call share their rows: each condition keeps the first 0, 1 or 2 interferers
of the same 3-talker draws and the same noise per row, so conditions differ only in what is
mixed in (files ``<set>_<condition>.csv``, VoxMix rows with ``musan`` noise tuples).

Example
-------
>>> CONDITIONS["hard"]
Condition(name='hard', num_interferers=2, noise=True)
>>> print(condition_table({"2mix": {"si_sdr": {"mean": 9.0}, "si_sdri": {"mean": 9.5}},
...                        "enhancement": {"si_sdr": {"mean": 14.0}, "si_sdri": {"mean": 4.0}}},
...                       metrics=("si_sdr", "si_sdri")))
condition    si_sdr  si_sdri
2mix           9.00     9.50
enhancement   14.00     4.00
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

TABLE_METRICS = ("si_sdr", "si_sdri", "sdr", "sdri", "pesq", "stoi")


from avse.data.conditions import CONDITIONS, get_condition  # noqa: F401 (re-used names)


def _mean(summary: dict, metric: str) -> float:
    value = summary.get(metric)
    if isinstance(value, dict):
        value = value.get("mean")
    return float("nan") if value is None else float(value)


def condition_rows(results: dict, metrics=TABLE_METRICS) -> list:
    """``{condition: summary}`` (summaries as written by the evaluation: ``{metric: {"mean":
    ...}}``) -> rows ``[condition, mean per metric...]`` in the order given."""
    return [[name] + [_mean(summary, m) for m in metrics] for name, summary in results.items()]


def condition_table(results: dict, metrics=TABLE_METRICS) -> str:
    """An aligned text table: one row per condition, one column per metric (means)."""
    rows = [["condition", *metrics]]
    for row in condition_rows(results, metrics):
        rows.append([row[0]] + ["nan" if math.isnan(v) else f"{v:.2f}" for v in row[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
             for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def write_condition_table(results: dict, out_dir: str, name: str = "conditions",
                          metrics=TABLE_METRICS) -> str:
    """Write ``<out_dir>/<name>.csv`` and ``<name>.txt`` (the text table); returns the table."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", *metrics])
        for row in condition_rows(results, metrics):
            w.writerow([row[0]] + [repr(v) for v in row[1:]])
    table = condition_table(results, metrics)
    with open(os.path.join(out_dir, f"{name}.txt"), "w") as f:
        f.write(table + "\n")
    return table


# ------------------------------------------------------------------- evaluation
def evaluate_conditions(model, shards, lists: dict, noise_dirs=None,
                        metrics=("si_sdr", "si_sdri", "sdr", "sdri"), max_mixtures=None,
                        out_dir: str | None = None, seed: int = 0, device: str = "cpu") -> dict:
    """Evaluate ``model`` (an AVSEModel) on each ``{condition: list path}``; returns
    ``{condition: summary}`` and, with ``out_dir``, writes ``<condition>.csv`` (per mixture),
    ``conditions.csv`` / ``conditions.txt`` (the table) and ``conditions.json``."""
    from avse.data.lists import read_list
    from avse.data.loaders import make_list_loader
    from avse.data.mixing import MixtureConfig
    from avse.sync import sync_sweep

    results = {}
    for name, path in lists.items():
        rows = read_list(path)[:max_mixtures]
        loader = make_list_loader(shards, rows, stage="test", config=MixtureConfig(crop_seconds=None),
                                  batch_size=1, seed=seed, noise_dirs=noise_dirs)
        tracker = sync_sweep(model, loader, [0], metrics, device)  # offset 0: plain evaluation
        results[name] = tracker.summary()
        if out_dir:
            tracker.write_csv(os.path.join(out_dir, f"{name}.csv"))
    if out_dir:
        write_condition_table(results, out_dir, "conditions", metrics)
        with open(os.path.join(out_dir, "conditions.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m avse.conditions",
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
    lp.add_argument("--seed", type=int, default=0)
    ep = sub.add_parser("evaluate", help="evaluate a model on the condition lists: one table")
    ep.add_argument("--model", required=True, help="experiment or exported model folder")
    ep.add_argument("--shards", required=True, nargs="+", help="speech shard split(s)")
    ep.add_argument("--noise_shards", nargs="+", help="MUSAN noise shard split(s)")
    ep.add_argument("--lists_dir", required=True, help="folder of <set>_<condition>.csv")
    ep.add_argument("--set", dest="set_name", default="test")
    ep.add_argument("--conditions", default=names)
    ep.add_argument("--metrics", default="si_sdr,si_sdri,sdr,sdri,pesq,stoi")
    ep.add_argument("--max_mixtures", type=int, default=None)
    ep.add_argument("--out_dir", help="default <model>/eval/conditions")
    ep.add_argument("--device", default="cpu")
    return p


def main(argv=None) -> int:
    from avse.models.io import ModelLoadError

    args = _parser().parse_args(argv)
    try:
        conds = [get_condition(c.strip()).name for c in args.conditions.split(",") if c.strip()]
        if args.command == "lists":
            from avse.data.lists import make_condition_lists

            paths = make_condition_lists(args.shards, args.out_dir, args.num, args.noise_shards,
                                         conds, args.seed, args.snr_range)
            for name, path in paths.items():
                print(f"{name:12s} {path}")
            return 0
        from avse.metrics import ALL_METRICS
        from avse.models.io import load_model

        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = [m for m in metrics if m not in ALL_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(ALL_METRICS)}")
        lists = {c: os.path.join(args.lists_dir, f"{args.set_name}_{c}.csv") for c in conds}
        missing = [p for p in lists.values() if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"missing condition list(s): {', '.join(missing)} (write them with "
                             "python -m avse.conditions lists)")
        out_dir = args.out_dir or os.path.join(args.model, "eval", "conditions")
        results = evaluate_conditions(load_model(args.model), args.shards, lists,
                                      args.noise_shards, metrics, args.max_mixtures, out_dir,
                                      device=args.device)
        print(condition_table(results, metrics))
        print(f"wrote {out_dir}/conditions.{{txt,csv,json}}")
        return 0
    except (ValueError, OSError, ModelLoadError) as err:
        print(f"avse.conditions: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
