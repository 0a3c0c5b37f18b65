"""Evaluation: one scoring loop, one report writer.

- :mod:`~avse.evaluation.registry` -- which metrics exist (:data:`METRICS`,
  :data:`DEFAULT_METRICS`); adding a metric is one :func:`register_metric` call there.
- :mod:`~avse.evaluation.scoring` -- :class:`Scorer` (one batch -> per-utterance rows, used
  by the Brain's TEST stage), :func:`score_loader` (the loop over a list loader, used by the
  condition evaluation and the sync sweep), :func:`compute_metrics`, :func:`evaluate_many`.
- :mod:`~avse.evaluation.report` -- :class:`MetricTracker`, :func:`write_table` (aligned
  text + csv + json for every table), :func:`means_rows`, :func:`plot_sweep`.
- :mod:`~avse.evaluation.conditions` -- the named-condition lists and table
  (``python -m avse.evaluation.conditions lists|evaluate``).
- :mod:`~avse.evaluation.sync_sweep` -- the AV-sync sweep (``python -m
  avse.evaluation.sync_sweep``, ``tools/eval_sync.py``).
- :mod:`~avse.evaluation.cross_corpus` -- one model on several corpora's test lists, one
  table (``python -m avse.evaluation.cross_corpus``).

PESQ and STOI need ``pip install 'avse[eval]'``; without it their columns are undefined and
the evaluation says so in one line.

A silent target (conditions ``absent`` / ``sparse``): batches with ``activity`` are scored
over the target-active samples (SI-SDR(i), SDR(i), PESQ, STOI), and the metric
``silent_energy`` gives the output power relative to the mixture where the target is silent.
Undefined values are NaN in memory and never in files: empty csv cells, json ``null``,
``null`` in text tables and logs.
"""
from avse.evaluation.registry import (DEFAULT_METRICS, INSTALL_EVAL, METRICS, Metric, Utterance,
                                      check_metrics, missing_packages, register_metric)
from avse.evaluation.report import (NULL, MetricTracker, format_table, means_rows, plot_sweep,
                                    write_csv, write_json, write_table)
from avse.evaluation.scoring import (BATCH_COLUMNS, Scorer, batch_field, batch_to,
                                     compute_metrics, evaluate_many, sample_mask, score_loader)

__all__ = ["DEFAULT_METRICS", "INSTALL_EVAL", "METRICS", "Metric", "Utterance", "check_metrics",
           "missing_packages", "register_metric", "NULL", "MetricTracker", "format_table",
           "means_rows", "plot_sweep", "write_csv", "write_json", "write_table", "BATCH_COLUMNS",
           "Scorer", "batch_field", "batch_to", "compute_metrics", "evaluate_many", "sample_mask",
           "score_loader"]
