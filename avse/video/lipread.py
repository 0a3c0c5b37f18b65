"""The published lip-reading preprocessing (preset ``"lipread"``), reproduced without OpenCV.

The 512-d lip embeddings that MuSE and SEANet were trained on come from the visual front-end
of the deep-lip-reading line of work, fed by the MuSE data scripts' preprocessing of each
face-centred clip (OpenCV)::

    cap = cv2.VideoCapture(path)                       # BGR frames (FFmpeg's swscale)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)      # per frame
    x = cv2.resize(gray / 255., (224, 224))             # INTER_LINEAR, on float
    x = x[56:168, 56:168]                               # the central 112x112
    x = (x - 0.4161) / 0.1688                           # whole clip, float32, one pass

Here the same steps run on PyAV and numpy:

=========  =====================================================================================
step       how
=========  =====================================================================================
decode     PyAV, the frame converted to RGB by swscale at full size (:func:`~avse.video.frames.
           rgb_frame`): the converter and settings OpenCV's FFmpeg backend uses, equal to
           ``cv2.VideoCapture``'s frames (``[..., ::-1]``) byte for byte on the tested clips
           (limited and full range, BT.601 and BT.709 flags); rotation metadata applied
gray       :func:`bgr2gray_cv`, OpenCV's fixed-point ``COLOR_BGR2GRAY`` (exact for all colours)
resize     bilinear to 224x224 as ``cv2.resize(..., INTER_LINEAR)`` on float input: half-pixel
           centres, edge samples clamped, no antialiasing, OpenCV's float32 tap weights, float64
           sums; only the rows and columns of the crop are computed; identity for 224x224.
           Equal to OpenCV's own code to 6e-8 (of 1); the pip wheels' default (IPP) resize
           differs from it by up to ~1e-5
crop       rows and columns 56..167
scale      **kept at 0..255** (float32): the front-end divides by 255 and applies
           ``(x - LIPREAD_MEAN) / LIPREAD_STD`` itself (:mod:`avse.models.frontends`)
grid       the toolkit's 25 fps grid (:func:`~avse.video.frames.iter_video`), which for a
           25 fps clip is every frame, as ``cv2.VideoCapture`` reads them
=========  =====================================================================================

The gray must be computed through RGB. The toolkit's default gray (the luma plane, expanded
from limited range: :func:`~avse.video.frames.gray_frame` ``method="luma"``) is a different
picture. Measured on the real-photo test clip (``tests/integration/test_lipread_opencv.py``
prints it) with the ``dlr`` front-end (random weights and BatchNorm statistics, 3 seeds), the
relative difference of the embeddings from those of OpenCV's path is:

==========================================  ===================  ====================
gray                                        limited-range clip   full-range clip
==========================================  ===================  ====================
this module (through RGB)                   0 (224), 1e-7 (160)  0
luma plane expanded to full range           0.55-0.76 %          0.3-0.45 %
raw luma plane (16..235 as stored)          3.8-4.9 %            0.3-0.45 %
==========================================  ===================  ====================

The front-end's 3-D stem has a temporal kernel of 5: give it the whole clip in one pass (chunk
edges differ otherwise).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from avse.data.align import FPS
from avse.video.frames import gray_frame, iter_video, probe
from avse.video.media import MediaError, bgr2gray_cv

__all__ = ["LIPREAD_FACE", "LIPREAD_SIZE", "LIPREAD_TOP", "LIPREAD_MEAN", "LIPREAD_STD",
           "bgr2gray_cv", "linear_taps", "lipread_frames", "decode_lipread"]

LIPREAD_FACE = 224  #: face frames are resized to this side first
LIPREAD_SIZE = 112  #: side of the crop the front-end reads
LIPREAD_TOP = (LIPREAD_FACE - LIPREAD_SIZE) // 2  #: first row and column of the crop (56)
LIPREAD_MEAN = 0.4161  #: the front-end's normalisation of x / 255 (mean ...
LIPREAD_STD = 0.1688  #: ... and standard deviation)
_BLOCK = 64  # frames resized at once (bounds the float64 working memory)


@lru_cache(maxsize=64)
def linear_taps(src: int, dst: int, start: int = 0, stop: int | None = None):
    """Source taps of ``cv2.resize(INTER_LINEAR)`` from ``src`` to ``dst`` samples.

    Output sample ``d`` reads ``x = (d + 0.5) * src / dst - 0.5`` (half-pixel centres):
    ``w0 * a[i0] + w1 * a[i1]`` with ``i0 = floor(x)``, ``w1 = x - i0`` rounded to float32 as
    OpenCV computes it, clamped to the edge samples outside ``[0, src - 1]``.

    Arguments
    ---------
    src, dst : int
        input and output lengths (>= 1).
    start, stop : int
        the output samples wanted (default all).

    Returns
    -------
    (i0, i1, w0, w1): int64 and float32 arrays of length ``stop - start``.

    Example
    -------
    >>> i0, i1, w0, w1 = linear_taps(2, 4)
    >>> i0.tolist(), i1.tolist(), w1.tolist()
    ([0, 0, 0, 1], [1, 1, 1, 1], [0.0, 0.25, 0.75, 0.0])
    """
    if src < 1 or dst < 1:
        raise ValueError(f"linear_taps: lengths must be >= 1, got src={src}, dst={dst}")
    stop = dst if stop is None else stop
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1 / inv_scale_x
    x = ((np.arange(start, stop) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(x).astype(np.int64)
    w1 = x - i0.astype(np.float32)
    outside = (i0 < 0) | (i0 >= src - 1)
    w1[outside] = 0.0
    i0 = np.clip(i0, 0, src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    w0 = np.float32(1.0) - w1
    for a in (i0, i1, w0, w1):
        a.flags.writeable = False  # cached: shared between calls
    return i0, i1, w0, w1


def _resize_crop(gray: np.ndarray) -> np.ndarray:
    """uint8 ``[T, H, W]`` -> float32 ``[T, 112, 112]``: resize to 224 and the central crop."""
    t, h, w = gray.shape
    if h == w == LIPREAD_FACE:
        sl = slice(LIPREAD_TOP, LIPREAD_TOP + LIPREAD_SIZE)
        return gray[:, sl, sl].astype(np.float32)
    ry0, ry1, vy0, vy1 = linear_taps(h, LIPREAD_FACE, LIPREAD_TOP, LIPREAD_TOP + LIPREAD_SIZE)
    cx0, cx1, vx0, vx1 = linear_taps(w, LIPREAD_FACE, LIPREAD_TOP, LIPREAD_TOP + LIPREAD_SIZE)
    out = np.empty((t, LIPREAD_SIZE, LIPREAD_SIZE), np.float32)
    wx0, wx1 = vx0.astype(np.float64), vx1.astype(np.float64)
    wy0, wy1 = vy0.astype(np.float64)[:, None], vy1.astype(np.float64)[:, None]
    for a in range(0, t, _BLOCK):
        block = gray[a:a + _BLOCK]
        rows = []
        for r in (ry0, ry1):  # horizontal pass on the rows the crop needs, then vertical
            src = block[:, r].astype(np.float64)
            rows.append(src[..., cx0] * wx0 + src[..., cx1] * wx1)
        out[a:a + _BLOCK] = rows[0] * wy0 + rows[1] * wy1
    return out


def lipread_frames(frames) -> np.ndarray:
    """The published preprocessing of face-centred frames (see the module docstring).

    Arguments
    ---------
    frames : array_like
        uint8 ``[T, H, W, 3]`` RGB (converted with :func:`bgr2gray_cv`) or uint8 ``[T, H, W]``
        gray (already converted), any ``H x W`` (resized to 224x224 whatever the aspect).

    Returns
    -------
    float32 ``[T, 112, 112]`` on the **0..255** scale: ``cv2.resize(gray, (224, 224))``'s
    rows and columns 56..167; the front-end divides by 255 and normalises.

    Example
    -------
    >>> faces = np.random.default_rng(0).integers(0, 256, (2, 224, 224), dtype=np.uint8)
    >>> out = lipread_frames(faces)
    >>> out.dtype, out.shape, bool(np.array_equal(out, faces[:, 56:168, 56:168]))
    (dtype('float32'), (2, 112, 112), True)
    >>> lipread_frames(np.zeros((3, 160, 160, 3), np.uint8)).shape
    (3, 112, 112)
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)) \
            or min(frames.shape[1:3], default=0) < 1:
        raise ValueError(f"lipread_frames: need uint8 RGB [T, H, W, 3] or gray [T, H, W] frames, "
                         f"got {frames.dtype} {frames.shape}")
    if frames.ndim == 3:
        return _resize_crop(frames)
    out = np.empty((len(frames), LIPREAD_SIZE, LIPREAD_SIZE), np.float32)
    for a in range(0, len(frames), _BLOCK):  # bounded memory for long clips
        out[a:a + _BLOCK] = _resize_crop(bgr2gray_cv(frames[a:a + _BLOCK]))
    return out


