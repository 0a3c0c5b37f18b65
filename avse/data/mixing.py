"""Mixing helpers: SNR scaling, aligned random crops, padding, peak normalisation.

Pure numpy, no I/O. Audio is mono float at 16 kHz; the visual stream (mouth ROI
``[Tv, 88, 88]`` or lip embeddings ``[Tv, 512]``) is at 25 fps, and video frame ``k``
spans audio samples ``[640 k, 640 k + 640)`` (see :mod:`avse.data.align`).

The SNR of an interferer is relative to the target, as in the VoxMix lists and SEANet:
``10 log10(P_target / P_interferer)`` with ``P = mean(x ** 2)`` over the mixed span.
Unlike SEANet (which adds ``1e-4`` inside the log), the ratio here is exact for every
non-silent pair; a silent target or interferer is left unscaled, so nothing divides by
zero.

Example
-------
>>> rng = np.random.default_rng(0)
>>> s, n = rng.standard_normal(6400), rng.standard_normal(6400)
>>> mix, tgt, inter = mix_sources(s, [n], [5.0])
>>> round(float(snr_db(tgt, inter)), 6)
5.0
>>> mix, tgt, inter = peak_normalise(mix, tgt, inter)
>>> bool(np.allclose(mix, tgt + inter, atol=1e-6)), float(np.abs(mix).max()) <= 1.0
(True, True)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

import numpy as np

from avse.data.conditions import get_condition
from avse.data.align import FPS, SAMPLES_PER_FRAME, shift_visual  # noqa: F401 (re-exported)

SILENCE_POWER = 1e-12
"""Mean power (full scale = 1) at or below which a signal counts as silent (-120 dBFS)."""


def power(x: np.ndarray) -> float:
    """Mean power ``mean(x ** 2)`` of ``x [T]`` (float64; 0.0 for an empty array)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x * x)) if x.size else 0.0


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """``10 log10(P_reference / P_other)`` in dB (``inf``/``-inf``/``nan`` for silent inputs).

    Example
    -------
    >>> snr_db(np.ones(4), 0.1 * np.ones(4))
    20.0
    """
    p_ref, p_other = power(reference), power(other)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(10.0 * np.log10(np.float64(p_ref) / np.float64(p_other)))


def scale_to_snr(target: np.ndarray, interferer: np.ndarray, snr_db: float) -> np.ndarray:
    """Scale ``interferer`` so that ``10 log10(P_target / P_scaled) == snr_db``.

    Arguments
    ---------
    target : np.ndarray
        ``[T]`` reference signal (its power sets the level).
    interferer : np.ndarray
        ``[T]`` signal to scale (same span as ``target``).
    snr_db : float
        wanted target-to-interferer ratio in dB.

    Returns
    -------
    np.ndarray ``[T]`` float32, the scaled interferer. When either signal is silent
    (power <= ``SILENCE_POWER``) the SNR is undefined and ``interferer`` is returned
    unscaled (never NaN or inf).

    Example
    -------
    >>> t, i = np.ones(100), 3.0 * np.ones(100)
    >>> round(float(np.mean(scale_to_snr(t, i, 10.0) ** 2)), 6)
    0.1
    """
    p_t, p_i = power(target), power(interferer)
    interferer = np.asarray(interferer)
    if p_t <= SILENCE_POWER or p_i <= SILENCE_POWER:
        return interferer.astype(np.float32)
    gain = np.sqrt(p_t / (p_i * 10.0 ** (float(snr_db) / 10.0)))
    return (interferer.astype(np.float64) * gain).astype(np.float32)


def fit_length(wav: np.ndarray, n_samples: int, rng: Optional[np.random.Generator] = None,
               mode: str = "zero") -> np.ndarray:
    """Cut or extend ``wav [T]`` to ``n_samples``.

    Longer input: a random window (``rng``) or the start (``rng=None``). Shorter input:
    zero padding (``mode="zero"``) or repetition (``mode="wrap"``, used for noise).

    Example
    -------
    >>> fit_length(np.arange(3.0), 5).tolist(), fit_length(np.arange(3.0), 5, mode="wrap").tolist()
    ([0.0, 1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 2.0, 0.0, 1.0])
    """
    wav = np.asarray(wav)
    if len(wav) > n_samples:
        start = int(rng.integers(0, len(wav) - n_samples + 1)) if rng is not None else 0
        return wav[start:start + n_samples]
    if len(wav) < n_samples:
        if mode == "wrap" and len(wav):
            return np.pad(wav, (0, n_samples - len(wav)), mode="wrap")
        return np.pad(wav, (0, n_samples - len(wav)))
    return wav


