"""Evaluation reports: per-utterance rows (:class:`MetricTracker`), the one table writer
(aligned text + csv + json), and the plots.

- :class:`MetricTracker` -- per-utterance metric rows -> csv / json / a text table,
  summaries of the finite values, optionally grouped by a column (``condition``, ``offset``).
- :func:`format_table` / :func:`write_table` -- rows of dicts -> an aligned text table,
  ``<name>.txt``, ``<name>.csv``, ``<name>.json``: the condition table, the test-set table
  (``eval/table.{txt,csv}``), the sync-sweep table and the tracker's summary table.
- :func:`means_rows` -- ``{name: summary}`` -> one row of means per name.
- :func:`write_csv` / :func:`write_json` -- floats with full precision (``repr``).
- :func:`plot_sweep` -- a metric against the lip offset (``sync_sweep.png``).

Undefined values (NaN internally: a metric of a silent reference, a missing package, an
empty group) and infinities are never written as such: an empty cell in csv, ``null`` in
json (``allow_nan=False`` guards it), ``null`` in text tables and logs (:data:`NULL`).

Example
-------
>>> results = {"2mix": {"si_sdr": {"mean": 9.0}, "si_sdri": {"mean": 9.5}},
...            "enhancement": {"si_sdr": {"mean": 14.0}, "si_sdri": {"mean": 4.0}}}
>>> print(format_table(means_rows(results)))
condition  si_sdr  si_sdri
2mix         9.00     9.50
enhancement 14.00     4.00
>>> print(format_table(means_rows({"absent": {"si_sdr": {"mean": float("nan")}}})))
condition  si_sdr
absent       null
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from avse.data.align import FPS
from avse.evaluation.registry import METRICS

__all__ = ["MetricTracker", "format_table", "write_table", "means_rows", "write_csv",
           "write_json", "plot_sweep", "NULL", "is_null"]

NULL = "null"
"""How an undefined value (NaN, or an infinity) reads in text tables and logs."""


def is_null(value) -> bool:
    """Whether ``value`` is None or a non-finite float (NaN, +-inf).

    Example
    -------
    >>> is_null(float("nan")), is_null(np.float32("-inf")), is_null(0.0), is_null("nan")
    (True, True, False, False)
    """
    return value is None or (isinstance(value, (float, np.floating))
                             and not math.isfinite(float(value)))


# --------------------------------------------------------------------------- files and tables
def _cell(value, fmt, digits: int) -> str:
    if is_null(value):
        return NULL
    if fmt is not None:
        return fmt(value) if callable(fmt) else fmt.format(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                 formats: Mapping[str, str | Callable] | None = None, digits: int = 2) -> str:
    """An aligned text table: the first column left-aligned, the others right-aligned.

    ``columns``: which keys (default: those of the first row); ``formats``: per column a
    format string (``"{:+d}"``) or a function; other floats get ``digits`` decimals, anything
    else ``str``; NaN, infinities, None and missing cells read ``null``.

    Example
    -------
    >>> print(format_table([{"offset": -1, "si_sdri": 3.25}, {"offset": 1, "si_sdri": 7.5}],
    ...                    formats={"offset": "{:+d}"}, digits=3))
    offset  si_sdri
    -1        3.250
    +1        7.500
    """
    columns = list(columns if columns is not None else (rows[0] if rows else []))
    formats = formats or {}
    text = [columns] + [[_cell(r.get(c, float("nan")), formats.get(c), digits) for c in columns]
                        for r in rows]
    widths = [max(len(line[i]) for line in text) for i in range(len(columns))]
    lines = ["  ".join([line[0].ljust(widths[0])]
                       + [v.rjust(w) for v, w in zip(line[1:], widths[1:])]) for line in text]
    return "\n".join(line.rstrip() for line in lines)


def _csv_value(value):
    if is_null(value):
        return ""
    return repr(float(value)) if isinstance(value, (float, np.floating)) else value


def write_csv(rows: Sequence[Mapping], path, columns: Sequence[str] | None = None) -> None:
    """One line per row; ``columns`` default: the keys of the first row; missing cells,
    None, NaN and infinities are empty cells.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> write_csv([{"c": "absent", "si_sdr": float("nan"), "silent_energy": -41.5}], path)
    >>> open(path).read().split()
    ['c,si_sdr,silent_energy', 'absent,,-41.5']
    """
    columns = list(columns if columns is not None else (rows[0] if rows else []))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_csv_value(r.get(c, "")) for c in columns])


def _clean(obj):
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if is_null(obj):
        return None
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(obj, path) -> None:
    """``obj`` as indented json (NaN and infinities -> ``null``, numpy numbers as Python
    ones, keys as strings), newline-terminated.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.json")
    >>> write_json({"si_sdr": float("nan"), "gain": float("-inf"), "n": np.int64(2)}, path)
    >>> json.loads(open(path).read())
    {'si_sdr': None, 'gain': None, 'n': 2}
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(obj), f, indent=2, allow_nan=False)
        f.write("\n")