def decode_lipread(video_path: str, origin: float | None = None, fps: int = FPS,
                   info=None) -> np.ndarray:
    """Decode a face-centred clip with the published preprocessing, on the 25 fps grid.

    Arguments
    ---------
    video_path : str
        a face-centred clip (LRS2/LRS3/VoxCeleb2 style, or a face track), any container and
        codec PyAV reads; rotation metadata is honoured.
    origin : float or None
        source time (s) of grid frame 0; ``None``: the first video frame (a 25 fps clip of
        ``N`` frames gives its ``N`` frames, as ``cv2.VideoCapture`` reads them). Grid frames
        before the first video frame repeat it.
    fps : int
        grid rate (25).
    info : avse.video.frames.MediaInfo, optional
        a :func:`~avse.video.frames.probe` result for the file.

    Returns
    -------
    float32 ``[T, 112, 112]`` on the 0..255 scale (:func:`lipread_frames`).

    Raises
    ------
    MediaError naming the file: no such file, not a media file, no video stream, no
    decodable frame, corrupt stream.

    Example
    -------
    ::

        rois = decode_lipread("clip.mp4")   # [T, 112, 112] float32, 0..255
    """
    info = info if info is not None else probe(video_path)
    if origin is None:
        origin = info.video_start
    out, first, prev, prev_roi = [], None, None, None
    for k, frame in iter_video(video_path, origin=origin, fps=fps, info=info):
        if first is None:
            first = k
        if frame is not prev:  # a source frame shown on several grid frames is computed once
            prev_roi = lipread_frames(gray_frame(frame, info.rotation, method="rgb")[None])[0]
            prev = frame
        out.append(prev_roi)
    if not out:
        raise MediaError(f"{video_path}: no video frame at or after {origin:.3f} s")
    return np.stack([out[0]] * first + out)
