"""Video decoding with PyAV: 16 kHz mono audio and 88x88 grayscale mouth ROI @25 fps.

The mouth ROI is a *fixed* crop of a face-centred frame (no landmark detector):
a square box whose centre and side are fractions of the frame size, chosen per
corpus. ``MOUTH_CROPS`` documents them:

=========  ==========  =========================  ====================================
preset     frame size  box (centre x, y; side)    pixels
=========  ==========  =========================  ====================================
voxceleb2  224 x 224   (0.5, 0.70; 88/224)         rows 113..200, cols 68..155, no resize
lrs2       160 x 160   (0.5, 0.72; 0.55)           rows 71..158, cols 36..123, no resize
lrs3       224 x 224   same as voxceleb2
=========  ==========  =========================  ====================================

Frames of another size use the same fractions and are resized to 88x88 (area
interpolation). Clips that are not 25 fps are resampled by timestamp: output frame
``k`` (time ``k / 25`` s) takes the last decoded frame whose timestamp is <= that time.

The streaming API for real videos (:class:`MediaInfo`, :func:`probe`, :func:`iter_video`,
:func:`gray_frame`, :func:`rgb_frame`, :func:`decode_audio`) lives in
:mod:`avse.video.frames` (which imports this module, never the other way round);
:func:`set_display_rotation` (below) writes rotation metadata into an mp4.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from avse.data.align import FPS, ROI_SIZE, SAMPLE_RATE


@dataclass(frozen=True)
class MouthCrop:
    """A square mouth box given as fractions of the frame (centre x, centre y, side / width)."""

    cx: float
    cy: float
    size: float

    def box(self, height: int, width: int):
        """Return ``(top, left, side)`` in pixels for a ``height x width`` frame."""
        side = max(1, int(round(self.size * width)))
        side = min(side, height, width)
        top = int(round(self.cy * height)) - side // 2
        left = int(round(self.cx * width)) - side // 2
        top = min(max(top, 0), height - side)
        left = min(max(left, 0), width - side)
        return top, left, side


MOUTH_CROPS = {
    "voxceleb2": MouthCrop(cx=0.5, cy=0.70, size=ROI_SIZE / 224),
    "lrs2": MouthCrop(cx=0.5, cy=0.72, size=0.55),
    "lrs3": MouthCrop(cx=0.5, cy=0.70, size=ROI_SIZE / 224),
}


class MediaError(RuntimeError):
    """A media file could not be decoded (corrupt, truncated, missing stream)."""


#: the largest video frame decoded (pixels, width x height): 4096 x 4096. Larger frames
#: (8K video, or a header that lies to make a decoder allocate gigabytes) are refused
#: before any frame is decoded.
MAX_FRAME_PIXELS = 4096 * 4096


def file_problem(path: str) -> str | None:
    """Why ``path`` cannot be read as a media file before any decoder sees it, else None:
    ``no such file``, a symlink loop, not a regular file, an empty file, or a read that
    fails (permissions, I/O error). Opens the file and reads one byte.

    Example
    -------
    >>> file_problem("/nonexistent/clip.mp4")
    'no such file'
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as err:  # ELOOP: a symlink loop; ENAMETOOLONG, EACCES on a folder ...
        return f"cannot stat ({err.strerror or err})"
    if not os.path.isfile(path):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        return f"cannot read ({err.strerror or err})"
    return None


def frame_size_problem(width: int, height: int) -> str | None:
    """Why frames of ``width x height`` are not decoded (:data:`MAX_FRAME_PIXELS`), else None.

    Example
    -------
    >>> frame_size_problem(8000, 8000)
    'frame 8000x8000 is larger than 4096x4096 pixels (MAX_FRAME_PIXELS); downscale the video'
    """
    if width * height > MAX_FRAME_PIXELS:
        return (f"frame {width}x{height} is larger than 4096x4096 pixels (MAX_FRAME_PIXELS); "
                "downscale the video")
    return None


AUDIO_FILE_EXTS = (".wav", ".flac")


