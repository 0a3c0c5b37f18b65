"""Streaming access to real videos: probe, the 25 fps frame grid, gray/RGB frames, audio to disk.

The time origin
---------------
Every function here works on the source container's clock (seconds). A *grid* at ``fps``
(25) starts at a time ``origin``: grid frame ``k`` has time ``origin + k / fps`` and spans the
16 kHz audio samples ``[640 k, 640 k + 640)`` of a wav whose sample 0 is at ``origin``
(:func:`decode_audio` writes such a wav). By default ``origin`` is the start of the audio
stream (the output wav is then exactly as long as the input audio); without an audio stream
it is the first video frame's time.

Rotation
--------
Phones store frames as the sensor delivers them and put a display matrix into the container
(mp4 ``tkhd``). :attr:`MediaInfo.rotation` is the angle in degrees by which the **decoded**
frames must be rotated **counter-clockwise** to display upright, in ``{0, 90, 180, 270}``::

    upright = np.rot90(decoded, k=rotation // 90)     # rows = y (down), columns = x

It is PyAV's ``VideoFrame.rotation`` (FFmpeg's ``av_display_rotation_get``, counter-clockwise,
in [-180, 180]) taken modulo 360: a phone portrait clip stored landscape has tkhd matrix
``[0, 1, -1, 0]``, PyAV reports -90 and ``rotation`` is 270 (one turn clockwise).
:func:`gray_frame` and :func:`rgb_frame` apply it; :attr:`MediaInfo.width`/``height`` are the
display (upright) size. Non-square pixels (sample aspect ratio) are not corrected.

These names are also importable from :mod:`avse.video.media`.
"""
from __future__ import annotations

import math
import os
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from avse.data.align import FPS, SAMPLE_RATE
from avse.video.media import MediaError, bgr2gray_cv

