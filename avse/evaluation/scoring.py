"""Scoring: estimates -> per-utterance metric rows, the one loop every evaluation uses.

- :class:`Scorer` -- the metrics of one evaluation run. It checks their optional packages
  once (one log line naming ``pip install 'avse[eval]'`` when PESQ / STOI cannot be
  imported; their columns are NaN, the other metrics are computed) and scores one utterance
  (:meth:`Scorer.score`) or one batch into a tracker (:meth:`Scorer.score_batch`: each
  example over its own ``lengths``, plus extra columns such as ``interferers``, ``lips_of``
  or ``offset``). The Brain's TEST stage calls :meth:`Scorer.score_batch` on its estimates.
  A batch with ``activity [B, Tv]`` (where the target speaks, per video frame) scores each
  example with that sample mask: the reference metrics over the active samples,
  ``silent_energy`` over the silent ones (:mod:`~avse.evaluation.registry`).
- :func:`score_loader` -- the loop over a list loader: ``model(mixture, visual).estimate``
  for every batch (and every visual variant, e.g. the lip offsets of the sync sweep),
  scored into a :class:`~avse.evaluation.report.MetricTracker`.
- :func:`compute_metrics` / :func:`evaluate_many` -- one utterance / a list of utterances
  without a loader (PESQ and STOI in a process pool).

Which metrics exist is :mod:`avse.evaluation.registry`.

Example
-------
>>> import torch
>>> from avse.evaluation.report import MetricTracker
>>> target = torch.randn(2, 1600, generator=torch.Generator().manual_seed(0))
>>> batch = {"target": target, "mixture": 2 * target, "keys": ["a", "b"],
...          "lengths": torch.tensor([1.0, 0.5])}
>>> tracker = MetricTracker()
>>> Scorer(("si_sdr",)).score_batch(target + 0.01, batch, tracker, offset=0)
>>> tracker.columns, tracker.rows[1]["offset"], tracker.rows[1]["si_sdr"] > 30
(['id', 'offset', 'si_sdr'], 0, True)
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

import numpy as np

from avse.data.align import SAMPLE_RATE, SAMPLES_PER_FRAME
from avse.evaluation.registry import (DEFAULT_METRICS, INSTALL_EVAL, METRICS, Utterance,
                                      as_mask, check_metrics, missing_packages)
from avse.evaluation.report import MetricTracker

logger = logging.getLogger(__name__)

__all__ = ["Scorer", "score_loader", "compute_metrics", "evaluate_many", "batch_field",
           "batch_to", "BATCH_COLUMNS", "sample_mask"]


def batch_field(batch, name, *default):
    """``batch.name`` or ``batch[name]`` (pipelines may yield objects or dicts); ``default``
    (when given) for a field the batch does not have.

    Example
    -------
    >>> batch_field({"keys": ["a"]}, "keys"), batch_field({}, "lengths", None)
    (['a'], None)
    """
    has = name in batch if isinstance(batch, dict) else hasattr(batch, name)
    if not has and default:
        return default[0]
    return batch[name] if isinstance(batch, dict) else getattr(batch, name)


def batch_to(batch, device):
    """Move every tensor of a batch (dict or object with ``to``) to ``device``."""
    if hasattr(batch, "to") and not isinstance(batch, dict):
        return batch.to(device)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# column name -> (batch field, value of example i); added by score_batch(batch_columns=...)
BATCH_COLUMNS = {
    "interferers": ("interferer_keys", lambda keys: ";".join(keys)),
    "lips_of": ("visual_keys", lambda key: key),
}


def sample_mask(activity, n: int) -> np.ndarray:
    """The boolean sample mask ``[n]`` of per-video-frame ``activity [Tv]`` (frame ``k``:
    samples ``[640 k, 640 k + 640)``, active where ``> 0.5``).

    Example
    -------
    >>> m = sample_mask(torch.tensor([0.0, 1.0, 0.0]), 1500)
    >>> m.shape, int(m.sum()), bool(m[640]), bool(m[1279]), bool(m[1280])
    ((1500,), 640, True, True, False)
    """
    frames = as_mask(activity)
    mask = np.repeat(frames, SAMPLES_PER_FRAME)[:n]
    if len(mask) < n:
        raise ValueError(f"activity of {len(frames)} frames covers {len(mask)} samples, "
                         f"fewer than the example's {n}")
    return mask


class Scorer:
    """The metrics of one evaluation run (names out of :data:`~avse.evaluation.registry.METRICS`,
    default :data:`~avse.evaluation.registry.DEFAULT_METRICS`) at ``sr``.

    ``missing``: ``{metric: package}`` of those whose package cannot be imported (reported in
    one warning line when the scorer is made; their values are NaN).
    """

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS, sr: int = SAMPLE_RATE):
        self.metrics = check_metrics(metrics)
        self.sr = sr
        self.missing = missing_packages(self.metrics)
        if self.missing:
            logger.warning("metric(s) %s not computed (null): package(s) %s not installed; %s",
                           ", ".join(self.missing), ", ".join(sorted(set(self.missing.values()))),
                           INSTALL_EVAL)
        self.computed = tuple(m for m in self.metrics if m not in self.missing)
        self.needs_mixture = any(METRICS[m].needs_mixture for m in self.computed)

    def utterance(self, estimate, reference, mixture=None, active=None) -> Utterance:
        """An :class:`~avse.evaluation.registry.Utterance` (the mixture kept only when needed;
        ``active``: optional boolean sample mask ``[T]``, True where the target speaks)."""
        if self.needs_mixture and mixture is None:
            raise ValueError(f"{', '.join(m for m in self.computed if METRICS[m].needs_mixture)}"
                             " need the mixture")
        return Utterance(estimate, reference, mixture if self.needs_mixture else None, self.sr,
                         active)

    def score(self, estimate, reference, mixture=None, active=None) -> dict:
        """``{metric: float}`` of one utterance (1-D ``[T] @sr``, numpy or torch), in order;
        ``active`` as :meth:`utterance`."""
        utt = self.utterance(estimate, reference, mixture, active)
        return {m: utt[m] if m not in self.missing else float("nan") for m in self.metrics}

    def score_batch(self, estimate, batch, tracker: MetricTracker,
                    batch_columns: Sequence[str] = (), **columns) -> None:
        """Score ``estimate [B, T]`` against the batch's ``target`` (``mixture`` for the
        improvements), example ``i`` over its first ``round(lengths[i] * T)`` samples, into
        ``tracker`` under the batch's ``keys``. When the batch has ``activity [B, Tv]`` (not
        None), example ``i`` is scored with its :func:`sample_mask` over its own length.

        ``batch_columns``: names out of :data:`BATCH_COLUMNS` taken from the batch when it
        has them (``interferers``, ``lips_of``); ``columns``: constant extra columns of every
        row (``offset=2``).
        """
        estimate = estimate.detach().float()
        target = batch_field(batch, "target")
        mixture = batch_field(batch, "mixture")
        lengths = batch_field(batch, "lengths", None)
        activity = batch_field(batch, "activity", None)
        per_example = {}
        for name in batch_columns:
            field, value = BATCH_COLUMNS[name]
            found = batch_field(batch, field, None)
            if found is not None:
                per_example[name] = (found, value)
        n_max = estimate.shape[-1]
        for i, key in enumerate(batch_field(batch, "keys")):
            n = n_max if lengths is None else int(round(float(lengths[i]) * n_max))
            active = None if activity is None else sample_mask(activity[i], n)
            row = self.score(estimate[i, :n].cpu().numpy(), target[i, :n].cpu().numpy(),
                             mixture[i, :n].cpu().numpy(), active)
            extra = {name: value(found[i]) for name, (found, value) in per_example.items()}
            tracker.add(key, row, **extra, **columns)


@torch.no_grad()
def score_loader(model, loader, metrics: Sequence[str] | Scorer = DEFAULT_METRICS,
                 variants: Sequence[tuple[dict, Callable | None]] = (({}, None),),
                 device: str = "cpu", progress: bool = False, desc: str = "evaluation",
                 tracker: MetricTracker | None = None) -> MetricTracker:
    """Evaluate ``model`` on every batch of ``loader``; returns the tracker of the rows.

    ``model``: an :class:`~avse.models.AVSEModel`, called as ``model(mixture,
    visual).estimate`` (as the Brain's test stage does); ``loader``: a list loader
    (:func:`avse.data.loaders.make_list_loader`, ``stage="test"``) yielding
    :class:`~avse.data.loaders.AVBatch`. ``metrics``: names or a :class:`Scorer`.
    ``variants``: ``(columns, transform)`` pairs; each batch is read once and run once per
    variant with ``visual = transform(batch.visual, batch.lengths)`` (unchanged for None),
    its rows carrying ``columns`` (e.g. ``{"offset": 2}``).
    """
    scorer = metrics if isinstance(metrics, Scorer) else Scorer(metrics)
    model = model.to(device).eval()
    tracker = MetricTracker(metrics=scorer.metrics) if tracker is None else tracker
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=desc, unit="batch")
    for batch in batches:
        batch = batch_to(batch, device)
        for columns, transform in variants:
            visual = batch.visual if transform is None else transform(batch.visual, batch.lengths)
            scorer.score_batch(model(batch.mixture, visual).estimate, batch, tracker, **columns)
    return tracker


def compute_metrics(estimate, reference, mixture=None, sr: int = SAMPLE_RATE,
                    metrics: Sequence[str] = DEFAULT_METRICS, active=None) -> dict:
    """All requested metrics of one utterance as ``{name: float}`` (in ``metrics`` order).

    ``estimate``, ``reference``, ``mixture``: 1-D ``[T] @sr`` numpy or torch (same length);
    ``mixture`` is only needed for ``si_sdri`` / ``sdri`` / ``silent_energy``; ``active``:
    optional boolean sample mask ``[T]`` of where the target speaks. For many utterances use
    :func:`evaluate_many` or one :class:`Scorer` (a missing package is reported once).

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.standard_normal(8000)
    >>> mix = ref + rng.standard_normal(8000)
    >>> m = compute_metrics(ref + 0.1 * (mix - ref), ref, mix, metrics=("si_sdr", "si_sdri"))
    >>> {k: round(v) for k, v in m.items()}
    {'si_sdr': 20, 'si_sdri': 20}
    """
    return Scorer(metrics, sr).score(estimate, reference, mixture, active)


def _slow_job(args) -> dict:
    names, estimate, reference, mixture, sr, active = args
    utt = Utterance(estimate, reference, mixture, sr, active)
    return {name: utt[name] for name in names}


def evaluate_many(estimates, references, mixtures=None, sr: int = SAMPLE_RATE,
                  metrics: Sequence[str] = DEFAULT_METRICS, n_jobs: int = 1,
                  mp_context: str = "spawn", actives=None) -> list[dict]:
    """:func:`compute_metrics` over a list of utterances; the slow metrics (PESQ/STOI, pure
    numpy/C) in a pool of ``n_jobs`` processes, SI-SDR/SDR in this process.

    ``estimates`` / ``references`` / ``mixtures``: sequences of 1-D ``[T_i]`` signals;
    ``actives``: optional sequence of boolean sample masks ``[T_i]`` (or None entries).
    Returns one dict per utterance, in order. The default ``"spawn"`` pool re-imports the
    calling script in each worker: call it under ``if __name__ == "__main__":``.

    Example
    -------
    >>> import numpy as np
    >>> x = [np.random.default_rng(i).standard_normal(4000) for i in range(2)]
    >>> [m["si_sdr"] > 100 for m in evaluate_many(x, x, metrics=("si_sdr",))]
    [True, True]
    """
    scorer = Scorer(metrics, sr)
    if mixtures is None:
        mixtures = [None] * len(references)
    if actives is None:
        actives = [None] * len(references)
    if not len(estimates) == len(references) == len(mixtures) == len(actives):
        raise ValueError("estimates, references, mixtures and actives differ in number")
    utts = [scorer.utterance(e, r, m, a)
            for e, r, m, a in zip(estimates, references, mixtures, actives)]
    slow = [m for m in scorer.computed if METRICS[m].slow]
    rows = [{m: u[m] for m in scorer.computed if m not in slow} for u in utts]
    if slow:
        jobs = [(slow, u.estimate.numpy(), u.reference.numpy(),
                 None if u.mixture is None else u.mixture.numpy(), sr,
                 None if u.active is None else u.active.numpy()) for u in utts]
        if n_jobs > 1 and len(jobs) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context(mp_context)
            with ProcessPoolExecutor(min(n_jobs, len(jobs)), mp_context=ctx) as pool:
                done = list(pool.map(_slow_job, jobs, chunksize=max(1, len(jobs) // (4 * n_jobs))))
        else:
            done = [_slow_job(j) for j in jobs]
        for row, extra in zip(rows, done):
            row.update(extra)
    return [{m: row.get(m, float("nan")) for m in scorer.metrics} for row in rows]