def read_audio(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any audio file (wav/flac via soundfile, m4a/mp4/aac via PyAV) as mono float32.

    Returns ``wav [T] @sample_rate``, resampled when the file has another rate.
    """
    if str(path).lower().endswith(AUDIO_FILE_EXTS):
        import soundfile as sf

        try:
            wav, sr = sf.read(path, dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises its own LibsndfileError
            raise MediaError(f"cannot read audio file {path}: {err}") from err
        wav = wav.mean(axis=1)
        if sr != sample_rate:
            wav = resample(wav, sr, sample_rate)
        return wav.astype(np.float32, copy=False)
    wav, _ = decode_media(path, want_video=False, sample_rate=sample_rate)
    return wav


def resample(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited polyphase resampling of ``wav [T]`` from ``orig_sr`` to ``new_sr``."""
    from scipy.signal import resample_poly

    if orig_sr == new_sr:
        return wav
    ratio = Fraction(int(new_sr), int(orig_sr))
    return resample_poly(wav, ratio.numerator, ratio.denominator).astype(np.float32)


# limited-range luma (16..235) -> full-range gray (0..255), as swscale's yuv -> gray does
LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)
_LIMITED_TO_FULL = LIMITED_TO_FULL
#: OpenCV's fixed-point ``COLOR_BGR2GRAY`` for uint8 (OpenCV 4.x: 15 fractional bits, R, G, B)
CV_GRAY_WEIGHTS = (9798, 19235, 3735)
CV_GRAY_SHIFT = 15


def bgr2gray_cv(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's ``cvtColor(bgr, COLOR_BGR2GRAY)`` of the same picture, computed from RGB.

    ``Y = (9798 R + 19235 G + 3735 B + 2^14) >> 15``: the integer arithmetic of OpenCV 4.x
    for uint8, equal to it for all 2^24 colours (OpenCV 2.x/3.x used 14 bits, R 4899, G 9617,
    B 1868: one gray level lower on 0.26 % of the colours). ``rgb [..., 3]`` uint8 RGB
    (channel order of PyAV's ``rgb24``; OpenCV's BGR frame is ``rgb[..., ::-1]``);
    returns uint8 ``[...]``.

    Example
    -------
    >>> bgr2gray_cv(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 140, 200]], np.uint8)).tolist()
    [76, 150, 29, 132]
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim < 1 or rgb.shape[-1] != 3:
        raise ValueError(f"bgr2gray_cv: need uint8 RGB [..., 3], got {rgb.dtype} {rgb.shape}")
    acc = rgb[..., 0] * np.uint32(CV_GRAY_WEIGHTS[0])
    acc += rgb[..., 1] * np.uint32(CV_GRAY_WEIGHTS[1])
    acc += rgb[..., 2] * np.uint32(CV_GRAY_WEIGHTS[2])
    acc += 1 << (CV_GRAY_SHIFT - 1)
    acc >>= CV_GRAY_SHIFT
    return acc.astype(np.uint8)
_YUV_FORMATS = ("yuv", "nv12", "nv21")


def frame_to_gray_box(frame, crop: MouthCrop, reformatter=None) -> np.ndarray:
    """The mouth box of a decoded PyAV ``VideoFrame`` as full-range gray ``[side, side]`` uint8.

    For YUV frames the luma plane is read directly (only the box is converted), which is
    ~50x faster than a per-frame ``to_ndarray(format="gray")`` and gives the same values.
    """
    top, left, side = crop.box(frame.height, frame.width)
    name = frame.format.name
    if name.startswith(_YUV_FORMATS):
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        box = luma[top : top + side, left : left + side]
        full_range = name.startswith("yuvj") or getattr(frame, "color_range", 0) == 2
        return box.copy() if full_range else _LIMITED_TO_FULL[box]
    if reformatter is None:
        gray = frame.to_ndarray(format="gray")
    else:
        gray = reformatter.reformat(frame, format="gray").to_ndarray()
    return gray[top : top + side, left : left + side]


def _resize_roi(roi: np.ndarray, out_size: int) -> np.ndarray:
    """Resize a square gray box to ``out_size``^2 (box filter) when it is not that size."""
    side = roi.shape[0]
    if side != out_size:
        from PIL import Image

        roi = np.asarray(Image.fromarray(roi).resize((out_size, out_size), Image.BOX))
    return roi


def resample_frame_times(times: np.ndarray, duration: float, fps: int = FPS) -> np.ndarray:
    """Map output frames at ``fps`` to decoded frames by timestamp.

    Arguments
    ---------
    times : np.ndarray
        presentation times ``[N]`` (seconds, increasing, first = 0) of the decoded frames.
    duration : float
        clip duration in seconds (last timestamp + one source frame).

    Returns
    -------
    indices ``[round(duration * fps)]``: output frame ``k`` shows the last decoded frame
    whose time is <= ``k / fps`` (+ a small tolerance).

    Example
    -------
    >>> resample_frame_times(np.arange(6) / 30, 6 / 30, fps=25).tolist()
    [0, 1, 2, 3, 4]
    """
    n_out = max(int(round(duration * fps)), 0)
    grid = np.arange(n_out) / fps + 1e-4
    idx = np.searchsorted(times, grid, side="right") - 1
    return np.clip(idx, 0, len(times) - 1)


