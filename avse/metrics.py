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
  (``pystoi``): NaN with a warning instead of an exception when they cannot score; both
  packages come with ``pip install 'avse[eval]'``.

The metric functions only: which metrics exist, scoring utterances and batches, trackers and
tables are :mod:`avse.evaluation`.

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

import importlib
import warnings

import numpy as np
import torch
from scipy.fft import next_fast_len

__all__ = ["si_sdr", "sdr", "si_sdri", "sdri", "pesq_wb", "stoi", "as_1d", "INSTALL_EVAL"]

INSTALL_EVAL = "pip install 'avse[eval]'"  # the extra that brings pesq and pystoi


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


def as_1d(x) -> np.ndarray:
    """A 1-D float64 numpy signal ``[T]`` from numpy / torch / a list (size-1 axes squeezed).

    Example
    -------
    >>> import torch
    >>> as_1d(torch.ones(1, 3)).tolist()
    [1.0, 1.0, 1.0]
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        x = np.squeeze(x)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {x.shape}")
    return x


def _import_optional(module: str, attr: str):
    """``module.attr`` of an optional evaluation package; ImportError saying how to install it."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise ImportError(f"{module} is not installed ({err}): {INSTALL_EVAL}") from err


def pesq_wb(estimate, reference, sr: int = 16000) -> float:
    """Wide-band PESQ (P.862.2, MOS-LQO about 1.04 .. 4.64) via the ``pesq`` package.

    ``estimate`` / ``reference``: 1-D ``[T] @16 kHz`` (numpy or torch). Returns NaN with
    a :class:`RuntimeWarning` when PESQ cannot score (no utterance found, too short,
    silent, unsupported ``sr``), so a long evaluation never dies on one item; ImportError
    (naming :data:`INSTALL_EVAL`) when ``pesq`` is not installed.

    Example
    -------
    >>> import numpy as np, warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     bool(np.isnan(pesq_wb(np.zeros(16000), np.zeros(16000))))
    True
    """
    pesq = _import_optional("pesq", "pesq")
    est, ref = as_1d(estimate), as_1d(reference)
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


def stoi(estimate, reference, sr: int = 16000, extended: bool = False,
         strict: bool = False) -> float:
    """STOI (0..1, Taal et al. 2011) via ``pystoi``; ``extended=True`` gives ESTOI.

    1-D ``[T]`` inputs at ``sr``; NaN with a warning if pystoi raises; ImportError (naming
    :data:`INSTALL_EVAL`) when ``pystoi`` is not installed. ``strict``: NaN (no warning)
    instead of pystoi's ``1e-5`` when fewer than 30 STFT frames (~0.4 s) of speech are
    left after its silent-frame removal (e.g. a short target-active span).

    Example
    -------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(16000)
    >>> round(stoi(x, x), 3), stoi(x[:4000], x[:4000], strict=True)
    (1.0, nan)
    """
    _stoi = _import_optional("pystoi", "stoi")
    est, ref = as_1d(estimate), as_1d(reference)
    try:
        if not strict:
            return float(_stoi(ref, est, sr, extended=extended))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = float(_stoi(ref, est, sr, extended=extended))
        short = False
        for w in caught:
            if "Not enough STFT frames" in str(w.message):
                short = True
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return float("nan") if short else value
    except Exception as err:
        warnings.warn(f"STOI failed ({type(err).__name__}: {err}); returning NaN",
                      RuntimeWarning, stacklevel=2)
        return float("nan")
