"""The one place where audio and video frame rates meet.

Audio is 16 kHz mono, video is 25 fps: one video frame spans exactly
``SAMPLES_PER_FRAME = 640`` audio samples. Every module that converts between
the two time bases calls the helpers here.

Example
-------
>>> frames_to_samples(25)
16000
>>> samples_to_frames(16000 + 300)
25
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
ROI_SIZE = 88
EMB_DIM = 512


class AlignmentError(ValueError):
    """Audio and video lengths disagree by more than the allowed number of frames."""


def frames_to_samples(n_frames: int) -> int:
    """Number of audio samples @16 kHz spanned by ``n_frames`` video frames @25 fps."""
    return int(n_frames) * SAMPLES_PER_FRAME


def samples_to_frames(n_samples: int) -> int:
    """Whole video frames @25 fps contained in ``n_samples`` audio samples @16 kHz."""
    return int(n_samples) // SAMPLES_PER_FRAME


def align_av(wav: np.ndarray, frames: np.ndarray, max_diff_frames: int = 1):
    """Trim or pad audio so that ``len(wav) == len(frames) * 640``.

    Arguments
    ---------
    wav : np.ndarray
        audio ``[T]`` @16 kHz.
    frames : np.ndarray
        video-rate array ``[Tv, ...]`` @25 fps (ROI frames or embeddings).
    max_diff_frames : int
        the largest allowed disagreement, in video frames. Audio shorter than the
        video by at most this many frames is zero-padded (the video keeps its
        length); longer audio is trimmed; video longer than the audio by whole
        frames is trimmed when within the limit.

    Returns
    -------
    (wav, frames) with ``len(wav) == frames_to_samples(len(frames))``.

    Raises
    ------
    AlignmentError when the two disagree by more than ``max_diff_frames`` frames.

    Example
    -------
    >>> w, f = align_av(np.zeros(640 * 10 + 100), np.zeros((10, 2)))
    >>> len(w), len(f)
    (6400, 10)
    """
    n_video = len(frames)
    audio_frames = len(wav) / SAMPLES_PER_FRAME
    diff = audio_frames - n_video
    if abs(diff) > max_diff_frames:
        raise AlignmentError(
            f"audio spans {audio_frames:.2f} video frames but the video has {n_video} "
            f"(difference {diff:+.2f} > {max_diff_frames} allowed)"
        )
    if diff < 0:
        # audio shorter: drop whole video frames the audio does not cover, pad the rest
        n_keep = max(samples_to_frames(len(wav) + SAMPLES_PER_FRAME - 1), 0)
        n_keep = min(n_keep, n_video)
        frames = frames[:n_keep]
    target = frames_to_samples(len(frames))
    if len(wav) >= target:
        wav = wav[:target]
    else:
        wav = np.pad(wav, (0, target - len(wav)))
    return wav, frames


def fit_visual_to_audio(visual: np.ndarray, n_samples: int, max_diff_frames: int = FPS):
    """Pad (repeat the last frame) or trim ``visual [Tv, ...]`` to cover ``n_samples`` of audio.

    Returns ``(visual [ceil(n_samples / 640), ...], diff_frames)`` where ``diff_frames`` is
    how many frames were added (+) or removed (-). Raises AlignmentError beyond
    ``max_diff_frames`` (default 25 frames = 1 s).

    Example
    -------
    >>> v, d = fit_visual_to_audio(np.zeros((10, 4)), 640 * 12)
    >>> v.shape, d
    ((12, 4), 2)
    """
    need = -(-int(n_samples) // SAMPLES_PER_FRAME)
    diff = need - len(visual)
    if abs(diff) > max_diff_frames:
        raise AlignmentError(
            f"the audio lasts {n_samples / SAMPLE_RATE:.2f} s but the video {len(visual) / FPS:.2f} s "
            f"({diff:+d} frames; at most {max_diff_frames} are padded or trimmed)")
    if diff > 0:
        if len(visual) == 0:
            raise AlignmentError("the video has no frames")
        visual = np.concatenate([visual, np.repeat(visual[-1:], diff, axis=0)])
    elif diff < 0:
        visual = visual[:need]
    return visual, diff


def shift_visual(visual: np.ndarray, offset: int) -> np.ndarray:
    """Move the visual stream ``offset`` video frames later against the audio (edge-padded).

    Sign convention: a **positive** ``offset`` makes the video **lag** the audio (what is
    seen at frame ``t`` was said at frame ``t - offset``, ``offset x 40 ms`` earlier); a
    negative one makes it lead. ``out[t] = visual[clip(t - offset, 0, Tv - 1)]``: the
    frames that move in at the start (positive) or the end (negative) repeat the first or
    last frame, so the length, and the alignment to the audio (frame ``t`` spans samples
    ``[640 t, 640 t + 640)``), stay as they are. ``|offset| >= Tv`` gives all first (or all
    last) frames.

    Arguments
    ---------
    visual : np.ndarray
        ``[Tv, ...]`` at 25 fps (mouth ROI ``[Tv, 88, 88]`` or embeddings ``[Tv, 512]``).
    offset : int
        whole video frames (1 frame = 640 samples = 40 ms).

    Returns
    -------
    np.ndarray ``[Tv, ...]``, same dtype; ``visual`` itself when ``offset == 0`` or it is empty.

    Example
    -------
    >>> v = np.arange(5)
    >>> shift_visual(v, 2).tolist(), shift_visual(v, -2).tolist(), shift_visual(v, 9).tolist()
    ([0, 0, 0, 1, 2], [2, 3, 4, 4, 4], [0, 0, 0, 0, 0])
    """
    visual = np.asarray(visual)
    if int(offset) != offset:
        raise ValueError(f"offset must be a whole number of video frames, got {offset!r}")
    offset = int(offset)
    if offset == 0 or len(visual) == 0:
        return visual
    index = np.clip(np.arange(len(visual)) - offset, 0, len(visual) - 1)
    return visual[index]