def mix_sources(target: np.ndarray, interferers, snrs, noise: Optional[np.ndarray] = None,
                noise_snr: Optional[float] = None):
    """Add interferers (and optional noise) to a target at SNRs relative to the target.

    Arguments
    ---------
    target : np.ndarray
        ``[T]`` target speech.
    interferers : sequence of np.ndarray
        each ``[T]`` (same length as ``target``; see :func:`fit_length`).
    snrs : sequence of float
        one SNR in dB per interferer, each relative to the target (not to the sum).
    noise : np.ndarray, optional
        ``[T]`` noise, scaled to ``noise_snr`` dB relative to the target.

    Returns
    -------
    ``(mixture, target, interference)``, each ``[T]`` float32, with
    ``mixture == target + interference`` (interference = scaled interferers + noise).

    Example
    -------
    >>> m, t, i = mix_sources(np.ones(8), [np.ones(8), np.ones(8)], [0.0, 0.0])
    >>> m.tolist() == [3.0] * 8
    True
    """
    target = np.asarray(target, dtype=np.float32)
    if len(interferers) != len(snrs):
        raise ValueError(f"{len(interferers)} interferer(s) but {len(snrs)} SNR(s)")
    interference = np.zeros(len(target), np.float64)
    for wav, snr in zip(interferers, snrs):
        if len(wav) != len(target):
            raise ValueError(f"interferer has {len(wav)} samples, target {len(target)}")
        interference += scale_to_snr(target, wav, snr)
    if noise is not None:
        if noise_snr is None:
            raise ValueError("noise given without noise_snr")
        if len(noise) != len(target):
            raise ValueError(f"noise has {len(noise)} samples, target {len(target)}")
        interference += scale_to_snr(target, noise, noise_snr)
    interference = interference.astype(np.float32)
    return target + interference, target, interference


def crop_start(n_frames: int, crop_frames: int, rng: np.random.Generator) -> int:
    """A uniform random start frame for a crop of ``crop_frames`` out of ``n_frames`` (0 if shorter)."""
    return int(rng.integers(0, n_frames - crop_frames + 1)) if n_frames > crop_frames else 0


def random_crop(wav: np.ndarray, visual: np.ndarray, crop_frames: int,
                rng: np.random.Generator, start: Optional[int] = None):
    """Crop audio and visual together, starting on a video-frame boundary.

    Arguments
    ---------
    wav : np.ndarray
        ``[T]`` audio with ``T >= 640 * Tv`` (extra samples past the last frame are dropped).
    visual : np.ndarray
        ``[Tv, ...]`` frames at 25 fps.
    crop_frames : int
        crop length in video frames (``640 * crop_frames`` samples).
    start : int, optional
        start frame; drawn uniformly with ``rng`` when None.

    Returns
    -------
    ``(wav [640 n], visual [n, ...])`` with ``n = min(crop_frames, Tv)``: a clip shorter
    than the crop comes back whole (pad it with :func:`pad_to`).

    Example
    -------
    >>> w, v = random_crop(np.arange(640 * 10), np.arange(10), 4, np.random.default_rng(0))
    >>> int(w[0]) == 640 * int(v[0]), len(w), len(v)
    (True, 2560, 4)
    """
    n = len(visual)
    if len(wav) < n * SAMPLES_PER_FRAME:
        raise ValueError(f"audio has {len(wav)} samples, fewer than {n} frames x 640")
    if start is None:
        start = crop_start(n, crop_frames, rng)
    stop = min(start + crop_frames, n)
    return (wav[start * SAMPLES_PER_FRAME:stop * SAMPLES_PER_FRAME], visual[start:stop])


def pad_to(wav: Optional[np.ndarray], visual: np.ndarray, n_frames: int):
    """Pad to ``n_frames`` video frames: audio with zeros, visual by repeating its last frame.

    Longer inputs are truncated. Returns ``(wav [640 n_frames], visual [n_frames, ...])``
    (``wav`` None stays None: pads the visual stream only).

    Example
    -------
    >>> w, v = pad_to(np.ones(640), np.array([[7]]), 3)
    >>> len(w), float(w[-1]), v[:, 0].tolist()
    (1920, 0.0, [7, 7, 7])
    """
    if wav is not None:
        n_samples = n_frames * SAMPLES_PER_FRAME
        wav = fit_length(np.asarray(wav)[:n_samples], n_samples)
    visual = np.asarray(visual)[:n_frames]
    if len(visual) < n_frames:
        if len(visual) == 0:
            raise ValueError("cannot edge-pad an empty visual stream")
        pad = [(0, n_frames - len(visual))] + [(0, 0)] * (visual.ndim - 1)
        visual = np.pad(visual, pad, mode="edge")
    return wav, visual