_YUV8 = ("yuv", "nv12", "nv21")
_TOLERANCE = 1e-4  # seconds: a source frame this much after a grid time still counts for it
_PROBE_PACKETS = 4000  # packets read at most while looking for the first frames in probe()


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found in a media file (times in seconds on the container's clock).

    Attributes
    ----------
    width, height : display size in pixels, after rotation.
    rotation : 0/90/180/270, counter-clockwise degrees that turn decoded frames upright
        (``np.rot90(decoded, k=rotation // 90)``; see the module docstring).
    fps : average source frame rate (frames / s).
    duration : video stream duration (s), falling back to the container's.
    video_start : time of the first decoded video frame (s).
    video_codec : FFmpeg decoder name (``h264``, ``hevc``, ``vp8``, ...).
    has_audio, audio_rate (Hz), audio_channels : the first audio stream, ``None`` without one.
    audio_start : time of the first decoded audio sample (s), i.e. after the encoder priming
        that the container marks (mp4 edit list) is removed.
    audio_duration : audio stream duration (s) as declared by the container.
    """

    path: str
    width: int
    height: int
    rotation: int
    fps: float
    duration: float
    video_start: float
    video_codec: str
    has_audio: bool
    audio_rate: int | None
    audio_channels: int | None
    audio_start: float | None
    audio_duration: float | None

    @property
    def origin(self) -> float:
        """The default grid origin: the audio start, or the video start without audio."""
        return self.audio_start if self.audio_start is not None else self.video_start


def _open(path: str):
    """Open a media file with PyAV, or raise MediaError naming it."""
    import av

    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except Exception as err:  # InvalidDataError, PermissionError, ...
        raise MediaError(f"{path}: cannot open as media ({err}); is it a complete video/audio "
                         "file?") from err


def video_stream(container):
    """The first real video stream of an open PyAV container (cover art skipped), or None."""
    import av

    attached = av.stream.Disposition.attached_pic
    for stream in container.streams.video:
        if not stream.disposition & attached:
            return stream
    return None


def _seconds(value, time_base) -> float | None:
    return None if value is None or time_base is None else float(value * time_base)


def probe(path: str, require_video: bool = True) -> MediaInfo:
    """Read the stream layout of a media file and decode its first video and audio frames.

    Arguments
    ---------
    path : str
        any container FFmpeg reads (mp4, mov, mkv, webm, avi, m4a, ...).
    require_video : bool
        raise when there is no video stream; otherwise width/height/fps are 0 for audio files.

    Returns
    -------
    MediaInfo (display size, rotation, fps, start times and durations in seconds).

    Raises
    ------
    MediaError naming the file: no such file, cannot open (corrupt, truncated, not media),
    no video stream (when required), a stream whose first frames cannot be decoded.

    Example
    -------
    ::

        info = probe("clip.mp4")
        info.width, info.height, info.rotation, info.audio_start
        # -> (720, 1280, 270, 0.0)
    """
    import av

    with _open(path) as container:
        vs = video_stream(container)
        aus = container.streams.audio[0] if container.streams.audio else None
        if vs is None and require_video:
            raise MediaError(f"{path}: no video stream (an audio-only file cannot be used as "
                             "the video; give a video file)")
        if vs is None and aus is None:
            raise MediaError(f"{path}: neither a video nor an audio stream")
        firsts: dict = {}
        wanted = [s for s in (vs, aus) if s is not None]
        try:
            for n, packet in enumerate(container.demux(*wanted)):
                if packet.stream.index not in firsts:
                    for frame in packet.decode():
                        firsts[packet.stream.index] = frame
                        break
                if len(firsts) == len(wanted) or n >= _PROBE_PACKETS:
                    break
        except av.error.FFmpegError as err:
            raise MediaError(f"{path}: corrupt stream ({err})") from err
        if vs is not None and vs.index not in firsts:
            raise MediaError(f"{path}: the video stream has no decodable frames")
        cont_duration = container.duration / 1e6 if container.duration else 0.0
        rotation = width = height = 0
        fps = duration = video_start = 0.0
        codec = ""
        if vs is not None:
            first = firsts[vs.index]
            rotation = int(round((first.rotation or 0) / 90.0)) * 90 % 360
            width, height = first.width, first.height
            if rotation in (90, 270):
                width, height = height, width
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            fps = float(rate) if rate else float(FPS)
            duration = _seconds(vs.duration, vs.time_base) or cont_duration
            video_start = first.time if first.time is not None else (
                _seconds(vs.start_time, vs.time_base) or 0.0)
            codec = vs.codec_context.name
        audio_start = audio_duration = None
        if aus is not None:
            frame = firsts.get(aus.index)
            audio_start = frame.time if frame is not None and frame.time is not None else (
                _seconds(aus.start_time, aus.time_base) or 0.0)
            audio_duration = _seconds(aus.duration, aus.time_base)
            if audio_duration is None and cont_duration:
                start = container.start_time / 1e6 if container.start_time else 0.0
                audio_duration = max(cont_duration + start - audio_start, 0.0)
        return MediaInfo(
            path=str(path), width=width, height=height, rotation=rotation, fps=fps,
            duration=duration, video_start=video_start, video_codec=codec,
            has_audio=aus is not None,
            audio_rate=int(aus.codec_context.sample_rate or aus.rate) if aus is not None else None,
            audio_channels=int(aus.codec_context.channels) if aus is not None else None,
            audio_start=audio_start, audio_duration=audio_duration,
        )


def iter_video(path: str, origin: float | None = None, fps: int = FPS,
               info: MediaInfo | None = None):
    """Yield ``(k, frame)``: the decoded PyAV ``VideoFrame`` shown at grid frame ``k``.

    Grid frame ``k`` (time ``origin + k / fps``) shows the last decoded source frame whose
    time is <= that time + 0.1 ms. Source frames before the first grid time are consumed;
    grid frames before the first source frame are not yielded (the first ``k`` is > 0 when the
    video starts after ``origin``: at 0.5 s it is 13, since grid frame 12 at 0.48 s precedes
    it); a source frame is yielded for several consecutive ``k`` (low fps, VFR gaps) or not
    at all (high fps). The last source frame is shown for one median frame step (over the
    last 1000 steps): the last grid frame is the last one whose time is before
    ``last_time + step`` (- 0.1 ms), so a 25 fps source of N frames gives exactly N.

    Arguments
    ---------
    path : str
        video file.
    origin : float or None
        grid time 0 in seconds on the source clock; ``None``: ``info.origin`` (audio start,
        else first video frame).
    fps : int
        grid rate (25).
    info : MediaInfo or None
        a :func:`probe` result for ``path`` (probed when needed and not given).

    Yields
    ------
    (k, frame) with ``k`` increasing by 1 from the first yielded value; frames are in stored
    orientation: convert with ``gray_frame(frame, info.rotation)`` / :func:`rgb_frame`.
    Memory is bounded (one decoded frame held), decoding is threaded (``thread_type AUTO``).

    Raises
    ------
    MediaError naming the file when it cannot be opened or the stream is corrupt.

    Example
    -------
    ::

        info = probe("clip.mp4")
        for k, frame in iter_video("clip.mp4", info=info):
            gray = gray_frame(frame, info.rotation)  # [H, W] uint8 upright
    """
    import av

    if origin is None:
        origin = (info if info is not None else probe(path)).origin
    with _open(path) as container:
        vs = video_stream(container)
        if vs is None:
            raise MediaError(f"{path}: no video stream")
        vs.thread_type = "AUTO"
        rate = vs.average_rate or vs.guessed_rate
        default_step = 1.0 / float(rate) if rate else 1.0 / fps
        steps: deque = deque(maxlen=1000)
        prev = prev_time = None
        k = 0
        try:
            for frame in container.decode(vs):
                t = frame.time
                if t is None:  # no timestamp: one nominal step after the previous frame
                    t = prev_time + default_step if prev_time is not None else origin
                if prev is None:  # skip grid frames before the first source frame
                    k = max(0, math.ceil((t - _TOLERANCE - origin) * fps - 1e-9))
                else:
                    if t > prev_time:
                        steps.append(t - prev_time)
                    while origin + k / fps + _TOLERANCE < t:
                        yield k, prev
                        k += 1
                prev, prev_time = frame, t
        except av.error.FFmpegError as err:
            raise MediaError(f"{path}: corrupt video stream after {prev_time or 0:.2f} s "
                             f"({err})") from err
        if prev is None:
            raise MediaError(f"{path}: the video stream has no decodable frames")
        end = prev_time + (float(np.median(steps)) if steps else default_step)
        while origin + k / fps < end - _TOLERANCE:
            yield k, prev
            k += 1


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    """``np.rot90(image, rotation // 90)`` as a contiguous array (see the module docstring)."""
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def gray_frame(frame, rotation: int = 0, method: str = "luma") -> np.ndarray:
    """Gray picture of a decoded ``VideoFrame`` in display orientation.

    Arguments
    ---------
    frame : av.VideoFrame
        as yielded by :func:`iter_video`.
    rotation : int
        :attr:`MediaInfo.rotation` (counter-clockwise degrees to upright).
    method : str
        ``"luma"``: the full-range luma plane. Limited-range luma (16..235) is expanded by
        swscale, identical to :data:`avse.video.media.LIMITED_TO_FULL` for all 256 values
        and ~2x faster than indexing the table (1 ms for 720p); full-range 8-bit luma planes
        are copied as they are; other formats (10-bit, RGB) go through swscale.
        ``"rgb"``: what ``cv2.VideoCapture`` + ``cv2.cvtColor(COLOR_BGR2GRAY)`` give: the
        frame converted to RGB by swscale (:func:`rgb_frame`, the converter OpenCV's FFmpeg
        backend uses, bit-exact with it), then :func:`avse.video.media.bgr2gray_cv`. It
        differs from the luma by up to a few levels (chroma upsampling and rounding); the
        published lip-reading front-end saw this gray (:mod:`avse.video.lipread`).

    Returns
    -------
    gray ``[H, W]`` uint8, 0..255; ``H x W`` is the display size.
    """
    if method == "rgb":
        return _rotate(bgr2gray_cv(rgb_frame(frame)[0]), rotation)
    if method != "luma":
        raise ValueError(f"gray_frame: method must be 'luma' or 'rgb', got {method!r}")
    fmt = frame.format
    full_range = fmt.name.startswith("yuvj") or _full_range(frame)
    if full_range and fmt.name.startswith(_YUV8) and fmt.components[0].bits == 8:
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        gray = luma[: frame.height, : frame.width].copy()
    else:
        gray = _reformatter().reformat(frame, format="gray",
                                       src_color_range="JPEG" if full_range else None)
        gray = gray.to_ndarray()
    return _rotate(gray, rotation)


def _full_range(frame) -> bool:
    """Whether a frame is flagged full range (``AVCOL_RANGE_JPEG``)."""
    return int(getattr(frame, "color_range", 0) or 0) == 2


_local = threading.local()
_INHERITED = []  # swscale contexts inherited through fork(): kept, never freed (that hangs)


def _reformatter():
    """One swscale context cache per thread (VideoFrame.reformat builds a new one per call)
    and per process: a forked worker that reused, or freed, its parent's context would hang."""
    from av.video.reformatter import VideoReformatter

    if getattr(_local, "pid", None) != os.getpid():
        if hasattr(_local, "reformatter"):
            _INHERITED.append(_local.reformatter)
        _local.reformatter, _local.pid = VideoReformatter(), os.getpid()
    return _local.reformatter


def rgb_frame(frame, max_side: int | None = None, rotation: int = 0) -> tuple[np.ndarray, float]:
    """RGB image of a decoded ``VideoFrame`` in display orientation, optionally downscaled.

    Arguments
    ---------
    frame : av.VideoFrame
        as yielded by :func:`iter_video`.
    max_side : int or None
        downscale (swscale, area filter) so that the long side is <= ``max_side`` pixels;
        never upscales. ``None``: full size.
    rotation : int
        :attr:`MediaInfo.rotation`.

    Returns
    -------
    (image ``[h, w, 3]`` uint8 RGB, scale) with ``scale = image long side / display long
    side`` (<= 1): a display pixel ``(x, y)`` is image pixel ``(x * scale, y * scale)``; the
    short side is rounded to whole pixels.
    """
    width, height = frame.width, frame.height
    long_side = max(width, height)
    if max_side is not None and long_side > max_side:
        ratio = max_side / long_side
        width = max(1, int(round(frame.width * ratio)))
        height = max(1, int(round(frame.height * ratio)))
    image = _reformatter().reformat(
        frame, width=width, height=height, format="rgb24", interpolation="AREA",
        src_color_range="JPEG" if _full_range(frame) else None).to_ndarray()
    return _rotate(image, rotation), max(width, height) / long_side


def _audio_blocks(container, aus, path: str, resampler):
    """Yield ``(start_time, int16 samples [n])`` of an audio stream resampled to mono."""
    import av

    start = None
    try:
        for frame in container.decode(aus):
            if start is None:
                start = frame.time if frame.time is not None else 0.0
            for out in resampler.resample(frame):
                yield start, out.to_ndarray().reshape(-1)
        for out in resampler.resample(None):
            yield start, out.to_ndarray().reshape(-1)
    except av.error.FFmpegError as err:
        raise MediaError(f"{path}: corrupt audio stream ({err})") from err


def decode_audio(path: str, out_wav: str, origin: float | None = None,
                 sample_rate: int = SAMPLE_RATE) -> int:
    """Stream the first audio track to a mono 16-bit wav with sample 0 at time ``origin``.

    Arguments
    ---------
    path : str
        media file with an audio stream (any codec, rate and channel layout FFmpeg decodes;
        AAC priming marked by the container is removed by FFmpeg).
    out_wav : str
        output wav, written incrementally to a temporary name and renamed when complete.
    origin : float or None
        source time (s) of output sample 0; ``None``: the audio stream's start. Zeros are
        prepended when the audio starts after ``origin``, samples dropped when before.
    sample_rate : int
        output rate (16000).

    Returns
    -------
    number of samples written: the source audio's length at ``sample_rate`` (cut to the
    duration the container declares, which drops the AAC end padding) plus/minus the shift.
    Channels are downmixed by swresample (stereo: the mean; 5.1: its standard normalised
    downmix), resampling is time-aligned (a click stays at its time to a sample).

    Raises
    ------
    MediaError naming the file: cannot open, no audio stream, corrupt or empty audio.

    Example
    -------
    ::

        n = decode_audio("clip.mp4", "clip.wav")
    """
    import av
    import soundfile as sf

    tmp = f"{out_wav}.tmp{os.getpid()}"
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio stream (decode_audio needs one; give a "
                             "separate mixture audio file instead)")
        aus = container.streams.audio[0]
        aus.thread_type = "AUTO"
        declared = _seconds(aus.duration, aus.time_base)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        os.makedirs(os.path.dirname(os.path.abspath(out_wav)), exist_ok=True)
        written = 0
        try:
            with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, subtype="PCM_16",
                              format="WAV") as wav:
                skip = limit = None
                for start, block in _audio_blocks(container, aus, path, resampler):
                    if skip is None:  # first block: place the audio start relative to origin
                        shift = int(round((start - (start if origin is None else origin))
                                          * sample_rate))
                        if shift > 0:
                            zeros = np.zeros(shift, np.int16)
                            for i in range(0, shift, sample_rate):
                                wav.write(zeros[i : i + sample_rate])
                            written = shift
                        skip = max(-shift, 0)
                        if declared is not None:
                            limit = max(int(round(declared * sample_rate)) + shift, 0)
                    if skip:
                        drop = min(skip, len(block))
                        block, skip = block[drop:], skip - drop
                    if limit is not None:
                        block = block[: max(limit - written, 0)]
                    if len(block):
                        wav.write(block)
                        written += len(block)
                if skip is None:
                    raise MediaError(f"{path}: the audio stream has no samples")
            os.replace(tmp, out_wav)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    return written
