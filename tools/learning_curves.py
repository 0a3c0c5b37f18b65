#!/usr/bin/env python3
"""Compare validation curves of training runs, and the steps each needs to reach a target.

    python tools/learning_curves.py --run random=exp/a/train --run pretrained=exp/b/train \\
        --metric si_sdri --target 6 [--plot curves.png] [--json curves.json]

A run is ``LABEL=FOLDER``: the folder holds the run's ``train_log.txt`` (SpeechBrain's
``FileTrainLogger`` lines, ``epoch: N, ... - valid <metric>: V``) and ``hyperparams.yaml``
(its ``epoch_steps`` converts epochs to optimiser steps; ``--epoch_steps`` overrides it).
Prints one row per validated epoch and, per run, the first step at which the metric reached
``--target`` (``-`` when it never did). With ``--lower_is_better`` (e.g. CER) "reached" means
at or below the target.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

_EPOCH = re.compile(r"epoch:\s*(\d+)")


def read_curve(folder: str, metric: str) -> list[tuple[int, float]]:
    """``[(epoch, value)]`` of ``valid <metric>`` from ``folder/train_log.txt``."""
    path = os.path.join(folder, "train_log.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: give the output_folder of a training run")
    pattern = re.compile(rf"valid {re.escape(metric)}:\s*([-+0-9.eE]+)")
    curve = []
    with open(path) as f:
        for line in f:
            epoch, value = _EPOCH.search(line), pattern.search(line)
            if epoch and value:
                curve.append((int(epoch.group(1)), float(value.group(1))))
    if not curve:
        raise ValueError(f"{path} has no 'valid {metric}' values")
    return curve


def epoch_steps(folder: str) -> int:
    """``epoch_steps`` from ``folder/hyperparams.yaml`` (the copy SpeechBrain writes)."""
    path = os.path.join(folder, "hyperparams.yaml")
    try:
        with open(path) as f:
            for line in f:
                match = re.match(r"epoch_steps:\s*(\d+)", line)
                if match:
                    return int(match.group(1))
    except OSError:
        pass
    raise ValueError(f"no epoch_steps in {path}; pass --epoch_steps")


def steps_to(curve, steps: int, target: float, lower_is_better: bool = False):
    """First step count at which the curve reached ``target`` (None if never)."""
    for epoch, value in curve:
        if (value <= target) if lower_is_better else (value >= target):
            return epoch * steps
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER")
    parser.add_argument("--metric", default="si_sdri")
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument("--lower_is_better", action="store_true")
    parser.add_argument("--epoch_steps", type=int, default=None)
    parser.add_argument("--plot", default=None, help="write a png of the curves")
    parser.add_argument("--json", default=None, help="write the curves and results as json")
    args = parser.parse_args(argv)
    runs = {}
    try:
        for spec in args.run:
            label, sep, folder = spec.partition("=")
            if not sep or not label or not folder:
                raise ValueError(f"--run expects LABEL=FOLDER, got {spec!r}")
            curve = read_curve(folder, args.metric)
            steps = args.epoch_steps or epoch_steps(folder)
            runs[label] = {"folder": folder, "epoch_steps": steps,
                           "curve": [[e * steps, v] for e, v in curve],
                           "steps_to_target": None if args.target is None else
                           steps_to(curve, steps, args.target, args.lower_is_better)}
    except (OSError, ValueError) as err:
        print(f"learning_curves: {err}", file=sys.stderr)
        return 2
    all_steps = sorted({s for r in runs.values() for s, _ in r["curve"]})
    width = max(10, *(len(label) + 2 for label in runs))
    print(f"{'step':>8}" + "".join(f"{label:>{width}}" for label in runs))
    for step in all_steps:
        row = [dict(r["curve"]).get(step) for r in runs.values()]
        print(f"{step:>8}" + "".join(f"{'' if v is None else f'{v:.2f}':>{width}}" for v in row))
    if args.target is not None:
        for label, r in runs.items():
            reached = r["steps_to_target"]
            print(f"{label}: {args.metric} {args.target:g} "
                  + (f"reached at step {reached}" if reached else "not reached"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"metric": args.metric, "target": args.target, "runs": runs}, f, indent=2)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label, r in runs.items():
            ax.plot(*zip(*r["curve"]), marker="o", label=label)
        if args.target is not None:
            ax.axhline(args.target, color="gray", linestyle=":")
        ax.set_xlabel("training steps")
        ax.set_ylabel(f"valid {args.metric}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