def peak_normalise(*signals: np.ndarray, joint: bool = True):
    """Divide signals by their peak absolute value; silent signals stay as they are.

    Arguments
    ---------
    *signals : np.ndarray
        e.g. ``mixture, target, interference``, each ``[T]``.
    joint : bool
        True: one common factor (the largest peak of all signals), which keeps
        ``mixture == target + interference`` and every signal within [-1, 1].
        False: each signal by its own peak (what SEANet's loader does).

    Returns
    -------
    tuple of float32 arrays, one per input (never NaN or inf: a peak of 0 divides by 1).

    Example
    -------
    >>> a, b = peak_normalise(np.array([0.5, -2.0]), np.zeros(2))
    >>> a.tolist(), b.tolist()
    ([0.25, -1.0], [0.0, 0.0])
    """
    def peak(x):
        return float(np.max(np.abs(x))) if np.size(x) else 0.0

    if joint:
        p = max((peak(x) for x in signals), default=0.0)
        scale = 1.0 / p if p > 0 else 1.0
        return tuple((np.asarray(x, np.float64) * scale).astype(np.float32) for x in signals)
    out = []
    for x in signals:
        p = peak(x)
        out.append((np.asarray(x, np.float64) / (p if p > 0 else 1.0)).astype(np.float32))
    return tuple(out)


NoiseSource = Union[Callable[[np.random.Generator], np.ndarray], Iterable[np.ndarray]]


