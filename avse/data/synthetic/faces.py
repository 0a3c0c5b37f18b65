"""Cartoon talking faces of the synthetic corpus, and the mp4 writer (PyAV: H.264 + AAC).

A face's mouth follows an opening / width / roundness track frame by frame; each speaker
has a seeded look (skin, hair, eyes). See :mod:`avse.data.synthetic` for the corpora.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from avse.data.align import FPS, SAMPLE_RATE
from avse.data.synthetic.speech import TAG_LOOK, seeded_rng
from avse.video.media import MOUTH_CROPS, MouthCrop

AAC_FRAME = 1024  # samples per AAC frame


# ----------------------------------------------------------------------------- faces
@dataclass(frozen=True)
class Look:
    """Per-speaker appearance: RGB colours (0-255) and small geometric jitter."""

    skin: tuple
    background: tuple
    background2: tuple
    hair: tuple
    lips: tuple
    mouth: tuple
    iris: tuple
    face_scale: float  # 0.96-1.04
    face_aspect: float  # 0.94-1.06, width / height jitter
    mouth_scale: float  # 0.92-1.04, size of the mouth


def speaker_look(seed: int, speaker_index: int) -> Look:
    """Draw the appearance of speaker ``speaker_index`` (independent of its voice)."""
    rng = seeded_rng(seed, speaker_index, TAG_LOOK)
    light, dark = np.array([236.0, 198.0, 172.0]), np.array([105.0, 70.0, 50.0])
    skin = light + rng.uniform() * (dark - light) + rng.normal(0, 6, 3)

    def colour(lo, hi):
        return tuple(float(c) for c in np.clip(rng.uniform(lo, hi, 3), 0, 255))

    lips = np.clip(skin * rng.uniform(0.55, 0.75) + np.array([45.0, 0.0, 5.0]), 0, 255)
    return Look(
        skin=tuple(float(c) for c in np.clip(skin, 0, 255)),
        background=colour(20, 235), background2=colour(20, 235), hair=colour(10, 110),
        lips=tuple(float(c) for c in lips), iris=colour(20, 120),
        mouth=(float(rng.uniform(35, 70)), float(rng.uniform(8, 25)), float(rng.uniform(12, 30))),
        face_scale=float(rng.uniform(0.96, 1.04)), face_aspect=float(rng.uniform(0.94, 1.06)),
        mouth_scale=float(rng.uniform(0.92, 1.04)),
    )


def _ellipse(img, cy, cx, ry, rx, colour, hairline=None):
    """Alpha-blend an anti-aliased filled ellipse into float image ``img [..., H, W, 3]`` in place.

    ``cy, cx`` are scalars (pixels); ``ry, rx`` scalars or arrays ``[..., 1, 1]`` matching
    the leading dims of ``img``. Only the bounding box is touched. With ``hairline``,
    only the part above that row is drawn.
    """
    h, w = img.shape[-3:-1]
    y0, y1 = max(int(cy - np.max(ry)) - 1, 0), min(int(np.ceil(cy + np.max(ry))) + 2, h)
    x0, x1 = max(int(cx - np.max(rx)) - 1, 0), min(int(np.ceil(cx + np.max(rx))) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    alpha = np.clip((1.0 - r) * np.minimum(ry, rx) + 0.5, 0.0, 1.0)
    if hairline is not None:
        alpha = alpha * np.clip(hairline - yy, 0.0, 1.0)
    a = alpha[..., None]
    sub = img[..., y0:y1, x0:x1, :]
    sub *= 1.0 - a
    sub += a * np.asarray(colour, dtype=np.float32)


@lru_cache(maxsize=16)
def static_face(h, w, my, mx, look: Look, eyes_open: bool):
    """The still parts of the face (uint8 ``[H, W, 3]``), mouth centre at ``(my, mx)``; cached."""
    s, skin = look.face_scale, np.asarray(look.skin)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = np.empty((h, w, 3), np.float32)
    img[:] = (1 - t) * np.asarray(look.background) + t * np.asarray(look.background2)
    cy, rx, ry = my - 0.22 * h * s, 0.34 * w * s * look.face_aspect, 0.44 * h * s
    img[int(cy):, max(int(mx - 0.17 * w * s), 0):int(mx + 0.17 * w * s)] = skin * 0.8  # neck
    _ellipse(img, cy - 0.03 * h * s, mx, ry * 1.02, rx * 1.1, look.hair)
    _ellipse(img, cy, mx, ry, rx, skin)
    _ellipse(img, cy - 0.03 * h * s, mx, ry * 1.02, rx * 1.1, look.hair, hairline=cy - 0.30 * h * s)
    ey = my - 0.30 * h * s
    for side in (-1.0, 1.0):
        ex = mx + side * 0.13 * w * s
        _ellipse(img, ey - 0.055 * h * s, ex, 0.011 * h, 0.06 * w * s, look.hair)  # brow
        if eyes_open:
            _ellipse(img, ey, ex, 0.024 * h * s, 0.05 * w * s, (235, 235, 230))
            _ellipse(img, ey, ex, 0.019 * w * s, 0.019 * w * s, look.iris)
            _ellipse(img, ey, ex, 0.008 * w * s, 0.008 * w * s, (15, 15, 15))
        else:
            _ellipse(img, ey + 0.004 * h, ex, 0.006 * h, 0.05 * w * s, skin * 0.6)
    _ellipse(img, my - 0.19 * h * s, mx, 0.075 * h * s, 0.035 * w * s, skin * 0.88)  # nose
    for side in (-1.0, 1.0):
        _ellipse(img, my - 0.125 * h * s, mx + side * 0.022 * w * s, 0.008 * h * s, 0.013 * w * s, skin * 0.45)
    img = np.round(img).astype(np.uint8)
    img.flags.writeable = False
    return img


def render_face(opening, width, roundness, size=(224, 224), crop: MouthCrop = MOUTH_CROPS["voxceleb2"],
                look: Look | None = None, offset=(0, 0), blinks=None) -> np.ndarray:
    """Draw a talking face whose mouth follows the lip tracks.

    Parameters
    ----------
    opening, width, roundness : array_like
        lip tracks ``[Tv]`` in ``[0, 1]`` @25 fps (see :class:`~avse.data.synthetic.speech.Utterance`).
    size : (int, int)
        frame ``(H, W)`` in pixels.
    crop : MouthCrop
        the mouth box preset; the mouth is centred in ``crop.box(H, W)`` and its outer lip
        contour never exceeds 0.75 of the box side.
    look : Look, optional
        speaker appearance (default: ``speaker_look(0, 0)``).
    offset : (int, int)
        per-clip head shift ``(dy, dx)`` in pixels (keep it within +-2).
    blinks : array_like of bool, optional
        ``[Tv]``: frames drawn with closed eyes.

    Returns
    -------
    np.ndarray
        uint8 RGB frames ``[Tv, H, W, 3]``.
    """
    opening = np.clip(np.asarray(opening, np.float32), 0, 1)
    width = np.clip(np.asarray(width, np.float32), 0, 1)
    roundness = np.clip(np.asarray(roundness, np.float32), 0, 1)
    look = look or speaker_look(0, 0)
    h, w = size
    top, left, side = crop.box(h, w)
    my, mx = top + side / 2.0 + offset[0], left + side / 2.0 + offset[1]
    u = min(side, w * 88.0 / 224.0) * look.mouth_scale  # mouth unit, <= box side
    frames = np.empty((len(opening), h, w, 3), np.uint8)
    frames[:] = static_face(h, w, my, mx, look, True)
    if blinks is not None and np.any(blinks):
        frames[np.asarray(blinks, bool)] = static_face(h, w, my, mx, look, False)
    half = int(np.ceil(0.375 * side)) + 2
    y0, y1 = max(int(my) - half, 0), min(int(my) + half + 1, h)
    x0, x1 = max(int(mx) - half, 0), min(int(mx) + half + 1, w)
    region = frames[:, y0:y1, x0:x1].astype(np.float32)
    draw_mouth(region, my - y0, mx - x0, u, opening, width, roundness, look.lips, look.mouth)
    frames[:, y0:y1, x0:x1] = np.round(region).astype(np.uint8)
    return frames


def draw_mouth(img, cy, cx, unit, opening, width, roundness, lips, mouth) -> None:
    """Draw the synthetic corpus's mouth (outer lips, then inner mouth) into ``img`` in place.

    Parameters
    ----------
    img : np.ndarray
        float32 RGB ``[H, W, 3]`` (one frame) or ``[Tv, H, W, 3]`` (one frame per track value).
    cy, cx : float
        mouth centre in pixels (row, column) of ``img``.
    unit : float
        mouth unit in pixels: the closed neutral mouth (width 0.6, roundness 0.2) is about
        ``0.53 * unit`` wide; the lips' vertical extent grows to ``~0.55 * unit`` fully open.
    opening, width, roundness : float or array_like
        lip parameters in ``[0, 1]``, scalars for one frame or ``[Tv]`` for a stack.
    lips, mouth : tuple
        RGB colours (0-255) of the lips and of the inner mouth.

    Example
    -------
    >>> img = np.full((40, 60, 3), 200.0, np.float32)
    >>> draw_mouth(img, 20.0, 30.0, 60.0, np.float32(0.8), np.float32(0.6), np.float32(0.2),
    ...            (180, 80, 80), (40, 10, 20))
    >>> bool(img[20, 30, 0] < 100)
    True
    """
    opening, width, roundness = np.asarray(opening), np.asarray(width), np.asarray(roundness)
    # semi-axes in pixels, [..., 1, 1] to broadcast over the leading dims of img
    a_in = (unit * (0.13 + 0.17 * width - 0.03 * roundness))[..., None, None]
    b_in = (unit * (0.015 + 0.20 * opening))[..., None, None]
    a_out = a_in + (unit * (0.035 + 0.03 * roundness))[..., None, None]
    b_out = b_in + (unit * (0.045 + 0.03 * roundness))[..., None, None]
    _ellipse(img, cy, cx, b_out, a_out, lips)
    _ellipse(img, cy, cx, b_in, a_in, mouth)


# ----------------------------------------------------------------------------- mp4
def write_mp4(path, frames: np.ndarray, wav: np.ndarray, crf: int = 20, preset: str = "ultrafast"):
    """Write H.264 video and AAC mono 16 kHz audio into one mp4.

    Parameters
    ----------
    path : str or Path
        output file; written to ``path + '.tmp'`` first and renamed.
    frames : np.ndarray
        uint8 RGB ``[Tv, H, W, 3]`` @25 fps (H, W even).
    wav : np.ndarray
        float ``[T]`` @16 kHz in ``[-1, 1]``, normally ``T = Tv * 640``.

    Notes
    -----
    The audio track holds a whole number of 1024-sample AAC frames: ``wav`` is cut or
    zero-padded to the nearest multiple of 1024 (a change of at most 512 samples, less than
    one video frame). FFmpeg pads a short last AAC frame to 1024 samples on decode, so an
    exact multiple is what makes the decoded length equal the written length. The
    encoder's 1024-sample priming delay is stored in the mp4 edit list and removed by the
    decoder: decoded audio starts at lag 0.
    """
    import av

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS, options={"crf": str(crf), "preset": preset, "threads": "1"})
        vs.height, vs.width, vs.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        aus = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono", options={"aac_coder": "fast"})
        aus.bit_rate = 64000
        for k, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = k
            out.mux(vs.encode(frame))
        samples = np.clip(np.asarray(wav, np.float32), -1, 1)
        n_audio = AAC_FRAME * max(1, int(round(len(samples) / AAC_FRAME)))
        samples = np.pad(samples[:n_audio], (0, max(0, n_audio - len(samples))))
        for start in range(0, n_audio, AAC_FRAME):  # whole AAC frames, pts in samples
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + AAC_FRAME], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            out.mux(aus.encode(frame))
        out.mux(vs.encode())
        out.mux(aus.encode())
    os.replace(tmp, path)
