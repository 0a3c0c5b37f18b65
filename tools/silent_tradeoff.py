#!/usr/bin/env python3
"""The silent-target trade-off: models trained with more or fewer silent-target examples,
side by side on the ordinary and the silent conditions.

    python tools/silent_tradeoff.py --run 0=exp/p0/eval/conditions \\
        --run 0.3=exp/p03/eval/conditions [--run ...] --out_dir exp/silent_tradeoff

A run is ``P=FOLDER``: ``P`` the probability of silent-target examples the model was trained
with (``absent`` + ``sparse``), ``FOLDER`` holds its condition table ``conditions.json``
(``python -m avse.evaluation.conditions evaluate ... --out_dir FOLDER``). Several folders per
``P`` (seeds) are averaged. Writes ``tradeoff.{txt,csv,json}`` (one row per ``P``: 2mix
SI-SDRi, absent output energy relative to the mixture, sparse SI-SDRi on the target's active
part and output energy on its silent part; null where a table lacks the value) and
``tradeoff.png`` (the curves against ``P``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

COLUMNS = (("2mix", "si_sdri"), ("absent", "silent_energy"), ("sparse", "si_sdri"),
           ("sparse", "silent_energy"))


def column(condition: str, metric: str) -> str:
    return f"{condition}_{metric}"


def read_table(folder: str) -> dict:
    """``{condition: {metric: mean}}`` from ``folder/conditions.json``."""
    path = os.path.join(folder, "conditions.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: evaluate the model on the conditions first "
                                "(python -m avse.evaluation.conditions evaluate ... --out_dir)")
    with open(path) as f:
        data = json.load(f)
    return {cond: {m: (v or {}).get("mean") if isinstance(v, dict) else v
                   for m, v in metrics.items()} for cond, metrics in data.items()}


def tradeoff_rows(runs) -> list:
    """``runs``: ``[(p, folder)]`` -> one row per ``p`` (sorted): the mean over its folders of
    each :data:`COLUMNS` value, ``seeds`` = the number of folders."""
    by_p: dict = {}
    for p, folder in runs:
        by_p.setdefault(float(p), []).append(read_table(folder))
    rows = []
    for p in sorted(by_p):
        row = {"p_silent": p, "seeds": len(by_p[p])}
        for cond, metric in COLUMNS:
            values = [t.get(cond, {}).get(metric) for t in by_p[p]]
            values = [v for v in values if v is not None]
            row[column(cond, metric)] = sum(values) / len(values) if values else None
        rows.append(row)
    return rows


def plot(rows, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = [r["p_silent"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (("2mix_si_sdri", "2mix SI-SDRi", "o-"),
                              ("sparse_si_sdri", "sparse SI-SDRi (active part)", "s--")):
        ax.plot(p, [r[key] for r in rows], style, label=label)
    ax.set_xlabel("probability of silent-target training examples (absent + sparse)")
    ax.set_ylabel("SI-SDRi (dB)")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    for key, label, style in (("absent_silent_energy", "absent: output rel. mixture", "^-"),
                              ("sparse_silent_energy", "sparse: silent part rel. mixture", "v--")):
        right.plot(p, [r[key] for r in rows], style, color="tab:red" if "absent" in key
                   else "tab:purple", label=label)
    right.set_ylabel("output energy rel. mixture (dB, lower is better)")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="P=FOLDER (repeatable)")
    ap.add_argument("--out_dir", required=True)
    args = ap.parse_args(argv)
    from avse.evaluation import write_table

    runs = []
    for spec in args.run:
        p, sep, folder = spec.partition("=")
        try:
            runs.append((float(p), folder))
        except ValueError:
            sep = ""
        if not sep or not folder:
            print(f"silent_tradeoff: error: --run must be P=FOLDER with P a probability, got "
                  f"{spec!r}", file=sys.stderr)
            return 2
    try:
        rows = tradeoff_rows(runs)
    except (OSError, ValueError) as err:
        print(f"silent_tradeoff: error: {err}", file=sys.stderr)
        return 2
    table = write_table(rows, args.out_dir, "tradeoff", ("txt", "csv", "json"),
                        formats={"p_silent": "{:.2f}"})
    print(table)
    print(f"wrote {args.out_dir}/tradeoff.{{txt,csv,json,png}}")
    plot(rows, os.path.join(args.out_dir, "tradeoff.png"))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