@dataclass
class MixtureConfig:
    """How training/evaluation mixtures are made.

    Attributes
    ----------
    crop_seconds : float or None
        length of training examples in seconds (4.0 as in SEANet; rounded to whole
        video frames: 4.0 s = 100 frames = 64000 samples). None keeps full utterances
        (batches are then padded and carry relative ``lengths``).
    num_interferers_probs : dict
        ``{number of interfering speakers: probability}``; the default ``{1: 1.0, 2: 0.0}``
        makes 2-speaker mixtures only; ``{1: 0.5, 2: 0.5}`` mixes 2- and 3-speaker ones.
        ``0`` (target + noise only, speech enhancement) needs a ``noise_source``: an
        example drawn with 0 interferers always gets noise, whatever ``noise_prob``.
    snr_range : (float, float)
        each interferer's SNR relative to the target, uniform in this range, in dB
        (``(-10, 10)``, the VoxMix range).
    noise_prob : float
        probability of adding a noise waveform to an example (0: never).
    noise_snr_range : (float, float)
        noise SNR relative to the target, uniform, in dB.
    noise_source : callable or iterable, optional
        where noise comes from (MUSAN noise shards plug in here later): a callable
        ``f(rng) -> wav [T] float @16 kHz`` (it gets the example's generator, so runs are
        reproducible), or an iterable of such waveforms (cycled). Noise is randomly
        cropped, or repeated, to the example length. Required when ``noise_prob > 0``.
        A source may also give ``(wav, snr_db)``: its own SNR then replaces the draw from
        ``noise_snr_range`` (:class:`avse.data.noise.MusanNoise` does, per category).
    normalise : str or None
        ``"peak"``: mixture, target and interference divided by one common peak, so
        ``mixture == target + interference`` stays exact; ``"peak_separate"``: each by its
        own peak (as in SEANet's loader; the identity then no longer holds); None: no
        normalisation.
    av_shift_frames : int
        training augmentation against audio/video desynchronisation: the target's visual
        stream is moved by a whole number of video frames drawn uniformly from
        ``[-av_shift_frames, +av_shift_frames]`` (the example's generator), positive = video
        lags audio (:func:`shift_visual`, 1 frame = 640 samples = 40 ms). Training
        examples only (dynamic mixing and list mode ``stage="train"``); validation and test
        stay synchronised. 0 (default): off, and no random number is drawn.
    av_shift_prob : float
        probability that a training example gets a shift drawn at all (else offset 0).
    conditions : dict, optional
        ``{condition name: probability}`` over the named conditions of
        :mod:`avse.data.conditions` (``enhancement``, ``2mix``, ``3mix``, ``2mix_noise``,
        ``hard``): each dynamic-mixing example draws one, which fixes its number of
        interferers and whether it gets noise (``noise_source`` then always/never applies),
        replacing ``num_interferers_probs`` and ``noise_prob``. Conditions with noise need a
        ``noise_source``. List mode takes the interferers and noise of each row instead.
        ``absent`` and ``sparse`` (a silent target, lips at rest) give silent-target
        training examples, e.g. ``{"2mix": 0.7, "absent": 0.15, "sparse": 0.15}``.
    sparse_fraction : (float, float)
        ``sparse`` examples: the target speaks in one span of this fraction of the example
        (uniform; its start uniform too), silent elsewhere.

    Example
    -------
    >>> cfg = MixtureConfig(crop_seconds=2.0, num_interferers_probs={1: 1, 2: 1})
    >>> cfg.crop_frames, cfg.sample_num_interferers(np.random.default_rng(0)) in (1, 2)
    (50, True)
    """

    crop_seconds: Optional[float] = 4.0
    num_interferers_probs: dict = field(default_factory=lambda: {1: 1.0, 2: 0.0})
    snr_range: tuple = (-10.0, 10.0)
    noise_prob: float = 0.0
    noise_snr_range: tuple = (0.0, 15.0)
    noise_source: Optional[NoiseSource] = None
    normalise: Optional[str] = "peak"
    av_shift_frames: int = 0
    av_shift_prob: float = 1.0
    conditions: Optional[dict] = None
    sparse_fraction: tuple = (0.2, 0.8)

    def __post_init__(self):
        if self.crop_seconds is not None and self.crop_frames < 1:
            raise ValueError(f"crop_seconds={self.crop_seconds} is shorter than one frame")
        probs = {int(k): float(v) for k, v in dict(self.num_interferers_probs).items()}
        if not probs or min(probs) < 0 or min(probs.values()) < 0 or sum(probs.values()) <= 0:
            raise ValueError("num_interferers_probs must map numbers >= 0 to probabilities >= 0 "
                             f"with a positive sum, got {self.num_interferers_probs}")
        if probs.get(0, 0.0) > 0 and self.noise_source is None:
            raise ValueError(f"num_interferers_probs {self.num_interferers_probs} allows 0 "
                             "interferers (target + noise), which needs noise: set noise_source "
                             "(e.g. avse.data.noise.MusanNoise) or drop the 0 entry")
        self.num_interferers_probs = probs
        if self.snr_range[0] > self.snr_range[1] or self.noise_snr_range[0] > self.noise_snr_range[1]:
            raise ValueError("SNR ranges must be (low, high) with low <= high")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")
        if self.noise_prob > 0 and self.noise_source is None:
            raise ValueError("noise_prob > 0 needs a noise_source (callable or iterable of wavs)")
        if self.normalise not in ("peak", "peak_separate", None):
            raise ValueError(f"normalise must be 'peak', 'peak_separate' or None, "
                             f"got {self.normalise!r}")
        if int(self.av_shift_frames) != self.av_shift_frames or self.av_shift_frames < 0:
            raise ValueError(f"av_shift_frames must be a whole number of video frames >= 0, "
                             f"got {self.av_shift_frames!r}")
        self.av_shift_frames = int(self.av_shift_frames)
        if not 0.0 <= self.av_shift_prob <= 1.0:
            raise ValueError(f"av_shift_prob must be in [0, 1], got {self.av_shift_prob}")
        if self.conditions is not None:
            conds = {str(k): float(v) for k, v in dict(self.conditions).items()}
            if not conds or min(conds.values()) < 0 or sum(conds.values()) <= 0:
                raise ValueError("conditions must map condition names to probabilities >= 0 "
                                 f"with a positive sum, got {self.conditions}")
            for name, prob in conds.items():
                if get_condition(name).noise and prob > 0 and self.noise_source is None:
                    raise ValueError(f"condition {name!r} adds noise: set noise_source "
                                     "(e.g. avse.data.noise.MusanNoise) or give it probability 0")
            self.conditions = conds
        lo, hi = (float(x) for x in self.sparse_fraction)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"sparse_fraction must be (low, high) with 0 < low <= high <= 1, "
                             f"got {self.sparse_fraction}")
        self.sparse_fraction = (lo, hi)
        self._noise_iter = None

    @property
    def crop_frames(self) -> Optional[int]:
        """``crop_seconds`` in whole video frames at 25 fps (None for full length)."""
        return None if self.crop_seconds is None else int(round(self.crop_seconds * FPS))

    @property
    def max_interferers(self) -> int:
        """The largest number of interferers with a non-zero probability."""
        if self.conditions is not None:
            return max(get_condition(c).num_interferers for c, p in self.conditions.items() if p > 0)
        return max(k for k, p in self.num_interferers_probs.items() if p > 0)

    @property
    def silent_targets(self) -> bool:
        """Whether some examples have a silent target (``absent`` / ``sparse`` drawn)."""
        return self.conditions is not None and any(
            get_condition(c).silent for c, p in self.conditions.items() if p > 0)

    def sample_condition(self, rng: np.random.Generator):
        """``(number of interferers, noise, target)`` for one dynamic-mixing example;
        ``target`` is the drawn condition's (``"present"``, ``"absent"``, ``"sparse"``), and
        ``"present"`` without ``conditions`` (see :meth:`sample_kind`)."""
        if self.conditions is None:
            return self.sample_num_interferers(rng), None, "present"
        names = list(self.conditions)
        p = np.array([self.conditions[c] for c in names], np.float64)
        cond = get_condition(names[int(rng.choice(len(names), p=p / p.sum()))])
        return cond.num_interferers, cond.noise, cond.target

    def sample_activity(self, target: str, n_frames: int, rng: np.random.Generator):
        """The target's active span in an example of ``n_frames`` frames (``sparse_fraction``
        of them for ``sparse``): :func:`avse.data.activity.draw_activity`."""
        from avse.data.activity import draw_activity

        return draw_activity(target, n_frames, self.sparse_fraction, rng)

    def sample_kind(self, rng: np.random.Generator):
        """``(number of interferers, noise)`` for one dynamic-mixing example: from a drawn
        condition (``noise`` True/False) when ``conditions`` is set, else
        ``(sample_num_interferers(rng), None)`` (``None``: ``noise_prob`` decides).

        Example
        -------
        >>> cfg = MixtureConfig(conditions={"3mix": 1.0})
        >>> cfg.sample_kind(np.random.default_rng(0)), cfg.max_interferers
        ((2, False), 2)
        """
        return self.sample_condition(rng)[:2]

    def sample_num_interferers(self, rng: np.random.Generator) -> int:
        """Draw how many interfering speakers an example gets."""
        ks = sorted(self.num_interferers_probs)
        p = np.array([self.num_interferers_probs[k] for k in ks], np.float64)
        return int(ks[int(rng.choice(len(ks), p=p / p.sum()))])

    def sample_snrs(self, n: int, rng: np.random.Generator) -> list:
        """``n`` interferer SNRs in dB, uniform in ``snr_range``."""
        return [float(rng.uniform(*self.snr_range)) for _ in range(n)]

    def sample_noise(self, n_samples: int, rng: np.random.Generator, force: bool = False):
        """``(noise [n_samples] or None, noise SNR in dB or None)`` for one example.

        ``force``: noise whatever ``noise_prob`` (examples without interferers), when
        there is a ``noise_source``.
        """
        if self.noise_source is None or (
                not force and (self.noise_prob <= 0 or rng.random() >= self.noise_prob)):
            return None, None
        if callable(self.noise_source):
            wav = self.noise_source(rng)
        else:
            if self._noise_iter is None:
                self._noise_iter = iter(self.noise_source)
            try:
                wav = next(self._noise_iter)
            except StopIteration:  # cycle
                self._noise_iter = iter(self.noise_source)
                wav = next(self._noise_iter)
        snr = None
        if isinstance(wav, tuple):  # a source with its own SNR (e.g. per noise category)
            wav, snr = wav
        wav = fit_length(np.asarray(wav, np.float32), n_samples, rng, mode="wrap")
        return wav, float(rng.uniform(*self.noise_snr_range)) if snr is None else float(snr)

    def sample_av_shift(self, rng: np.random.Generator) -> int:
        """A visual offset in video frames for one training example (see ``av_shift_frames``).

        Draws nothing when the augmentation is off, so other draws stay as they were.

        Example
        -------
        >>> cfg = MixtureConfig(av_shift_frames=2)
        >>> rng = np.random.default_rng(0)
        >>> sorted({cfg.sample_av_shift(rng) for _ in range(200)})
        [-2, -1, 0, 1, 2]
        """
        if self.av_shift_frames <= 0 or self.av_shift_prob <= 0:
            return 0
        if self.av_shift_prob < 1.0 and rng.random() >= self.av_shift_prob:
            return 0
        return int(rng.integers(-self.av_shift_frames, self.av_shift_frames + 1))

    def normalise_signals(self, mixture, target, interference):
        """Apply ``normalise`` to one example; returns the three signals as float32."""
        if self.normalise is None:
            return tuple(np.asarray(x, np.float32) for x in (mixture, target, interference))
        return peak_normalise(mixture, target, interference, joint=self.normalise == "peak")

    def __getstate__(self):  # iterators do not pickle; each worker restarts the noise cycle
        state = dict(self.__dict__)
        state["_noise_iter"] = None
        return state
