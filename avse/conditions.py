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
evaluation lists for named conditions come from :func:`make_condition_lists`
(``python -m avse.conditions lists ...``).

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

import csv
import math
import os
from dataclasses import dataclass

TABLE_METRICS = ("si_sdr", "si_sdri", "sdr", "sdri", "pesq", "stoi")


@dataclass(frozen=True)
class Condition:
    """A mixture condition: ``num_interferers`` other talkers, plus noise when ``noise``."""

    name: str
    num_interferers: int
    noise: bool


CONDITIONS = {c.name: c for c in (
    Condition("enhancement", 0, True),
    Condition("2mix", 1, False),
    Condition("3mix", 2, False),
    Condition("2mix_noise", 1, True),
    Condition("hard", 2, True),
)}


def get_condition(name: str) -> Condition:
    """The named condition; a clear error lists the known names."""
    try:
        return CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}") from None


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