def write_table(rows: Sequence[Mapping], out_dir: str, name: str, kinds=("txt", "csv"),
                columns: Sequence[str] | None = None, formats=None, digits: int = 2,
                data=None) -> str:
    """Write ``<out_dir>/<name>.<kind>`` for each of ``kinds`` and return the text table.

    ``txt``: :func:`format_table` of ``columns`` (default all); ``csv``: every column of the
    rows (:func:`write_csv`); ``json``: ``data`` (default the rows, :func:`write_json`).

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> print(write_table([{"condition": "2mix", "si_sdr": 9.0}], d, "t", ("txt", "csv", "json")))
    condition  si_sdr
    2mix         9.00
    >>> sorted(os.listdir(d)), open(os.path.join(d, "t.csv")).read().split()
    (['t.csv', 't.json', 't.txt'], ['condition,si_sdr', '2mix,9.0'])
    """
    unknown = set(kinds) - {"txt", "csv", "json"}
    if unknown:
        raise ValueError(f"write_table: unknown kind(s) {sorted(unknown)}; known: txt, csv, json")
    table = format_table(rows, columns, formats, digits)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, name)
    if "txt" in kinds:
        with open(stem + ".txt", "w") as f:
            f.write(table + "\n")
    if "csv" in kinds:
        write_csv(rows, stem + ".csv")
    if "json" in kinds:
        write_json(rows if data is None else data, stem + ".json")
    return table


def _mean(summary: Mapping, metric: str) -> float:
    value = summary.get(metric)
    if isinstance(value, Mapping):
        value = value.get("mean")
    return float("nan") if value is None else float(value)


def means_rows(results: Mapping, metrics: Sequence[str] | None = None,
               label: str = "condition") -> list:
    """``{name: summary}`` (summaries as :meth:`MetricTracker.summary` gives them) -> one row
    ``{label: name, <metric>: mean, ...}`` per name. ``metrics`` default: the registered
    metrics found in any summary, in registry order."""
    if metrics is None:
        metrics = [m for m in METRICS if any(m in s for s in results.values())]
    return [{label: name, **{m: _mean(summary, m) for m in metrics}}
            for name, summary in results.items()]


