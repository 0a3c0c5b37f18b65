"""Evaluation metrics for target speaker extraction: SI-SDR(i), SDR(i), PESQ, STOI.

* :func:`si_sdr` -- scale-invariant SDR (Le Roux et al., 2019), torch, batched and
  differentiable (the training objective, see :mod:`avse.losses`).
* :func:`sdr` -- BSS-eval SDR of one source (``bss_eval_sources`` of mir_eval /
  fast_bss_eval): the estimate is projected onto the span of the reference delayed by
  0..511 samples (a 512-tap distortion filter); SDR is the energy ratio of that
  projection to the residual. Computed here in float64 (FFT correlations + a Toeplitz
  normal-equation solve), no fast_bss_eval needed at run time.
* :func:`si_sdri` / :func:`sdri` -- improvement over the unprocessed mixture.
* :func:`pesq_wb` (ITU-T P.862.2 wide band, ``pesq`` package) and :func:`stoi`
  (``pystoi``): NaN with a warning instead of an exception when they cannot score.
* :func:`compute_metrics` -- every metric for one utterance; :func:`evaluate_many` --
  the same over a list of utterances, PESQ/STOI in a process pool (``n_jobs``).
* :class:`MetricTracker` -- per-utterance rows -> csv / json / text table, NaN-aware
  summaries, optionally grouped by a column (e.g. ``condition``).

Like the reference AV-TSE evaluation (SEANet), SI-SDR is computed on zero-mean signals
and SDR on the raw signals (no mean removal); SI-SDRi / SDRi subtract the metric of the
mixture used as the estimate.

Example
-------
>>> import torch
>>> ref = torch.sin(torch.arange(16000) * 0.05)
>>> est = ref + 0.1 * torch.cos(torch.arange(16000) * 0.3)
>>> round(float(si_sdr(est, ref)), 2)
20.0
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy.fft import next_fast_len

__all__ = ["si_sdr", "sdr", "si_sdri", "sdri", "pesq_wb", "stoi", "compute_metrics",
           "evaluate_many", "MetricTracker", "ALL_METRICS"]

ALL_METRICS = ("si_sdr", "si_sdri", "sdr", "sdri", "pesq", "stoi")


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``; numpy / lists become torch tensors."""
    if isinstance(x, torch.Tensor):
        return x, False
    return torch.as_tensor(np.asarray(x)), True


def _back(y: torch.Tensor, was_numpy: bool):
    """Numpy in -> numpy out (a Python float for a 0-d result)."""
    if not was_numpy:
        return y
    y = y.detach().cpu().numpy()
    return float(y) if y.ndim == 0 else y


def si_sdr(estimate, reference, zero_mean: bool = True, eps: float = 1e-8):
    """Scale-invariant signal-to-distortion ratio in dB.

    ``s_t = <e, r> r / (||r||^2 + eps)``, ``SI-SDR = 10 log10(||s_t||^2 / (||e - s_t||^2
    + eps) + eps)`` (the eps placement of the reference SEANet code). The eps terms keep
    silent / all-zero inputs finite (and the gradient defined): a silent estimate or a
    silent reference scores ``10 log10(eps)`` (-80 dB), a perfect estimate
    ``~10 log10(||r||^2 / eps)``; they are negligible for ordinary signals. (Adding eps
    to the numerator energy instead would give a silent estimate 0 dB, a trap for a
    loss that starts from negative SI-SDRs.)

    Parameters
    ----------
    estimate, reference : Tensor ``[..., T]`` (broadcastable; numpy accepted)
        e.g. ``estimate [B, T] @16 kHz``.
    zero_mean : bool
        Subtract each signal's mean over time first (the usual SI-SDR definition).
    eps : float
        Added to the energies.

    Returns
    -------
    Tensor ``[...]`` in dB (differentiable); numpy / float for numpy input.

    Example
    -------
    >>> import torch
    >>> r = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    >>> si_sdr(3.0 * r, r).shape, bool((si_sdr(3.0 * r, r) > 60).all())
    (torch.Size([2]), True)
    >>> float(si_sdr(torch.zeros(100), torch.zeros(100)))
    -80.0
    """
    est, was_np = _as_tensor(estimate)
    ref, _ = _as_tensor(reference)
    if not est.is_floating_point():
        est = est.double()
    elif est.dtype in (torch.float16, torch.bfloat16):  # eps would underflow (AMP)
        est = est.float()
    ref = ref.to(est.dtype)
    if zero_mean:
        est = est - est.mean(dim=-1, keepdim=True)
        ref = ref - ref.mean(dim=-1, keepdim=True)
    dot = (est * ref).sum(dim=-1, keepdim=True)
    ref_energy = (ref * ref).sum(dim=-1, keepdim=True)
    target = dot / (ref_energy + eps) * ref
    noise = est - target
    ratio = (target * target).sum(dim=-1) / ((noise * noise).sum(dim=-1) + eps)
    return _back(10.0 * torch.log10(ratio + eps), was_np)


