"""Target-activity gating: per-frame probabilities -> speaking decision -> per-sample gain.

A model with an activity head (``AVSEModel(..., activity_head={...})``) gives one logit per
video frame ``[Tv]`` @25 fps: the probability (sigmoid) that the target speaks in that frame.
Frame ``k`` spans samples ``[640 k, 640 k + 640)`` @16 kHz. Here, in pure numpy:

1. :meth:`Gate.speaking`: the probabilities median-filtered over ``median`` frames (a spike or
   a dip shorter than half the window is removed) and thresholded (``threshold``, default
   0.5): the frames where the target speaks. Speaking time and spans are counted on this.
2. :meth:`Gate.passed`: the speaking frames widened by ``before`` frames ahead of each onset
   and ``after`` frames past each offset (hangover), so onsets, trailing sounds and short
   pauses (up to ``before + after`` frames) are not chopped: the frames the gate lets through.
3. :meth:`Gate.gain`: 0 dB on passed frames, ``-attenuation_db`` (default 30 dB) elsewhere,
   at sample level with ramps of ``ramp_ms`` (default 20 ms, linear in dB) that lie on the
   attenuated side, so samples of passed frames are multiplied by exactly 1.

:func:`speaking_summary` turns decisions into speaking time (speaking frames / 25 s), its
fraction and the spans in seconds.

Example
-------
>>> gate = Gate(median=3, before=1, after=2)
>>> p = np.array([.1, .1, .1, .9, .9, .2, .9, .9, .1, .1, .1, .1, .1, .1])
>>> gate.speaking(p).astype(int)
array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
>>> gate.passed(p).astype(int)
array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
>>> g = gate.gain(p)
>>> g.shape, float(g[2 * 640:10 * 640].min()), round(float(g[:640].max()), 5)
((8960,), 1.0, 0.03162)
>>> speaking_summary(gate.speaking(p))
{'seconds': 0.2, 'on_screen_seconds': 0.56, 'fraction': 0.3571, 'spans': [[0.12, 0.32]]}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from avse.data.align import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

NO_HEAD = ("has no activity head, so --gate cannot tell when the target is silent: train it "
           "with an `activity_head:` entry in its model yaml (e.g. egs/synthetic/hparams/"
           "demo.yaml) or run without --gate")


def sigmoid(logits) -> np.ndarray:
    """Logits -> probabilities (float32), overflow-free.

    >>> sigmoid([-1000.0, 0.0, 1000.0])
    array([0. , 0.5, 1. ], dtype=float32)
    """
    x = np.asarray(logits, dtype=np.float64)
    out = np.exp(-np.logaddexp(0.0, -x))
    return out.astype(np.float32)


def median_filter(x, width: int) -> np.ndarray:
    """Running median of ``x [T]`` over ``width`` frames (odd), edges padded with the edge value.

    >>> median_filter([0, 0, 1, 0, 0, 1, 1, 1, 0], 3)
    array([0., 0., 0., 0., 0., 1., 1., 1., 0.])
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if width < 1 or width % 2 == 0:
        raise ValueError(f"the median filter's width must be odd and positive, got {width}")
    if width == 1 or len(x) == 0:
        return x.copy()
    half = width // 2
    padded = np.pad(x, half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=-1)


def widen(active, before: int, after: int) -> np.ndarray:
    """``active [T]`` (bool) with each active run extended by ``before`` frames ahead and
    ``after`` frames behind (clipped to the array), so gaps up to ``before + after`` close.

    >>> widen(np.array([0, 0, 0, 1, 0, 0, 0, 0, 1, 0], bool), 1, 2).astype(int)
    array([0, 0, 1, 1, 1, 1, 0, 1, 1, 1])
    """
    active = np.asarray(active, dtype=bool).reshape(-1)
    if before < 0 or after < 0:
        raise ValueError(f"before/after must be >= 0, got {before}, {after}")
    out = active.copy()
    n = len(active)
    for shift in range(1, min(after, n - 1) + 1):  # passed: one of the `after` before speaks
        out[shift:] |= active[: n - shift]
    for shift in range(1, min(before, n - 1) + 1):
        out[: n - shift] |= active[shift:]
    return out


