"""The metric registry: every evaluation metric, in one place.

A :class:`Metric` names a function of one :class:`Utterance` (its estimate, reference and
mixture, 1-D ``[T] @sr``) and says what it needs: the mixture (the improvements), an optional
package (PESQ and STOI come with ``pip install 'avse[eval]'``), whether it is slow (numpy/C
code that :func:`~avse.evaluation.scoring.evaluate_many` runs in worker processes) and
whether it is one of :data:`DEFAULT_METRICS`.

A silent target (conditions ``absent`` / ``sparse``, USEV's split): an :class:`Utterance`
may carry ``active``, a boolean sample mask of where the target speaks. The reference
metrics (``on_active``: SI-SDR(i), SDR(i), PESQ, STOI) are then computed over the active
samples only (NaN when there are none, or too few for PESQ / STOI), and ``silent_energy``
(not a default metric) is the output power relative to the mixture over the silent samples
in dB (floor -100 dB; NaN without silent samples). Without a mask, or with an all-True one,
every value is exactly the unmasked one.

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
>>> absent = Utterance(0.01 * (ref + other), torch.zeros(8000), ref + other,
...                    active=torch.zeros(8000, dtype=torch.bool))
>>> round(absent["silent_energy"], 1), absent["si_sdr"]
(-40.0, nan)
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from avse.data.align import SAMPLE_RATE
from avse.metrics import INSTALL_EVAL, as_1d, pesq_wb, sdr, si_sdr, stoi

__all__ = ["Metric", "METRICS", "DEFAULT_METRICS", "INSTALL_EVAL", "register_metric",
           "improvement", "check_metrics", "missing_packages", "Utterance", "silent_energy",
           "ENERGY_FLOOR_DB", "as_mask"]


@dataclass(frozen=True)
class Metric:
    """One metric: ``compute(utterance) -> float`` (see :class:`Utterance`).

    ``needs_mixture``: reads ``utterance.mixture``; ``package``: a module it imports (NaN
    column and one log line when it is missing); ``slow``: CPU-heavy, run in worker
    processes by ``evaluate_many``; ``default``: one of :data:`DEFAULT_METRICS`;
    ``on_active``: computed over the target-active samples of an utterance with an
    ``active`` mask (NaN when none are, or fewer than ``min_seconds``).
    """

    name: str
    compute: Callable[["Utterance"], float]
    needs_mixture: bool = False
    package: str | None = None
    slow: bool = False
    default: bool = True
    description: str = ""
    on_active: bool = False
    min_seconds: float = 0.0


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

    ``mixture`` may be None when no requested metric needs it. ``active``: optional boolean
    mask ``[T]`` (numpy or torch), True where the target speaks; stored as None when it is
    all True (the metrics are then exactly the unmasked ones). The ``on_active`` metrics of
    a masked utterance are those of :attr:`active_part`, the active samples concatenated.
    Raises ValueError when the signals (or the mask) differ in length.
    """

    def __init__(self, estimate, reference, mixture=None, sr: int = SAMPLE_RATE, active=None,
                 is_part: bool = False):
        signals = [torch.as_tensor(as_1d(x)) for x in (estimate, reference)
                   + (() if mixture is None else (mixture,))]
        if len({x.shape for x in signals}) > 1:
            raise ValueError(f"estimate / reference / mixture differ in length: "
                             f"{[tuple(x.shape) for x in signals]}")
        self.estimate, self.reference = signals[0], signals[1]
        self.mixture = signals[2] if mixture is not None else None
        self.sr = sr
        self.active = None
        if active is not None:
            mask = torch.as_tensor(np.asarray(as_mask(active)))
            if mask.shape != self.estimate.shape:
                raise ValueError(f"active mask of shape {tuple(mask.shape)} does not match "
                                 f"the signals' {tuple(self.estimate.shape)}")
            self.active = None if bool(mask.all()) else mask
        self.is_part = is_part  # a cut of the active samples (PESQ / STOI: NaN if too short)
        self._part = False
        self._values: dict[str, float] = {}

    @property
    def active_part(self) -> "Utterance | None":
        """The target-active samples (concatenated) as an Utterance without a mask; ``self``
        when there is no mask, None when no sample is active."""
        if self.active is None:
            return self
        if self._part is False:
            m = self.active
            self._part = None if not bool(m.any()) else Utterance(
                self.estimate[m], self.reference[m],
                None if self.mixture is None else self.mixture[m], self.sr, is_part=True)
        return self._part

    def __getitem__(self, name: str) -> float:
        if name not in self._values:
            metric = METRICS[name]
            if metric.needs_mixture and self.mixture is None:
                raise ValueError(f"{name} needs the mixture")
            if metric.on_active and self.active is not None:
                part = self.active_part
                too_short = part is None or len(part.estimate) < metric.min_seconds * self.sr
                self._values[name] = float("nan") if too_short else part[name]
            else:
                self._values[name] = float(metric.compute(self))
        return self._values[name]