def decode_media(
    path: str,
    want_video: bool = True,
    want_audio: bool = True,
    crop: MouthCrop | None = None,
    sample_rate: int = SAMPLE_RATE,
    fps: int = FPS,
    roi_size: int = 88,
):
    """Decode an mp4/m4a with PyAV in one pass.

    Arguments
    ---------
    path : str
        media file.
    want_video : bool
        decode the video stream into mouth ROI frames (``crop`` required).
    want_audio : bool
        decode the audio stream to mono float32 at ``sample_rate``.
    crop : MouthCrop
        the fixed mouth box (see ``MOUTH_CROPS``).

    Returns
    -------
    (wav [T] float32 @sample_rate or None, lips [Tv, roi, roi] uint8 @fps or None).
    When both are decoded, the audio is shifted so that sample 0 is the time of video
    frame 0 (streams that start at different times stay in sync).

    Raises
    ------
    MediaError naming the file when it cannot be read (:func:`file_problem`) or opened,
    a wanted stream is missing, empty or corrupt, or its frames are too large
    (:func:`frame_size_problem`).
    """
    import av
    from av.video.reformatter import VideoReformatter

    problem = file_problem(path)
    if problem:
        raise MediaError(f"{path}: {problem}")
    try:
        container = av.open(path)
    except Exception as err:
        raise MediaError(f"{path}: cannot open ({err})") from err
    with container:
        vstreams = list(container.streams.video) if want_video else []
        astreams = list(container.streams.audio) if want_audio else []
        if want_video and not vstreams:
            raise MediaError(f"{path}: no video stream")
        if want_audio and not astreams:
            raise MediaError(f"{path}: no audio stream")
        if vstreams:
            problem = frame_size_problem(vstreams[0].codec_context.width,
                                         vstreams[0].codec_context.height)
            if problem:
                raise MediaError(f"{path}: {problem}")
        streams = vstreams[:1] + astreams[:1]
        declared_audio = None
        if astreams and astreams[0].duration and astreams[0].time_base:
            declared_audio = float(astreams[0].duration * astreams[0].time_base)
        resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=sample_rate) if astreams else None
        )
        chunks, audio_start = [], None
        reformatter = VideoReformatter() if vstreams else None
        frames, times = [], []
        try:
            for frame in container.decode(*streams):
                if isinstance(frame, av.AudioFrame):
                    if audio_start is None and frame.time is not None:
                        audio_start = frame.time
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
                else:
                    box = frame_to_gray_box(frame, crop, reformatter)
                    frames.append(_resize_roi(box, roi_size))
                    times.append(frame.time if frame.time is not None else len(times) / fps)
            if resampler is not None:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as err:
            raise MediaError(f"{path}: corrupt stream ({err})") from err
    wav = lips = None
    if want_audio:
        if not chunks:
            raise MediaError(f"{path}: audio stream has no samples")
        wav = np.concatenate(chunks).astype(np.float32, copy=False)
        if declared_audio:  # drop the encoder's end padding (AAC pads to whole frames)
            wav = wav[: int(round(declared_audio * sample_rate))]
    if want_video:
        if not frames:
            raise MediaError(f"{path}: video stream has no frames")
        times = np.asarray(times, dtype=np.float64)
        video_start = times[0]
        times = times - video_start
        step = np.median(np.diff(times)) if len(times) > 1 else 1.0 / fps
        idx = resample_frame_times(times, times[-1] + step, fps)
        if len(idx) == len(frames) and np.array_equal(idx, np.arange(len(frames))):
            lips = np.stack(frames)
        else:
            lips = np.stack([frames[i] for i in idx])
        if wav is not None and audio_start is not None:
            offset = int(round((audio_start - video_start) * sample_rate))
            if offset > 0:  # audio starts after the first video frame
                wav = np.concatenate([np.zeros(offset, np.float32), wav])
            elif offset < 0:
                wav = wav[-offset:]
    return wav, lips


