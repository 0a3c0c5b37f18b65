"""The target's activity: lips at rest, silent spans, and silencing a target (pure numpy).

Conditions ``absent`` and ``sparse`` (:mod:`avse.data.conditions`) need a target that is
silent while its face is seen at rest. The face at rest is the target's own: the lip frames
of the silent stretches of its utterance (:func:`rest_frames`), found from the audio energy
per video frame, away from speech by a margin (lips close after a word and open before the
next). On the synthetic corpus those stretches are the generator's closed neutral mouth
(pauses between words and the silence at both ends of every clip); on real corpora they
are the speaker's own pauses. Corpora with word timings could give them too; energy works
for every corpus without them.

:func:`silence_target` then silences the target outside its active span (short ramps at the
span's edges), replaces the lips there with the lips at rest (played forwards and backwards,
so a still face keeps its small natural motion without a jump), and returns the per-frame
activity: 1 where the target speaks, 0 where it is silent.

Example
-------
>>> rng = np.random.default_rng(0)
>>> wav = np.concatenate([np.zeros(640 * 5), rng.standard_normal(640 * 10), np.zeros(640 * 5)])
>>> lips = np.arange(20)[:, None] * np.ones((1, 3), np.uint8)      # frame k shows value k
>>> rest = rest_frames(wav, lips, margin=1)
>>> rest[:, 0].tolist()                                              # frames 0-3 and 16-19
[0, 1, 2, 3]
>>> target, mixture, visual, act = silence_target(wav.astype(np.float32), 0.1 * wav[::-1],
...                                               lips, rest, 8, 12)
>>> act.tolist()[6:14], float(np.abs(target[:640 * 8]).max())
([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0], 0.0)
>>> visual[8:12, 0].tolist(), sorted(set(visual[:8, 0].tolist()))
([8, 9, 10, 11], [0, 1, 2, 3])
"""
from __future__ import annotations

import numpy as np

from avse.data.align import SAMPLES_PER_FRAME

SILENT_DB = -35.0
"""A video frame is silent when its audio power is this far below the utterance's loud frames
(the 95th percentile of frame powers)."""

RAMP_SAMPLES = 80
"""Length of the fade at the edges of a target's active span (5 ms at 16 kHz)."""