def sample_gain(frame_db, n_samples: int | None = None, ramp_samples: int = 320) -> np.ndarray:
    """Per-frame gains in dB ``[K]`` (0 = untouched) -> per-sample linear gains ``[n_samples]``.

    Frame ``k`` covers samples ``[640 k, 640 k + 640)``. At a change of level the gain ramps,
    linearly in dB over ``ramp_samples`` samples (at most one frame), inside the frame with the
    lower gain: the higher side keeps its exact gain. ``n_samples`` (default ``640 K``) trims or
    extends (last frame's gain) the result.

    >>> g = sample_gain([0.0, -20.0], ramp_samples=4)
    >>> [round(float(v), 3) for v in g[636:646]]
    [1.0, 1.0, 1.0, 1.0, 0.562, 0.316, 0.178, 0.1, 0.1, 0.1]
    """
    db = np.asarray(frame_db, dtype=np.float64).reshape(-1)
    spf = SAMPLES_PER_FRAME
    if n_samples is None:
        n_samples = len(db) * spf
    if len(db) == 0:
        return np.ones(n_samples, np.float32)
    if not 0 < ramp_samples <= spf:
        raise ValueError(f"ramp_samples must be in [1, {spf}], got {ramp_samples}")
    span = float(db.max() - db.min())
    out = np.broadcast_to(db[:, None], (len(db), spf))
    if span > 0:  # a neighbour's level, falling by `span` dB per ramp length, from its edge
        slope = span / ramp_samples
        i = np.arange(spf, dtype=np.float64)
        prev = np.r_[db[:1], db[:-1]][:, None] - slope * (i + 1)
        nxt = np.r_[db[1:], db[-1:]][:, None] - slope * (spf - i)
        out = np.maximum(out, np.maximum(prev, nxt))
    out = out.reshape(-1)
    if n_samples > len(out):
        out = np.r_[out, np.full(n_samples - len(out), db[-1])]
    return (10.0 ** (out[:n_samples] / 20.0)).astype(np.float32)


@dataclass
class Gate:
    """Gating options; see the module docstring.

    Arguments
    ---------
    threshold : float
        probability above which (after the median filter) a frame counts as speaking.
    attenuation_db : float
        how far frames judged silent are turned down (>= 0, finite).
    median : int
        median filter width in frames (odd; 5 = 200 ms).
    before, after : int
        frames let through ahead of an onset (2 = 80 ms) and after an offset (5 = 200 ms).
    ramp_ms : float
        length of the gain ramps (at most one frame, 40 ms).
    """

    threshold: float = 0.5
    attenuation_db: float = 30.0
    median: int = 5
    before: int = 2
    after: int = 5
    ramp_ms: float = 20.0

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"gate threshold must be between 0 and 1, got {self.threshold}")
        if not (np.isfinite(self.attenuation_db) and self.attenuation_db >= 0):
            raise ValueError(f"gate attenuation must be a finite number of dB >= 0, got "
                             f"{self.attenuation_db}")
        median_filter([], self.median)  # odd, positive
        widen([], self.before, self.after)
        sample_gain([0.0], ramp_samples=self.ramp_samples)

    @property
    def ramp_samples(self) -> int:
        return max(int(round(self.ramp_ms * SAMPLE_RATE / 1000)), 1)

    def options(self) -> dict:
        return asdict(self)

    def speaking(self, prob) -> np.ndarray:
        """``prob [Tv]`` -> bool ``[Tv]``: the frames where the target speaks."""
        return median_filter(prob, self.median) > self.threshold

    def passed(self, prob) -> np.ndarray:
        """``prob [Tv]`` -> bool ``[Tv]``: the frames the gate lets through."""
        return widen(self.speaking(prob), self.before, self.after)

    def gain(self, prob, n_samples: int | None = None) -> np.ndarray:
        """``prob [Tv]`` -> linear gain ``[n_samples]`` (default ``640 Tv``) float32; ``prob
        [B, Tv]`` -> ``[B, n_samples]``, each row on its own."""
        if np.ndim(prob) == 2:
            return np.stack([self.gain(p, n_samples) for p in prob]).reshape(len(prob), -1)
        db = np.where(self.passed(prob), 0.0, -float(self.attenuation_db))
        return sample_gain(db, n_samples, self.ramp_samples)

    def apply(self, estimate, prob) -> np.ndarray:
        """``estimate [T]`` times :meth:`gain` (float32)."""
        estimate = np.asarray(estimate, dtype=np.float32)
        return estimate * self.gain(prob, len(estimate))