# --------------------------------------------------------------------------- the tracker
class MetricTracker:
    """Per-utterance metric rows and their summaries.

    A row is ``{"id": ..., <metric>: float, ..., <extra column>: value}``; metric columns
    are the float-valued keys given to :meth:`add` (``metrics`` fixes them and their
    order up front), extra columns (e.g. ``condition``, ``snr``) are passed as keywords.

    Example
    -------
    >>> t = MetricTracker()
    >>> t.add("a", {"si_sdr": 10.0, "pesq": float("nan")}, condition="2mix")
    >>> t.add("b", {"si_sdr": 12.0, "pesq": 3.0}, condition="3mix")
    >>> t.summary()["si_sdr"]
    {'mean': 11.0, 'std': 1.0, 'count': 2}
    >>> t.summary()["pesq"]["count"]
    1
    >>> t.summary(by="condition")["3mix"]["si_sdr"]["mean"]
    12.0
    >>> print(t.table())
    metric     mean     std  count
    si_sdr  11.0000  1.0000      2
    pesq     3.0000  0.0000      1
    """

    def __init__(self, metrics: Sequence[str] | None = None):
        self.metrics: list[str] = list(metrics) if metrics is not None else []
        self.extra_columns: list[str] = []
        self.rows: list[dict] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, utt_id, values: dict, **extra) -> None:
        """Add one utterance: ``values`` ``{metric: number}``, ``extra`` other columns."""
        row = {"id": str(utt_id)}
        for k, v in values.items():
            if k not in self.metrics:
                self.metrics.append(k)
            row[k] = float(v) if v is not None else float("nan")
        for k, v in extra.items():
            if k in ("id",) or k in self.metrics:
                raise ValueError(f"extra column {k!r} clashes with id / a metric")
            if k not in self.extra_columns:
                self.extra_columns.append(k)
            row[k] = v
        self.rows.append(row)

    def append(self, utt_id, **columns) -> None:
        """Keyword form of :meth:`add`: registered metric names, names already tracked as
        metrics, and other real numbers, are metrics; anything else (str ...) is an extra
        column. ``t.append("u1", si_sdr=9.5, condition="2mix")``."""
        values, extra = {}, {}
        for k, v in columns.items():
            numeric = (isinstance(v, (float, int, np.floating, np.integer))
                       and not isinstance(v, bool))
            if k not in self.extra_columns and (k in METRICS or k in self.metrics or numeric):
                values[k] = v
            else:
                extra[k] = v
        self.add(utt_id, values, **extra)

    @property
    def columns(self) -> list[str]:
        return ["id", *self.extra_columns, *self.metrics]

    @staticmethod
    def _stats(values) -> dict:
        a = np.asarray([v for v in values if v is not None], dtype=np.float64)
        a = a[np.isfinite(a)]  # undefined values (NaN, +-inf) are left out
        if a.size == 0:
            return {"mean": float("nan"), "std": float("nan"), "count": 0}
        return {"mean": float(a.mean()), "std": float(a.std()), "count": int(a.size)}

    def _with_rows(self, rows) -> "MetricTracker":
        out = MetricTracker(self.metrics)
        out.extra_columns, out.rows = list(self.extra_columns), list(rows)
        return out

    def summary(self, by: str | None = None) -> dict:
        """``{metric: {"mean", "std", "count"}}`` over rows, NaN and infinities ignored
        (``count`` = finite values; ``std`` is the population std). With ``by="condition"``:
        ``{condition value: {metric: {...}}}`` (groups in first-seen order)."""
        if by is None:
            return {m: self._stats(r.get(m, float("nan")) for r in self.rows)
                    for m in self.metrics}
        if by not in self.extra_columns and by != "id":
            raise KeyError(f"no column {by!r}; columns: {', '.join(self.columns)}")
        groups: dict = {}
        for r in self.rows:
            groups.setdefault(r.get(by), []).append(r)
        return {key: self._with_rows(rows).summary() for key, rows in groups.items()}

    def gathered(self) -> "MetricTracker":
        """Every DDP rank's rows in one tracker (rank order; called on every rank); ``self``
        when ``torch.distributed`` is not initialised."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.rows)
        return self._with_rows(row for part in parts for row in part)

    def write_csv(self, path) -> None:
        """One row per utterance: ``id, <extra columns>, <metrics>`` (floats with full
        precision; NaN / infinite values as empty cells)."""
        nan = float("nan")
        rows = [{**r, **{m: float(r.get(m, nan)) for m in self.metrics}} for r in self.rows]
        write_csv(rows, path, self.columns)

    def write_json(self, path, by: str | None = None) -> None:
        """``{"n": rows, "summary": {...}}`` (plus ``"by_<column>"`` when ``by``); NaN
        means and stds become ``null``."""
        out = {"n": len(self.rows), "summary": self.summary()}
        if by is not None:
            out[f"by_{by}"] = self.summary(by=by)
        write_json(out, path)

    def table(self, by: str | None = None) -> str:
        """Aligned text table ``metric | mean | std | count`` (one block per group with
        ``by``, headed by ``[<by>=<value>]``); undefined means read ``null``."""
        def block(summary):
            return format_table([{"metric": m, **s} for m, s in summary.items()],
                                ["metric", "mean", "std", "count"], digits=4)

        if by is not None:
            return "\n\n".join(f"[{by}={key}]\n" + block(summ)
                               for key, summ in self.summary(by=by).items())
        return block(self.summary())


# --------------------------------------------------------------------------- plots
FRAME_MS = 1000.0 / FPS  # one video frame, 40 ms


def plot_sweep(rows: Sequence[Mapping], path: str, title: str = "") -> str:
    """SI-SDRi against the lip offset (video frames) into ``path`` (png): means and a +-1
    standard-error band (SI-SDR when the rows have no SI-SDRi). ``rows``: one dict per offset
    with ``offset``, ``count``, ``<metric>`` and ``<metric>_std``. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "si_sdri" if "si_sdri" in rows[0] else "si_sdr"
    x = np.array([r["offset"] for r in rows])
    mean = np.array([r[metric] for r in rows], np.float64)
    sem = np.array([r[metric + "_std"] / np.sqrt(max(r["count"], 1)) for r in rows], np.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(x, mean - sem, mean + sem, alpha=0.2, label="+-1 standard error")
    ax.plot(x, mean, "o-", label=metric.replace("si_sdr", "SI-SDR"))
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_xticks(x)
    ax.set_xlabel("visual offset (video frames of 40 ms; + = video lags audio)")
    ax.set_ylabel(metric.replace("si_sdr", "SI-SDR") + " (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    top = ax.secondary_xaxis("top", functions=(lambda f: f * FRAME_MS, lambda ms: ms / FRAME_MS))
    top.set_xlabel("ms")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
