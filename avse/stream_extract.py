"""Streaming extraction: a causal model fed block by block, as live audio and lips arrive.

:meth:`AVSEExtractor.stream() <avse.inference.AVSEExtractor.stream>` gives a
:class:`StreamSession` around :class:`avse.streaming.StreamingModel` (the model's state kept
between blocks)::

    session = AVSEExtractor.from_hparams("exp/demo_causal/train").stream()
    for audio, frames in source:        # e.g. 160 samples (10 ms) and the video frames that
        out = session.push(audio, frames)   # started in them (0 or 1 at 25 fps)
        play(out)                       # the samples that are final, in order
    play(session.flush())               # the rest, at the end of the stream
    print(session.stats())              # per-block compute time, real-time factor, latency

Audio is 16 kHz float32 ``[n]`` (any n >= 1); video frames are mouth crops ``[m, 88, 88]``
uint8 (full-range gray, as :meth:`AVSEExtractor.load_visual` gives them) or lip embeddings
``[m, 512]`` for embedding models. A frame is held until the next arrives. The output lags
the input by the block plus ``session.delay_samples`` (K - S of the conv encoder: 1 ms for the
demo's 32-sample windows); the model's algorithmic latency is ``model.latency_ms()``.

Gain: a causal model cannot divide the mixture by its whole-utterance peak. A model trained
with ``mixture_norm: none`` (``normalise: null`` in its mixture configs, as the ``*_causal``
egs) gets the mixture as it is; one trained with peak normalisation gets a fixed gain, the
expected peak (``peak``, default 1.0: full scale), and a warning.

:func:`run_blocks` drives a session over whole arrays (what ``avse-extract --stream`` and
``tools/stream_demo.py`` do, the latter paced in real time with :func:`replay`): the output
equals the offline output of the same causal model with the same gain.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from avse.data.align import FPS, SAMPLE_RATE

logger = logging.getLogger(__name__)

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


def block_stats(seconds, block: int, total_samples: int) -> dict:
    """Per-block compute times (s) -> ``{blocks, mean_ms, p95_ms, max_ms, rtf}``; the
    real-time factor is the total compute over the audio's duration.

    >>> s = block_stats([0.001, 0.002, 0.003], 160, 480)
    >>> s["blocks"], round(s["max_ms"], 3), round(s["rtf"], 3)
    (3, 3.0, 0.2)
    """
    t = np.asarray(seconds, dtype=np.float64) * 1000.0
    audio_s = max(total_samples, 1) / SAMPLE_RATE
    return {"blocks": int(t.size), "block_ms": 1000.0 * block / SAMPLE_RATE,
            "mean_ms": float(t.mean()) if t.size else 0.0,
            "p95_ms": float(np.percentile(t, 95)) if t.size else 0.0,
            "max_ms": float(t.max()) if t.size else 0.0,
            "rtf": float(t.sum() / 1000.0 / audio_s)}


class StreamSession:
    """One live stream through a causal model (see the module docstring).

    Arguments
    ---------
    extractor : AVSEExtractor
        its model must be causal (``AVSEModel(causal=True)``, e.g. the ``*_causal`` yamls).
    peak : float, optional
        fixed gain for a model trained with peak normalisation (the mixture is divided by it
        and the output multiplied back); default 1.0. Not used with ``mixture_norm: none``.
    """

    def __init__(self, extractor, peak: float | None = None):
        from avse.streaming import StreamingModel

        model = extractor.model
        if not getattr(model, "causal", False):
            raise ValueError("streaming needs a causal model (AVSEModel(causal=True), e.g. "
                             "egs/synthetic/hparams/demo_causal.yaml): this one looks at the "
                             "whole utterance; use offline extraction (without --stream)")
        if extractor.precision != "fp32":
            raise ValueError(f"streaming runs in fp32, not {extractor.precision}")
        norm = extractor.inference["mixture_norm"]
        if norm == "none":
            self.gain = 1.0
        else:
            self.gain = 1.0 if peak is None else max(float(peak), 1e-8)
            logger.warning("the model was trained on peak-normalised mixtures; streaming uses a "
                           "fixed gain (expected peak %.3g) instead of the whole file's peak",
                           self.gain)
        self.visual_input = model.visual_input
        self.device = extractor.device
        self.engine = StreamingModel(model, batch=1)
        self.latency_ms = model.latency_ms()
        self.delay_samples = int(self.engine.delay_samples)
        self.reset()

    def reset(self) -> None:
        """Start a new stream (state, counters and timings cleared)."""
        self.engine.reset()
        self.seconds, self.samples_in, self.samples_out, self.frames_in = [], 0, 0, 0
        self.largest_block = 0

    def _frames(self, frames):
        if frames is None:
            return None
        frames = np.asarray(frames)
        if frames.ndim == (2 if self.visual_input == "emb" else 3) - 1:
            frames = frames[None]  # one frame
        want = "[m, 512] lip embeddings" if self.visual_input == "emb" else "[m, H, W] mouth crops"
        if frames.ndim != (2 if self.visual_input == "emb" else 3):
            raise ValueError(f"video frames must be {want}, got shape {list(frames.shape)}")
        if len(frames) == 0:
            return None
        dtype = torch.float32 if self.visual_input == "emb" else None
        t = torch.as_tensor(np.ascontiguousarray(frames), device=self.device)
        if dtype is not None:
            t = t.to(dtype)
        self.frames_in += len(frames)
        return t[None]

    def push(self, audio, frames=None) -> np.ndarray:
        """Audio ``[n]`` (float, 16 kHz) and the new video frames (or None) -> the output
        samples that are final now (float32 ``[k]``, possibly empty)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        vis = self._frames(frames)
        start = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(audio / self.gain if self.gain != 1.0 else audio)[None]
            out = self.engine.push(x.to(self.device), vis)
            out = (out[0].float() * self.gain).cpu().numpy() if out.numel() else \
                np.zeros(0, np.float32)
        self.seconds.append(time.perf_counter() - start)
        self.samples_in += audio.size
        self.samples_out += out.size
        self.largest_block = max(self.largest_block, audio.size)
        return out

    def flush(self) -> np.ndarray:
        """The remaining output at the end of the stream (its total length is the input's)."""
        with torch.inference_mode():
            out = self.engine.flush()
        out = (out[0].float() * self.gain).cpu().numpy() if out.numel() else np.zeros(0, np.float32)
        self.samples_out += out.size
        return out

    def stats(self) -> dict:
        """Per-block compute (mean, p95, max ms), real-time factor and the latencies (ms):
        ``model_latency_ms`` (the model's look-ahead and block) and ``stream_latency_ms``
        (the largest block pushed plus the output delay), compute time not included."""
        s = block_stats(self.seconds, self.largest_block, self.samples_in)
        s["model_latency_ms"] = self.latency_ms
        s["stream_latency_ms"] = 1000.0 * (self.largest_block + self.delay_samples) / SAMPLE_RATE
        return s