# --------------------------------------------------------------------------- rotation metadata
def _iter_boxes(fh, start: int, end: int):
    """Yield ``(type, box_start, payload_start, box_end)`` for the ISO-BMFF boxes in a range."""
    pos = start
    while pos + 8 <= end:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            return
        size, kind = int.from_bytes(head[:4], "big"), head[4:8]
        payload = pos + 8
        if size == 1:  # 64-bit size follows the type
            size = int.from_bytes(fh.read(8), "big")
            payload = pos + 16
        elif size == 0:  # box runs to the end of its parent
            size = end - pos
        if size < payload - pos or pos + size > end:
            return
        yield kind, pos, payload, pos + size
        pos += size


def _display_matrix(degrees: int, width: float, height: float) -> list:
    """The tkhd matrix ``[a, b, u, c, d, v, x, y, w]`` of a counter-clockwise display rotation.

    ``a, b, c, d, x, y`` are 16.16 fixed point, ``u, v, w`` 2.30. The rotation part is the one
    FFmpeg reads back as ``degrees`` (its ``av_display_rotation_get`` convention: ``a = cos``,
    ``b = -sin``, ``c = sin``, ``d = cos``); the translation keeps the rotated picture in the
    positive quadrant as QuickTime-style players expect (``width x height`` = stored size).
    """
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    tx = {0: 0, 90: 0, 180: width, 270: height}[degrees]
    ty = {0: 0, 90: width, 180: height, 270: 0}[degrees]
    one = 1 << 16
    return [cos * one, -sin * one, 0, sin * one, cos * one, 0,
            int(round(tx * one)), int(round(ty * one)), 1 << 30]


def set_display_rotation(mp4_path: str, degrees: int) -> None:
    """Write a display rotation into the video track header (``tkhd``) of an mp4/mov in place.

    Afterwards FFmpeg/PyAV (and players) report the track as rotated: :func:`probe` returns
    ``rotation == degrees % 360`` and the display size with width/height swapped for 90/270.

    Arguments
    ---------
    mp4_path : str
        an mp4/mov file with one or more video tracks (all of them are patched).
    degrees : int
        0, 90, 180 or 270 (any multiple of 90, taken modulo 360): the angle by which the
        *stored* frames must be rotated **counter-clockwise** to appear upright, i.e.
        ``upright = np.rot90(stored, k=degrees // 90)`` (FFmpeg's ``VideoFrame.rotation``
        convention; a phone portrait clip stored landscape is 270 = one turn clockwise).

    Raises
    ------
    ValueError when ``degrees`` is not a multiple of 90; MediaError naming the file when it
    is missing or has no ``moov/trak/tkhd`` of a video track.

    Example
    -------
    ::

        set_display_rotation("clip.mp4", 90)
    """
    if int(degrees) % 90:
        raise ValueError(f"set_display_rotation: degrees must be a multiple of 90, got {degrees}")
    degrees = int(degrees) % 360
    if not os.path.isfile(mp4_path):
        raise MediaError(f"{mp4_path}: no such file")
    patched = 0
    with open(mp4_path, "r+b") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        for kind, _, moov, moov_end in list(_iter_boxes(fh, 0, size)):
            if kind != b"moov":
                continue
            for tkind, _, trak, trak_end in list(_iter_boxes(fh, moov, moov_end)):
                if tkind != b"trak":
                    continue
                children = {k: (p, e) for k, _, p, e in _iter_boxes(fh, trak, trak_end)}
                if b"tkhd" not in children or not _is_video_trak(fh, children):
                    continue
                tkhd = children[b"tkhd"][0]
                fh.seek(tkhd)
                version = fh.read(1)[0]
                matrix_at = tkhd + (40 if version == 0 else 52)
                fh.seek(matrix_at + 36)
                dims = fh.read(8)
                width = int.from_bytes(dims[:4], "big") / 65536
                height = int.from_bytes(dims[4:], "big") / 65536
                fh.seek(matrix_at)
                for value in _display_matrix(degrees, width, height):
                    fh.write(int(value).to_bytes(4, "big", signed=True))
                patched += 1
    if not patched:
        raise MediaError(f"{mp4_path}: no video track header (moov/trak/tkhd) to patch; "
                         "set_display_rotation needs an mp4/mov file with a video stream")


def _is_video_trak(fh, children: dict) -> bool:
    """Whether a trak's ``mdia/hdlr`` handler type is ``vide``."""
    if b"mdia" not in children:
        return False
    start, end = children[b"mdia"]
    for kind, _, payload, _ in _iter_boxes(fh, start, end):
        if kind == b"hdlr":
            fh.seek(payload + 8)  # version/flags (4), pre_defined (4), handler_type (4)
            return fh.read(4) == b"vide"
    return False