def spans(active, first_frame: int = 0) -> list:
    """Runs of True in ``active [T]`` as ``[[start_s, end_s], ...]``, frame ``i`` at time
    ``(first_frame + i) / 25`` s.

    >>> spans(np.array([0, 1, 1, 0, 1], bool), first_frame=25)
    [[1.04, 1.12], [1.16, 1.2]]
    """
    a = np.r_[False, np.asarray(active, dtype=bool).reshape(-1), False].astype(np.int8)
    edges = np.flatnonzero(np.diff(a))
    return [[round(int(first_frame + s) / FPS, 3), round(int(first_frame + e) / FPS, 3)]
            for s, e in zip(edges[::2], edges[1::2])]


def speaking_summary(active, first_frame: int = 0) -> dict:
    """Speaking time of decisions ``active [T]`` (or a list of ``(first_frame, active)`` pieces,
    e.g. a face track's segments): ``{"seconds", "on_screen_seconds", "fraction", "spans"}``:
    speaking time, the time of the frames given (a track's on-screen time), their ratio, and
    the spans in seconds as :func:`spans` gives them.

    >>> speaking_summary([(0, np.array([1, 1, 0, 0], bool)), (10, np.array([0, 1], bool))])
    {'seconds': 0.12, 'on_screen_seconds': 0.24, 'fraction': 0.5, 'spans': [[0.0, 0.08], [0.44, 0.48]]}
    """
    pieces = active if isinstance(active, list) else [(first_frame, active)]
    total = on = 0
    out = []
    for first, act in pieces:
        act = np.asarray(act, dtype=bool).reshape(-1)
        total, on = total + len(act), on + int(act.sum())
        out += spans(act, first)
    return {"seconds": round(on / FPS, 3), "on_screen_seconds": round(total / FPS, 3),
            "fraction": round(on / max(total, 1), 4), "spans": out}


def format_speaking(summary: dict | None, max_spans: int = 8) -> str:
    """One line for a person: ``speaking 1.20 s of 4.00 s (30 %) in 2 span(s): 0.40-1.20, ...``.

    >>> format_speaking(speaking_summary(np.array([1, 1, 0, 0, 0, 1], bool)))
    'speaking 0.12 s of 0.24 s (50 %) in 2 span(s): 0.00-0.08, 0.20-0.24'
    >>> format_speaking(None)
    'speaking time: not estimated (the model has no activity head)'
    """
    if summary is None:
        return "speaking time: not estimated (the model has no activity head)"
    sec, frac, sp = summary["seconds"], summary["fraction"], summary["spans"]
    head = f"speaking {sec:.2f} s of {summary['on_screen_seconds']:.2f} s ({100 * frac:.0f} %)"
    if not sp:
        return head
    shown = ", ".join(f"{a:.2f}-{b:.2f}" for a, b in sp[:max_spans])
    more = f", ... ({len(sp) - max_spans} more)" if len(sp) > max_spans else ""
    return f"{head} in {len(sp)} span(s): {shown}{more}"


class GatedModel:
    """``model`` (an AVSEModel with an activity head) whose estimate is gated by its own
    activity estimate, as ``avse-extract --gate`` does: for evaluating gating on lists
    (``python -m avse.evaluation.conditions evaluate --gate``). Called like the model,
    ``GatedModel(model)(mixture [B, T], visual).estimate``; each example is gated over the
    whole batch length (evaluate with ``batch_size=1`` for exact lengths).
    """

    def __init__(self, model, gate: Gate | None = None, where: str = "the model"):
        if not getattr(model, "has_activity_head", False):
            raise ValueError(f"{where} {NO_HEAD}")
        self.model, self.gate = model, gate or Gate()

    def to(self, device):
        self.model = self.model.to(device)
        return self

    def eval(self):
        self.model.eval()
        return self

    def __call__(self, mixture, visual, **kwargs):
        import dataclasses

        import torch

        out = self.model(mixture, visual, **kwargs)
        prob = sigmoid(out.aux["activity"].detach().float().cpu().numpy())
        gain = torch.from_numpy(self.gate.gain(prob, out.estimate.shape[-1]))
        return dataclasses.replace(out, estimate=out.estimate * gain.to(out.estimate))