def sdr(estimate, reference, filter_length: int = 512, zero_mean: bool = False,
        clamp_db: float = 150.0):
    """BSS-eval signal-to-distortion ratio (single source) in dB.

    The target part of the estimate is its orthogonal projection onto the span of the
    reference delayed by ``0 .. filter_length-1`` samples (what mir_eval's
    ``bss_eval_sources`` does with its 512-tap distortion filter); SDR is ``10 log10
    (||P e||^2 / ||e - P e||^2)``. The projection is solved from the normal equations
    ``R h = c`` (``R``: Toeplitz autocorrelation matrix of the reference, ``c``: cross-
    correlation with the estimate, both by FFT) in float64. No gradient (evaluation only).

    Agrees with fast_bss_eval / torchmetrics (same definition and normal equations) to
    ~1e-10 dB on signals with any broadband content (a noise floor of -80 dB suffices).
    For strictly band-limited references with nothing at all above some frequency the
    Toeplitz system is numerically singular and every normal-equation implementation
    (this one, mir_eval, fast_bss_eval) carries a rounding-dependent error of up to a few
    hundredths of a dB.

    Parameters
    ----------
    estimate, reference : Tensor or ndarray ``[..., T]`` (broadcastable)
        e.g. ``estimate [B, T] @16 kHz``.
    filter_length : int
        Distortion filter taps (512 as in bss_eval / fast_bss_eval / torchmetrics).
    zero_mean : bool
        Remove the means first (``False`` matches the defaults of those packages).
    clamp_db : float
        Result clamped to ``[-clamp_db, clamp_db]`` so a perfect estimate or a silent
        signal gives a finite number instead of +-inf (NaN only for non-finite input).

    Returns
    -------
    float64 Tensor ``[...]``; numpy / float for numpy input.

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> r = rng.standard_normal(16000)
    >>> echo = np.convolve(r, [1.0, 0.0, -0.5, 0.25])[:16000]   # a short filter is ~free
    >>> round(sdr(echo, r), 1), round(si_sdr(echo, r), 1)
    (43.8, 5.0)
    >>> round(sdr(r + 0.1 * rng.standard_normal(16000), r), 1)  # 512 taps fit a bit of noise
    20.1
    """
    est, was_np = _as_tensor(estimate)
    ref, _ = _as_tensor(reference)
    est = est.detach().to(torch.float64)
    ref = ref.detach().to(torch.float64)
    est, ref = torch.broadcast_tensors(est, ref)
    n = est.shape[-1]
    broken = ~(torch.isfinite(est).all(dim=-1) & torch.isfinite(ref).all(dim=-1))
    if broken.any():  # NaN/inf samples: NaN result for that item, compute the others
        est = torch.where(broken[..., None], torch.zeros_like(est), est)
        ref = torch.where(broken[..., None], torch.zeros_like(ref), ref)
    if zero_mean:
        est = est - est.mean(dim=-1, keepdim=True)
        ref = ref - ref.mean(dim=-1, keepdim=True)
    # unit norms: better conditioning; the coherence (cos^2 of the angle) is unchanged
    tiny = torch.finfo(torch.float64).tiny
    est = est / est.norm(dim=-1, keepdim=True).clamp_min(tiny ** 0.5)
    ref = ref / ref.norm(dim=-1, keepdim=True).clamp_min(tiny ** 0.5)
    length = filter_length
    n_fft = next_fast_len(n + length - 1)  # no circular wrap for lags 0..L-1
    R = torch.fft.rfft(ref, n=n_fft)
    E = torch.fft.rfft(est, n=n_fft)
    acf = torch.fft.irfft(R.real ** 2 + R.imag ** 2, n=n_fft)[..., :length]
    xcorr = torch.fft.irfft(R.conj() * E, n=n_fft)[..., :length]  # sum_t r[t] e[t + k]
    silent = acf[..., 0] <= 0.5  # unit-norm reference has acf[0] == 1; 0 when silent
    acf = acf.clone()
    acf[..., 0] = torch.where(silent, torch.ones_like(acf[..., 0]), acf[..., 0])
    idx = torch.arange(length)
    toeplitz = acf[..., (idx[:, None] - idx[None, :]).abs()]  # [..., L, L]
    sol, info = torch.linalg.solve_ex(toeplitz, xcorr.unsqueeze(-1))
    bad = info != 0
    if bad.any():  # exactly singular (e.g. a pure tone): least squares instead
        sol = sol.clone()
        sol[bad] = torch.linalg.lstsq(toeplitz[bad], xcorr[bad].unsqueeze(-1)).solution
    coh = (xcorr.unsqueeze(-1) * sol).sum(dim=(-2, -1))  # ||P e||^2 / ||e||^2
    coh = torch.nan_to_num(coh, nan=0.0).clamp(0.0, 1.0)
    db = 10.0 * (torch.log10(coh) - torch.log10(1.0 - coh))  # +-inf at 1 / 0, never NaN
    db = db.clamp(-clamp_db, clamp_db).masked_fill(broken, float("nan"))
    return _back(db, was_np)


