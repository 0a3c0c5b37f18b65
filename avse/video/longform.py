"""Pass 2 of real-video extraction: chunked extraction, written incrementally.

A track's span is cut into chunks of ``chunk_seconds`` (whole video frames). Each chunk is
extracted with ``overlap_seconds`` of context on both sides (discarded), and consecutive
chunks are cross-faded linearly over ``overlap_seconds / 2`` around their boundary, so a
model whose receptive field is shorter than ``overlap_seconds / 2`` on each side (e.g. the
``tcn`` separator with frame-wise ``cln`` norm) gives what whole-clip extraction gives. The
mixture's normalisation gain is computed once per file (:func:`file_peak`), never per chunk.
The target is identified by its lips in every chunk, so nothing is matched across chunks.

A model with an activity head also gives, per chunk, the probability that the target speaks
in each frame: the speaking decision (:meth:`avse.gating.Gate.speaking`) is taken over the
chunk's whole window, context included, and only its kept part is collected (the context is
discarded like the audio's), so a track's speaking time covers its whole span, each frame
counted once. With the extractor's ``gate`` on, each chunk's estimate is gated over its window
before the cross-fade (the same decision: the kept frames' gains are the ones reported), so
the fade blends two gated estimates.

Memory is bounded by one chunk: the mixture is read from a wav on disk, the face frames
by rows (:class:`avse.video.faces.FrameFile`), and the output wav is written as it is
produced (zeros where the face is not on screen, so every output is exactly as long as the
mixture).
"""
from __future__ import annotations

import os

import numpy as np

from avse.data.align import SAMPLES_PER_FRAME, SAMPLE_RATE
from avse.gating import speaking_summary

BLOCK = SAMPLE_RATE * 10  # samples per read/write block for whole-file passes


def file_peak(wav_path: str) -> float:
    """Peak ``|x|`` of a wav, read in blocks (the once-per-file mixture normalisation)."""
    import soundfile as sf

    peak = 0.0
    with sf.SoundFile(wav_path) as f:
        for block in f.blocks(BLOCK, dtype="float32", always_2d=True):
            if len(block):
                peak = max(peak, float(np.abs(block).max()))
    return peak