def as_mask(active) -> np.ndarray:
    """A 1-D boolean numpy mask from numpy / torch / a list (numbers: ``> 0.5``).

    Example
    -------
    >>> as_mask([0.0, 1.0, 1.0]).tolist()
    [False, True, True]
    """
    if isinstance(active, torch.Tensor):
        active = active.detach().cpu().numpy()
    active = np.asarray(active)
    if active.dtype != np.bool_:
        active = active > 0.5
    return active.reshape(-1)


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
                  needs_mixture=True, on_active=True,
                  description=f"{base} improvement over the mixture")


ENERGY_FLOOR_DB = -100.0
"""The floor of :func:`silent_energy` (an all-zero output scores this, never -inf)."""


def silent_energy(u: "Utterance") -> float:
    """Output power relative to the mixture over the target-silent samples of ``u`` (where
    ``u.active`` is False), in dB: ``10 log10(max(P_est, 1e-10 P_mix) / P_mix)``; NaN when
    no sample is silent or the mixture is silent there. 0 dB: everything let through.

    Example
    -------
    >>> mix = torch.sin(torch.arange(1000) * 0.1)
    >>> u = Utterance(0.1 * mix, mix, mix, active=torch.arange(1000) < 400)
    >>> round(silent_energy(u), 6), silent_energy(Utterance(mix, mix, mix))
    (-20.0, nan)
    """
    if u.active is None:
        return float("nan")
    silent = ~u.active
    if not bool(silent.any()):
        return float("nan")
    p_est = float((u.estimate[silent] ** 2).mean())
    p_mix = float((u.mixture[silent] ** 2).mean())
    if not p_mix > 0.0 or not math.isfinite(p_mix) or not math.isfinite(p_est):
        return float("nan")
    return 10.0 * math.log10(max(p_est, 10.0 ** (ENERGY_FLOOR_DB / 10.0) * p_mix) / p_mix)


# --------------------------------------------------------------------------- the metrics
register_metric(Metric("si_sdr", lambda u: si_sdr(u.estimate, u.reference), on_active=True,
                       description="scale-invariant SDR (dB), zero-mean signals"))
register_metric(improvement("si_sdr", si_sdr))
register_metric(Metric("sdr", lambda u: sdr(u.estimate, u.reference), on_active=True,
                       description="BSS-eval SDR (dB), 512-tap distortion filter"))
register_metric(improvement("sdr", sdr))
register_metric(Metric("pesq", lambda u: pesq_wb(u.estimate.numpy(), u.reference.numpy(), u.sr),
                       package="pesq", slow=True, on_active=True, min_seconds=0.25,
                       description="wide-band PESQ (MOS-LQO)"))
register_metric(Metric("stoi", lambda u: stoi(u.estimate.numpy(), u.reference.numpy(), u.sr,
                                              strict=u.is_part),
                       package="pystoi", slow=True, on_active=True,
                       description="STOI (0..1)"))
register_metric(Metric("silent_energy", silent_energy, needs_mixture=True, default=False,
                       description="output power rel. mixture (dB) where the target is silent"))

DEFAULT_METRICS = tuple(name for name, metric in METRICS.items() if metric.default)