def frames_for_block(start: int, stop: int, num_frames: int) -> slice:
    """The video frames that start in samples ``[start, stop)`` (frame v starts at 640 v).

    >>> frames_for_block(0, 160, 10), frames_for_block(480, 800, 10)
    (slice(0, 1, None), slice(1, 2, None))
    """
    first = -(-start // SAMPLES_PER_FRAME)
    last = -(-stop // SAMPLES_PER_FRAME)
    return slice(min(first, num_frames), min(last, num_frames))


def run_blocks(session: StreamSession, mixture: np.ndarray, visual: np.ndarray,
               block: int = 160, pace=None) -> np.ndarray:
    """Feed ``mixture [T]`` in blocks of ``block`` samples with the video frames ``visual
    [Tv, ...]`` that start in each block; returns the whole output ``[T]``.

    ``pace(b)`` (optional) is called before block b is pushed (:func:`replay` sleeps there
    until the block would have been captured) and ``pace.emitted(b, n)`` after, when given.
    """
    if block < 1:
        raise ValueError(f"block must be at least 1 sample, got {block}")
    session.reset()
    outs = []
    for b, start in enumerate(range(0, len(mixture), block)):
        stop = min(start + block, len(mixture))
        if pace is not None:
            pace(b)
        out = session.push(mixture[start:stop], visual[frames_for_block(start, stop, len(visual))])
        if pace is not None and hasattr(pace, "emitted"):
            pace.emitted(b, out.size)
        outs.append(out)
    outs.append(session.flush())
    return np.concatenate(outs) if outs else np.zeros(0, np.float32)


class RealTimePace:
    """Pacing of :func:`run_blocks` as a live source: block b is pushed when its last sample
    would have been captured (``t0 + (b + 1) block / 16000``), and each output sample's
    latency is measured: the wall time it was returned minus the time its input sample was
    captured (so it includes the algorithmic delay, waiting for the block, and compute)."""

    def __init__(self, block: int, clock=time.perf_counter, sleep=time.sleep):
        self.block, self.clock, self.sleep = block, clock, sleep
        self.t0 = None
        self.out_samples = 0
        self.latencies = []  # seconds, the oldest sample of each non-empty output

    def __call__(self, b: int) -> None:
        if self.t0 is None:
            self.t0 = self.clock()
        due = self.t0 + (b + 1) * self.block / SAMPLE_RATE
        wait = due - self.clock()
        if wait > 0:
            self.sleep(wait)

    def emitted(self, b: int, n: int) -> None:
        if n:
            captured = self.t0 + self.out_samples / SAMPLE_RATE  # oldest sample returned now
            self.latencies.append(self.clock() - captured)
            self.out_samples += n

    def summary(self) -> dict:
        t = np.asarray(self.latencies, dtype=np.float64) * 1000.0
        if not t.size:
            return {"measured_latency_mean_ms": None, "measured_latency_max_ms": None}
        return {"measured_latency_mean_ms": float(t.mean()),
                "measured_latency_p95_ms": float(np.percentile(t, 95)),
                "measured_latency_max_ms": float(t.max())}


def format_stats(stats: dict) -> str:
    """One line for ``avse-extract --stream``."""
    model = stats.get("model_latency_ms")
    return (f"stream: {stats['blocks']} blocks of {stats['block_ms']:.1f} ms; compute per block "
            f"mean {stats['mean_ms']:.2f} ms, p95 {stats['p95_ms']:.2f} ms, max "
            f"{stats['max_ms']:.2f} ms; real-time factor {stats['rtf']:.3f}; latency: model "
            f"{'n/a' if model is None else f'{model:.1f} ms'}, stream "
            f"{stats['stream_latency_ms']:.1f} ms (block + output delay) + compute")