def chunk_plan(n_frames: int, chunk_frames: int, context_frames: int) -> list:
    """Chunks over ``n_frames`` video frames: ``[(win_start, win_end, keep_start, keep_end)]``.

    Kept parts tile ``[0, n_frames)``; each window adds up to ``context_frames`` on both
    sides. A last kept part shorter than half a chunk joins the previous one.

    Example
    -------
    >>> chunk_plan(230, 100, 25)
    [(0, 125, 0, 100), (75, 230, 100, 230)]
    >>> chunk_plan(250, 100, 25)
    [(0, 125, 0, 100), (75, 225, 100, 200), (175, 250, 200, 250)]
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk length must be at least one video frame, got {chunk_frames}")
    bounds = list(range(0, n_frames, chunk_frames)) + [n_frames]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < chunk_frames / 2:
        del bounds[-2]
    return [(max(a - context_frames, 0), min(b + context_frames, n_frames), a, b)
            for a, b in zip(bounds[:-1], bounds[1:])]


def extract_span(run, read_audio, read_visual, n_frames: int, write, chunk_frames: int,
                 context_frames: int, progress=None, collect: list | None = None) -> int:
    """Extract one contiguous span of ``n_frames`` video frames chunk by chunk.

    Arguments
    ---------
    run : callable
        ``run(wav [T], visual [Tv, ...]) -> estimate [T]`` (numpy), ``T = Tv * 640``, or
        ``-> (estimate [T], per_frame [Tv, ...])`` (e.g. the target's activity).
    read_audio : callable
        ``read_audio(start, stop) -> [stop - start]`` mixture samples of the span (zero-padded
        past the end of the file).
    read_visual : callable
        ``read_visual(first, last) -> [last - first, ...]`` model visual input of those frames.
    write : callable
        receives consecutive output blocks; ``n_frames * 640`` samples in all.
    collect : list, optional
        receives the kept frames of each chunk's ``per_frame`` (``n_frames`` rows in all).

    Returns
    -------
    the number of samples written.
    """
    spf = SAMPLES_PER_FRAME
    fade = (min(context_frames, chunk_frames) * spf) // 4  # half the cross-fade's length
    pending = None  # the previous chunk's estimate over [boundary - fade, boundary + fade)
    written = 0
    for w0, w1, k0, k1 in chunk_plan(n_frames, chunk_frames, context_frames):
        est = run(read_audio(w0 * spf, w1 * spf), read_visual(w0, w1))
        if isinstance(est, tuple):
            est, per_frame = est
            if collect is not None:
                collect.append(np.asarray(per_frame)[k0 - w0: k1 - w0])
        est = np.asarray(est, np.float32)
        keep0, keep1 = (k0 - w0) * spf, (k1 - w0) * spf
        start = keep0
        if pending is not None:  # cross-fade with the previous chunk around k0
            n = len(pending)
            ramp = (np.arange(n, dtype=np.float32) + 0.5) / n
            write(pending * (1 - ramp) + est[keep0 - n // 2: keep0 - n // 2 + n] * ramp)
            written += n
            start = keep0 - n // 2 + n
        last = k1 == n_frames
        stop = keep1 if last or fade == 0 else keep1 - fade
        write(est[start:stop])
        written += stop - start
        pending = None if last or fade == 0 else est[keep1 - fade: keep1 + fade]
        if progress is not None:
            progress.update(k1 - k0)
    return written


class WavWriter:
    """A 16 kHz mono 16-bit wav written block by block to a hidden temporary name
    (:func:`avse.safe_io.temp_name`) and renamed by :meth:`close`; :meth:`pad_to` writes
    silence."""

    def __init__(self, path: str, sample_rate: int = SAMPLE_RATE):
        import soundfile as sf

        from avse.safe_io import temp_name

        self.path, self.tmp = path, temp_name(path)
        self.file = sf.SoundFile(self.tmp, "w", samplerate=sample_rate, channels=1,
                                 subtype="PCM_16", format="WAV")
        self.n = 0

    def write(self, block: np.ndarray):
        block = np.clip(np.asarray(block, np.float32), -1.0, 1.0)
        self.file.write(block)
        self.n += len(block)

    def pad_to(self, n: int):
        while self.n < n:
            self.write(np.zeros(min(BLOCK, n - self.n), np.float32))

    def close(self, total: int):
        self.pad_to(total)
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def extract_track(extractor, mixture_wav: str, frames: np.ndarray, faces, landmarks,
                  out_wav: str, preset: str, gain: float, chunk_seconds: float = 4.0,
                  overlap_seconds: float = 1.0, progress=None) -> dict:
    """Write ``out_wav``: one track's extraction at its own times, silence elsewhere.

    Arguments
    ---------
    extractor : avse.inference.AVSEExtractor
    mixture_wav : str
        the mixture, 16 kHz mono, sample 0 = grid frame 0.
    frames : np.ndarray
        ``[n]`` sorted grid frames of the track (holes between merged segments allowed).
    faces, landmarks : array_like
        ``[n, 224, 224]`` face frames (anything sliced by rows, e.g. a FrameFile) and ``[n, 5, 2]`` face-frame landmarks.
    preset : str or None
        mouth-crop preset (:data:`avse.video.crops.CROP_PRESETS`); None: the rows of
        ``faces`` are the model's visual input as they are (e.g. lip embeddings ``[n, D]``
        computed over the whole track, :func:`avse.embed.embed_track`).
    gain : float
        the mixture's normalisation (its peak), computed once per file.

    Returns
    -------
    dict: ``path``, ``samples``, ``segments``; for a model with an activity head also
    ``activity`` (``frames``: the grid frames extracted, ``probability`` and ``speaking``
    of each) and ``speaking`` (:func:`avse.gating.speaking_summary` over the track); neither
    key without a head.
    """
    import soundfile as sf

    from avse.video.crops import crop_faces

    frames = np.asarray(frames)
    spf = SAMPLES_PER_FRAME
    chunk = max(int(round(chunk_seconds * SAMPLE_RATE / spf)), 1)
    context = max(int(round(overlap_seconds * SAMPLE_RATE / spf)), 0)
    splits = np.flatnonzero(np.diff(frames) != 1) + 1
    segments = np.split(np.arange(len(frames)), splits)
    head = bool(getattr(extractor, "has_activity", False))
    pieces = []  # (first grid frame, [n, 2] probability and speaking of the kept frames)
    writer = WavWriter(out_wav)
    try:
        with sf.SoundFile(mixture_wav) as mix:
            total = mix.frames

            def run(wav, visual):
                if not head:
                    return extractor.extract_array(wav, visual, gain)
                est, prob = extractor.extract_array(wav, visual, gain, return_activity=True)
                return est, np.stack([prob, extractor.gating.speaking(prob)], axis=-1)

            for rows in segments:
                first = int(frames[rows[0]])
                n = min(len(rows), max((total - first * spf + spf - 1) // spf, 0))
                if n <= 0:
                    continue
                writer.pad_to(first * spf)
                base = first * spf

                def read_audio(a, b, base=base):
                    mix.seek(min(base + a, total))
                    x = mix.read(b - a, dtype="float32", always_2d=True)[:, 0]
                    return np.pad(x, (0, b - a - len(x)))

                def read_visual(a, b, rows=rows):
                    r = rows[a:b]
                    block = np.asarray(faces[r[0]: r[-1] + 1])
                    if preset is None:  # already the model's input (e.g. lip embeddings)
                        return block
                    lm = None if landmarks is None else np.asarray(landmarks[r[0]: r[-1] + 1])
                    return crop_faces(block, preset, lm)

                end = min(base + n * spf, total)
                sink = _Clip(writer, end - base)
                kept = []
                extract_span(run, read_audio, read_visual, n, sink.write, chunk, context,
                             progress, collect=kept)
                if head:
                    pieces.append((first, np.concatenate(kept)))
            writer.close(total)
    except BaseException:
        writer.abort()
        raise
    out = {"path": out_wav, "samples": total, "segments": len(segments)}
    if head:
        act = np.concatenate([p for _, p in pieces]) if pieces else np.zeros((0, 2))
        out["activity"] = {"frames": np.concatenate([f + np.arange(len(p)) for f, p in pieces])
                           if pieces else np.zeros(0, int), "probability": act[:, 0],
                           "speaking": act[:, 1] > 0.5}
        out["speaking"] = speaking_summary([(f, p[:, 1] > 0.5) for f, p in pieces])
    return out


class _Clip:
    """Pass on at most ``limit`` samples (the last video frame may run past the audio)."""

    def __init__(self, writer: WavWriter, limit: int):
        self.writer, self.left = writer, limit

    def write(self, block):
        block = block[: max(self.left, 0)]
        self.left -= len(block)
        if len(block):
            self.writer.write(block)
