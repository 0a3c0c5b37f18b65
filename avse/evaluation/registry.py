"""The metric registry: every evaluation metric, in one place.

A :class:`Metric` names a function of one :class:`Utterance` (its estimate, reference and
mixture, 1-D ``[T] @sr``) and says what it needs: the mixture (the improvements), an optional
package (PESQ and STOI come with ``pip install 'avse[eval]'``), whether it is slow (numpy/C
code that :func:`~avse.evaluation.scoring.evaluate_many` runs in worker processes) and
whether it is one of :data:`DEFAULT_METRICS`.

Adding a metric is one :func:`register_metric` call in this file: the scorer, the tracker,
the tables and every ``--metrics`` option read :data:`METRICS`.

Example
-------
>>> DEFAULT_METRICS
('si_sdr', 'si_sdri', 'sdr', 'sdri', 'pesq', 'stoi')
>>> METRICS["pesq"].package, METRICS["si_sdri"].needs_mixture
('pesq', True)
>>> import torch
>>> ref, other = torch.sin(torch.arange(8000) * 0.05), torch.cos(torch.arange(8000) * 0.3)
>>> u = Utterance(ref + 0.1 * other, ref, ref + other)
>>> round(u["si_sdr"], 1), round(u["si_sdri"], 1)
(20.0, 20.0)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from avse.data.align import SAMPLE_RATE
from avse.metrics import INSTALL_EVAL, as_1d, pesq_wb, sdr, si_sdr, stoi

__all__ = ["Metric", "METRICS", "DEFAULT_METRICS", "INSTALL_EVAL", "register_metric",
           "improvement", "check_metrics", "missing_packages", "Utterance"]


@dataclass(frozen=True)
class Metric:
    """One metric: ``compute(utterance) -> float`` (see :class:`Utterance`).

    ``needs_mixture``: reads ``utterance.mixture``; ``package``: a module it imports (NaN
    column and one log line when it is missing); ``slow``: CPU-heavy, run in worker
    processes by ``evaluate_many``; ``default``: one of :data:`DEFAULT_METRICS`.
    """

    name: str
    compute: Callable[["Utterance"], float]
    needs_mixture: bool = False
    package: str | None = None
    slow: bool = False
    default: bool = True
    description: str = ""


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` (a name may be registered once)."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


class Utterance:
    """The signals of one utterance as 1-D float64 tensors ``[T] @sr``, each metric computed
    at most once (``utt["si_sdri"]`` reuses ``utt["si_sdr"]``).

    ``mixture`` may be None when no requested metric needs it. Raises ValueError when the
    signals differ in length.
    """

    def __init__(self, estimate, reference, mixture=None, sr: int = SAMPLE_RATE):
        signals = [torch.as_tensor(as_1d(x)) for x in (estimate, reference)
                   + (() if mixture is None else (mixture,))]
        if len({x.shape for x in signals}) > 1:
            raise ValueError(f"estimate / reference / mixture differ in length: "
                             f"{[tuple(x.shape) for x in signals]}")
        self.estimate, self.reference = signals[0], signals[1]
        self.mixture = signals[2] if mixture is not None else None
        self.sr = sr
        self._values: dict[str, float] = {}

    def __getitem__(self, name: str) -> float:
        if name not in self._values:
            metric = METRICS[name]
            if metric.needs_mixture and self.mixture is None:
                raise ValueError(f"{name} needs the mixture")
            self._values[name] = float(metric.compute(self))
        return self._values[name]


def check_metrics(metrics: Iterable[str]) -> tuple:
    """``metrics`` as a tuple; ValueError naming the known metrics for an unknown one.

    Example
    -------
    >>> check_metrics(["stoi", "si_sdr"])
    ('stoi', 'si_sdr')
    """
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    return metrics


def missing_packages(metrics: Iterable[str]) -> dict:
    """``{metric: package}`` for the metrics whose optional package cannot be imported.

    Example
    -------
    >>> missing_packages(["si_sdr", "sdri"])
    {}
    """
    missing, tried = {}, {}
    for name in metrics:
        package = METRICS[name].package
        if package is None:
            continue
        if package not in tried:
            try:
                importlib.import_module(package)
                tried[package] = True
            except ImportError:
                tried[package] = False
        if not tried[package]:
            missing[name] = package
    return missing


def improvement(base: str, fn: Callable) -> Metric:
    """``<base>i``: metric ``base`` of the estimate minus ``fn(mixture, reference)``, the
    same metric of the unprocessed mixture."""
    return Metric(base + "i", lambda u: u[base] - float(fn(u.mixture, u.reference)),
                  needs_mixture=True, description=f"{base} improvement over the mixture")


# --------------------------------------------------------------------------- the metrics
register_metric(Metric("si_sdr", lambda u: si_sdr(u.estimate, u.reference),
                       description="scale-invariant SDR (dB), zero-mean signals"))
register_metric(improvement("si_sdr", si_sdr))
register_metric(Metric("sdr", lambda u: sdr(u.estimate, u.reference),
                       description="BSS-eval SDR (dB), 512-tap distortion filter"))
register_metric(improvement("sdr", sdr))
register_metric(Metric("pesq", lambda u: pesq_wb(u.estimate.numpy(), u.reference.numpy(), u.sr),
                       package="pesq", slow=True, description="wide-band PESQ (MOS-LQO)"))
register_metric(Metric("stoi", lambda u: stoi(u.estimate.numpy(), u.reference.numpy(), u.sr),
                       package="pystoi", slow=True, description="STOI (0..1)"))

DEFAULT_METRICS = tuple(name for name, metric in METRICS.items() if metric.default)