def si_sdri(estimate, reference, mixture, **kwargs):
    """SI-SDR improvement: ``si_sdr(estimate, ref) - si_sdr(mixture, ref)`` in dB, shapes
    as :func:`si_sdr` (``mixture [B, T]``); kwargs go to :func:`si_sdr`.

    Example
    -------
    >>> import torch
    >>> r = torch.randn(4000, generator=torch.Generator().manual_seed(1))
    >>> float(si_sdri(r + 0.1, r, r + 0.1)) == 0.0
    True
    """
    return si_sdr(estimate, reference, **kwargs) - si_sdr(mixture, reference, **kwargs)


def sdri(estimate, reference, mixture, **kwargs):
    """SDR improvement: ``sdr(estimate, ref) - sdr(mixture, ref)`` in dB (see :func:`sdr`).

    Example
    -------
    >>> import numpy as np
    >>> r = np.random.default_rng(0).standard_normal(4000)
    >>> abs(sdri(r + np.sin(np.arange(4000.0)), r, r + np.sin(np.arange(4000.0)))) < 1e-9
    True
    """
    return sdr(estimate, reference, **kwargs) - sdr(mixture, reference, **kwargs)


def _np1d(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        x = np.squeeze(x)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {x.shape}")
    return x


def pesq_wb(estimate, reference, sr: int = 16000) -> float:
    """Wide-band PESQ (P.862.2, MOS-LQO about 1.04 .. 4.64) via the ``pesq`` package.

    ``estimate`` / ``reference``: 1-D ``[T] @16 kHz`` (numpy or torch). Returns NaN with
    a :class:`RuntimeWarning` when PESQ cannot score (no utterance found, too short,
    silent, unsupported ``sr``), so a long evaluation never dies on one item.

    Example
    -------
    >>> import numpy as np, warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     bool(np.isnan(pesq_wb(np.zeros(16000), np.zeros(16000))))
    True
    """
    from pesq import pesq

    est, ref = _np1d(estimate), _np1d(reference)
    if sr != 16000:
        warnings.warn(f"PESQ wide band needs sr=16000, got {sr}; returning NaN",
                      RuntimeWarning, stacklevel=2)
        return float("nan")
    if not (np.isfinite(est).all() and np.isfinite(ref).all()):
        warnings.warn("PESQ: non-finite samples; returning NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    if max(np.abs(est).max(initial=0.0), np.abs(ref).max(initial=0.0)) == 0.0:
        warnings.warn("PESQ: silent signals; returning NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    try:
        return float(pesq(sr, ref, est, "wb"))
    except Exception as err:  # NoUtterancesError, BufferTooShortError, ValueError(sr)...
        warnings.warn(f"PESQ failed ({type(err).__name__}: {err}); returning NaN",
                      RuntimeWarning, stacklevel=2)
        return float("nan")


def stoi(estimate, reference, sr: int = 16000, extended: bool = False) -> float:
    """STOI (0..1, Taal et al. 2011) via ``pystoi``; ``extended=True`` gives ESTOI.

    1-D ``[T]`` inputs at ``sr``; NaN with a warning if pystoi raises.

    Example
    -------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(16000)
    >>> round(stoi(x, x), 3)
    1.0
    """
    from pystoi import stoi as _stoi

    est, ref = _np1d(estimate), _np1d(reference)
    try:
        return float(_stoi(ref, est, sr, extended=extended))
    except Exception as err:
        warnings.warn(f"STOI failed ({type(err).__name__}: {err}); returning NaN",
                      RuntimeWarning, stacklevel=2)
        return float("nan")


def _check_metrics(metrics: Iterable[str]) -> tuple:
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(ALL_METRICS)}")
    return metrics


def _fast_metrics(est: torch.Tensor, ref: torch.Tensor, mix, metrics) -> dict:
    out = {}
    for name, fn in (("si_sdr", si_sdr), ("sdr", sdr)):
        if name in metrics or name + "i" in metrics:
            out[name] = float(fn(est, ref))
            if name + "i" in metrics:
                out[name + "i"] = out[name] - float(fn(mix, ref))
    return out


def _slow_metrics(est: np.ndarray, ref: np.ndarray, sr: int, metrics) -> dict:
    out = {}
    if "pesq" in metrics:
        out["pesq"] = pesq_wb(est, ref, sr)
    if "stoi" in metrics:
        out["stoi"] = stoi(est, ref, sr)
    return out


def _prepare(estimate, reference, mixture, metrics):
    need_mix = "si_sdri" in metrics or "sdri" in metrics
    if need_mix and mixture is None:
        raise ValueError("si_sdri / sdri need the mixture")
    sigs = [torch.as_tensor(_np1d(x)) for x in (estimate, reference, mixture if need_mix else ())
            if not isinstance(x, tuple)]
    if len({x.shape for x in sigs}) > 1:
        raise ValueError(f"estimate / reference / mixture differ in length: "
                         f"{[tuple(x.shape) for x in sigs]}")
    return sigs[0], sigs[1], (sigs[2] if need_mix else None)


def compute_metrics(estimate, reference, mixture=None, sr: int = 16000,
                    metrics: Sequence[str] = ALL_METRICS) -> dict:
    """All requested metrics of one utterance as ``{name: float}`` (in ``metrics`` order).

    Parameters
    ----------
    estimate, reference, mixture : 1-D ``[T] @sr`` numpy or torch (same length);
        ``mixture`` is only needed for ``si_sdri`` / ``sdri``.
    metrics : names out of :data:`ALL_METRICS`.

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
    metrics = _check_metrics(metrics)
    est, ref, mix = _prepare(estimate, reference, mixture, metrics)
    out = _fast_metrics(est, ref, mix, metrics)
    out.update(_slow_metrics(est.numpy(), ref.numpy(), sr, metrics))
    return {m: out[m] for m in metrics}


def _slow_job(args):
    return _slow_metrics(*args)


def evaluate_many(estimates, references, mixtures=None, sr: int = 16000,
                  metrics: Sequence[str] = ALL_METRICS, n_jobs: int = 1,
                  mp_context: str = "spawn") -> list[dict]:
    """:func:`compute_metrics` over a list of utterances; PESQ/STOI (the slow part, pure
    numpy/C) in a pool of ``n_jobs`` processes, SI-SDR/SDR in this process.

    ``estimates`` / ``references`` / ``mixtures``: sequences of 1-D ``[T_i]`` signals.
    Returns one dict per utterance, in order. The default ``"spawn"`` pool re-imports the
    calling script in each worker: call it under ``if __name__ == "__main__":``.

    Example
    -------
    >>> import numpy as np
    >>> x = [np.random.default_rng(i).standard_normal(4000) for i in range(2)]
    >>> [m["si_sdr"] > 100 for m in evaluate_many(x, x, metrics=("si_sdr",))]
    [True, True]
    """
    metrics = _check_metrics(metrics)
    if mixtures is None:
        mixtures = [None] * len(references)
    if not len(estimates) == len(references) == len(mixtures):
        raise ValueError("estimates, references and mixtures differ in number")
    prepared = [_prepare(e, r, m, metrics) for e, r, m in zip(estimates, references, mixtures)]
    rows = [_fast_metrics(e, r, m, metrics) for e, r, m in prepared]
    jobs = [(e.numpy(), r.numpy(), sr, metrics) for e, r, _ in prepared]
    if any(m in metrics for m in ("pesq", "stoi")):
        if n_jobs > 1 and len(jobs) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context(mp_context)
            with ProcessPoolExecutor(min(n_jobs, len(jobs)), mp_context=ctx) as pool:
                slow = list(pool.map(_slow_job, jobs, chunksize=max(1, len(jobs) // (4 * n_jobs))))
        else:
            slow = [_slow_job(j) for j in jobs]
        for row, extra in zip(rows, slow):
            row.update(extra)
    return [{m: row[m] for m in metrics} for row in rows]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


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
        """Keyword form of :meth:`add`: names in :data:`ALL_METRICS` or already tracked as
        metrics, and other real numbers, are metrics; anything else (str ...) is an extra
        column. ``t.append("u1", si_sdr=9.5, condition="2mix")``."""
        values, extra = {}, {}
        for k, v in columns.items():
            numeric = (isinstance(v, (float, int, np.floating, np.integer))
                       and not isinstance(v, bool))
            if k not in self.extra_columns and (k in ALL_METRICS or k in self.metrics or numeric):
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
        a = a[~np.isnan(a)]
        if a.size == 0:
            return {"mean": float("nan"), "std": float("nan"), "count": 0}
        return {"mean": float(a.mean()), "std": float(a.std()), "count": int(a.size)}

    def summary(self, by: str | None = None) -> dict:
        """``{metric: {"mean", "std", "count"}}`` over rows, NaN ignored (``count`` =
        non-NaN values; ``std`` is the population std). With ``by="condition"``:
        ``{condition value: {metric: {...}}}`` (groups in first-seen order)."""
        if by is None:
            return {m: self._stats(r.get(m, float("nan")) for r in self.rows)
                    for m in self.metrics}
        if by not in self.extra_columns and by != "id":
            raise KeyError(f"no column {by!r}; columns: {', '.join(self.columns)}")
        groups: dict = {}
        for r in self.rows:
            groups.setdefault(r.get(by), []).append(r)
        out = {}
        for key, rows in groups.items():
            sub = MetricTracker(self.metrics)
            sub.rows = rows
            out[key] = sub.summary()
        return out

    def write_csv(self, path) -> None:
        """One row per utterance: ``id, <extra columns>, <metrics>`` (NaN written as
        ``nan``, floats with full precision)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for r in self.rows:
                w.writerow([r.get(c, "") if c not in self.metrics
                            else repr(float(r.get(c, float("nan")))) for c in self.columns])

    def write_json(self, path, by: str | None = None) -> None:
        """``{"n": rows, "summary": {...}}`` (plus ``"by_<column>"`` when ``by``); NaN
        means become ``null``."""
        def clean(d):
            if isinstance(d, dict):
                return {str(k): clean(v) for k, v in d.items()}
            if isinstance(d, float) and math.isnan(d):
                return None
            return d

        out = {"n": len(self.rows), "summary": clean(self.summary())}
        if by is not None:
            out[f"by_{by}"] = clean(self.summary(by=by))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")

    def table(self, by: str | None = None) -> str:
        """Aligned text table ``metric | mean | std | count`` (one block per group with
        ``by``, headed by ``[<by>=<value>]``)."""
        if by is not None:
            blocks = []
            for key, summ in self.summary(by=by).items():
                blocks.append(f"[{by}={key}]\n" + self._table(summ))
            return "\n\n".join(blocks)
        return self._table(self.summary())

    @staticmethod
    def _table(summ: dict) -> str:
        body = [[m, _fmt(s["mean"]), _fmt(s["std"]), str(s["count"])] for m, s in summ.items()]
        rows = [["metric", "mean", "std", "count"], *body]
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = []
        for r in rows:
            lines.append("  ".join([r[0].ljust(w[0])] + [r[i].rjust(w[i]) for i in (1, 2, 3)]))
        return "\n".join(line.rstrip() for line in lines)