def frame_power(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """Mean power of ``wav`` over each video frame (640 samples), ``[n_frames]`` float64."""
    wav = np.asarray(wav, np.float64)[:n_frames * SAMPLES_PER_FRAME]
    wav = np.pad(wav, (0, n_frames * SAMPLES_PER_FRAME - len(wav)))
    return np.mean(wav.reshape(n_frames, SAMPLES_PER_FRAME) ** 2, axis=1)


def silent_frames(wav: np.ndarray, n_frames: int, silent_db: float = SILENT_DB,
                  margin: int = 2) -> np.ndarray:
    """Boolean ``[n_frames]``: frames that are silent and at least ``margin`` frames away from
    a non-silent one (the lips are at rest there, not closing or opening).

    Example
    -------
    >>> w = np.r_[np.zeros(640 * 4), np.ones(640 * 2), np.zeros(640 * 4)]
    >>> silent_frames(w, 10, margin=1).astype(int).tolist()
    [1, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    """
    power = frame_power(wav, n_frames)
    loud = float(np.percentile(power, 95)) if n_frames else 0.0
    if loud <= 0:  # the whole utterance is silent: every frame is at rest
        return np.ones(n_frames, bool)
    silent = power <= loud * 10.0 ** (silent_db / 10.0)
    if margin > 0:
        speech = np.flatnonzero(~silent)
        near = np.zeros(n_frames, bool)
        for d in range(-margin, margin + 1):
            idx = np.clip(speech + d, 0, n_frames - 1)
            near[idx] = True
        silent &= ~near
    return silent


def rest_frames(wav: np.ndarray, visual: np.ndarray, max_frames: int = 25,
                silent_db: float = SILENT_DB, margin: int = 2) -> np.ndarray:
    """Lip frames at rest ``[k, ...]`` (``1 <= k <= max_frames``) of one utterance.

    The longest run of :func:`silent_frames` (cut to ``max_frames``); with none, the margin is
    relaxed to 1 and 0; an utterance without any silent frame gives its quietest frame
    (smoothed over 5 frames), the best guess at a closed mouth.

    Arguments
    ---------
    wav : np.ndarray
        ``[640 Tv]`` the utterance's audio (the target alone, not a mixture).
    visual : np.ndarray
        ``[Tv, ...]`` its lips (ROI frames or embeddings).
    """
    visual = np.asarray(visual)
    n = len(visual)
    if n == 0:
        raise ValueError("rest_frames: empty visual stream")
    for m in sorted({margin, min(margin, 1), 0}, reverse=True):
        silent = silent_frames(wav, n, silent_db, m)
        if silent.any():
            start, length = _longest_run(silent)
            return visual[start:start + min(length, max_frames)]
    power = np.convolve(np.pad(frame_power(wav, n), 2, mode="edge"), np.ones(5) / 5.0, "valid")
    k = int(np.argmin(power))
    return visual[k:k + 1]


def _longest_run(mask: np.ndarray):
    """``(start, length)`` of the longest run of True in ``mask`` (which has one)."""
    padded = np.r_[False, mask, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, stops = edges[::2], edges[1::2]
    i = int(np.argmax(stops - starts))
    return int(starts[i]), int(stops[i] - starts[i])


def rest_sequence(rest: np.ndarray, n: int) -> np.ndarray:
    """``n`` frames of lips at rest: ``rest`` played forwards and backwards (no jump)."""
    rest = np.asarray(rest)
    if len(rest) == 1:
        return np.repeat(rest, n, axis=0)
    cycle = np.r_[np.arange(len(rest)), np.arange(len(rest) - 2, 0, -1)]
    return rest[cycle[np.arange(n) % len(cycle)]]


def draw_activity(target: str, n_frames: int, fraction=(0.2, 0.8), rng=None):
    """A target's active span for an example of ``n_frames`` frames: None (``"present"``: it
    speaks throughout, nothing drawn), ``("absent", 0, 0)``, or ``("sparse", start, stop)``
    covering a fraction uniform in ``fraction`` of the frames (at least one), start uniform.

    Example
    -------
    >>> kind, a, b = draw_activity("sparse", 50, (0.5, 0.5), np.random.default_rng(0))
    >>> kind, b - a, 0 <= a <= 25
    ('sparse', 25, True)
    """
    if target == "present":
        return None
    if target == "absent":
        return ("absent", 0, 0)
    if target != "sparse":
        raise ValueError(f"unknown target kind {target!r}; known: present, absent, sparse")
    length = max(1, min(n_frames, int(round(rng.uniform(*fraction) * n_frames))))
    start = int(rng.integers(0, n_frames - length + 1))
    return ("sparse", start, start + length)


def span_mask(n_frames: int, start: int, stop: int) -> np.ndarray:
    """Per-frame activity ``[n_frames]`` float32: 1 on ``[start, stop)``, 0 elsewhere."""
    act = np.zeros(n_frames, np.float32)
    act[max(0, int(start)):max(0, min(int(stop), n_frames))] = 1.0
    return act


def sample_gain(activity: np.ndarray, ramp: int = RAMP_SAMPLES) -> np.ndarray:
    """Per-sample gain ``[640 n]`` of a per-frame activity: 1 inside active spans, 0 outside,
    with raised-cosine fades of ``ramp`` samples inside each span's edges."""
    gain = np.repeat(np.asarray(activity, np.float32), SAMPLES_PER_FRAME)
    if ramp <= 0 or not gain.any() or gain.all():
        return gain
    edges = np.flatnonzero(np.diff(np.r_[0.0, gain, 0.0]))
    for a, b in zip(edges[::2], edges[1::2]):
        r = min(ramp, (b - a) // 2)
        if r < 1:
            continue
        fade = (0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r)).astype(np.float32)
        if a > 0:
            gain[a:a + r] = fade
        if b < len(gain):
            gain[b - r:b] = fade[::-1]
    return gain


def silence_target(target, interference, visual, rest, start: int, stop: int):
    """Silence ``target`` outside frames ``[start, stop)`` (absent: ``start == stop``).

    Arguments
    ---------
    target, interference : np.ndarray
        ``[640 n]`` the target mixed at its full level and everything else.
    visual : np.ndarray
        ``[n, ...]`` the target's lips.
    rest : np.ndarray
        ``[k, ...]`` its lips at rest (:func:`rest_frames`).

    Returns
    -------
    ``(target, mixture, visual, activity)``: the silenced target, ``target + interference``,
    the lips with the rest frames outside the span, the per-frame activity ``[n]`` float32.
    """
    n = len(visual)
    activity = span_mask(n, start, stop)
    gain = sample_gain(activity)[:len(target)]
    gain = np.pad(gain, (0, len(target) - len(gain)))
    target = (np.asarray(target, np.float32) * gain).astype(np.float32)
    mixture = (target + np.asarray(interference, np.float32)).astype(np.float32)
    visual = np.array(visual, copy=True)
    idle = activity == 0
    if idle.any():
        visual[idle] = rest_sequence(rest, n)[idle].astype(visual.dtype)
    return target, mixture, visual, activity
