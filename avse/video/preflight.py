"""Input checks before any work: a file ``avse-extract`` cannot use is refused in one line
that names it and says what to do (:class:`InputError`), before a model is run or an output
is started.

What is refused (everything else is taken, e.g. any frame rate, sample rate or channel
count, a silent or clipping mixture):

- no such file, a broken symbolic link or a loop of links, a folder, a file that cannot be
  read (permissions), an empty file;
- a file FFmpeg cannot open (random bytes, a truncated or incomplete download);
- a container whose header lies about a stream's duration (:func:`check_duration`): data
  past the declared end (it would be cut short silently) or none near it (truncated);
- a video without a video stream, or without audio when no ``--mixture`` is given;
- frames smaller than :data:`MIN_SIDE` pixels (no face fits) or larger than
  :data:`MAX_PIXELS` (8K UHD is 33 Mpixel; scale larger videos down first);
- a mixture shorter than one video frame (:func:`check_mixture_length`).
"""
from __future__ import annotations

import errno
import os
import stat

from avse.data.align import SAMPLE_RATE, SAMPLES_PER_FRAME
from avse.video.media import MediaError

MIN_SIDE = 32
"""Smallest frame side (pixels): a face must be visible in the frame."""
MAX_PIXELS = 36_000_000
"""Largest frame (pixels): 8K (UHD 7680x4320, 33 Mpixel; DCI 8192x4320, 35 Mpixel)."""
AUDIO_EXTS = (".wav", ".flac")


class InputError(MediaError):
    """An input file that cannot be used; the message names it and says what to do."""


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) < 160 else text[:157] + "..."


def check_file(path: str, option: str = "--video") -> int:
    """A readable, non-empty regular file; returns its size in bytes."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"{path}: a loop of symbolic links; point {option} at the real "
                             "file") from None
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise InputError(f"{path}: a broken symbolic link (to {os.readlink(path)}); point "
                             f"{option} at the real file") from None
        if err.errno == errno.ENOENT:
            raise InputError(f"{path}: no such file; check the path given to {option}") from None
        raise InputError(f"{path}: cannot read ({err.strerror or _short(err)}); check the path "
                         f"given to {option}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: a folder, not a file; give {option} a media file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file; give {option} a media file")
    if st.st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes), e.g. an interrupted copy or download; "
                         "copy it again")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        raise InputError(f"{path}: cannot read it: permission denied; make it readable (chmod "
                         "a+r) or copy it somewhere you can read") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or _short(err)}); copy it "
                         "again") from None
    return st.st_size


def _open(path: str, what: str):
    import av

    try:
        return av.open(str(path))
    except Exception as err:  # InvalidDataError, ...
        raise InputError(f"{path}: not a media file FFmpeg can read ({_short(err)}); is it "
                         f"complete? give {what} a video or audio file (mp4, mkv, mov, webm, "
                         "wav, m4a...)") from None


def check_video(path: str, have_mixture: bool = False) -> dict:
    """Refuse a ``--video`` that cannot be used (see the module docstring); returns
    ``{"width", "height", "has_audio"}`` read from the headers (nothing is decoded)."""
    from avse.video.frames import video_stream

    check_file(path, "--video")
    if str(path).endswith(".npy"):
        return {"width": 0, "height": 0, "has_audio": False}
    with _open(path, "--video") as container:
        vs = video_stream(container)
        if vs is None:
            raise InputError(f"{path}: no video stream (an audio-only file?); --video needs a "
                             "video that shows the speaker's face")
        width, height = vs.codec_context.width or 0, vs.codec_context.height or 0
        has_audio = bool(container.streams.audio)
        streams = [vs] + list(container.streams.audio[:1])
    for stream_index in range(len(streams)):  # one seek each: a fresh container
        with _open(path, "--video") as container:
            check_duration(container, path, stream_index)
    if width and height and min(width, height) < MIN_SIDE:
        raise InputError(f"{path}: frames are {width}x{height} pixels, too small to show a face "
                         f"(at least {MIN_SIDE}x{MIN_SIDE}); give the original video")
    if width * height > MAX_PIXELS:
        raise InputError(f"{path}: frames are {width}x{height} ({width * height / 1e6:.0f} "
                         f"Mpixel), more than avse-extract takes ({MAX_PIXELS / 1e6:.0f} Mpixel); "
                         "scale it down first (e.g. ffmpeg -i IN -vf scale=1920:-2 OUT.mp4)")
    if not has_audio and not have_mixture:
        raise InputError(f"{path}: no audio stream; give the mixture with --mixture")
    return {"width": width, "height": height, "has_audio": has_audio}


def check_duration(container, path: str, which: int = 0, tolerance: float = 1.0) -> None:
    """Refuse a container whose header lies about a stream's duration: data past the declared
    end (the file would be cut short), or none near it (a truncated file). ``which``: 0 the
    video stream, 1 the first audio stream. Only the packets around the declared end are read
    (one seek), so this costs little on long files."""
    from avse.video.frames import video_stream

    stream = video_stream(container) if which == 0 else container.streams.audio[0]
    if stream is None or not stream.duration or not stream.time_base:
        return  # nothing declared (e.g. some mkv/webm): nothing to contradict
    tb = stream.time_base
    start = float((stream.start_time or 0) * tb)
    declared = float(stream.duration * tb)
    rate = stream.average_rate or stream.guessed_rate if which == 0 else None
    slack = max(tolerance, 2.0 / float(rate)) if rate else tolerance
    end, seen = None, 0
    try:
        container.seek(int((start + max(declared - slack, 0)) / tb), stream=stream)
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            stop = float((packet.pts + (packet.duration or 0)) * tb)
            end = stop if end is None else max(end, stop)
            seen += 1
            if end > start + declared + slack or seen > 2000:
                break
    except Exception as err:  # av errors reading past the real end of the data
        raise InputError(f"{path}: cannot read the {stream.type} data near its declared end "
                         f"({declared:.2f} s; {_short(err)}): the file is truncated or damaged; "
                         "copy it again") from None
    kind = stream.type
    if end is None or end < start + declared - slack:
        got = "no data" if end is None else f"data up to {end - start:.2f} s"
        raise InputError(f"{path}: its header says the {kind} lasts {declared:.2f} s but there is "
                         f"{got} near the end: the file is truncated (an interrupted copy or "
                         "download?); copy it again")
    if end > start + declared + slack:
        raise InputError(f"{path}: its header says the {kind} lasts {declared:.2f} s but the "
                         f"stream holds data past {end - start:.2f} s: the container lies about "
                         "its duration and would be cut short; re-encode it first (e.g. ffmpeg "
                         "-i IN OUT.mp4)")


def check_audio(path: str) -> None:
    """Refuse a ``--mixture`` that cannot be used: unreadable, empty, not audio."""
    check_file(path, "--mixture")
    if str(path).lower().endswith(AUDIO_EXTS):
        import soundfile as sf

        try:
            info = sf.info(path)
        except Exception as err:
            raise InputError(f"{path}: not an audio file soundfile can read ({_short(err)}); "
                             "is it complete?") from None
        if info.frames == 0:
            raise InputError(f"{path}: the mixture has no samples; give a recording")
        return
    with _open(path, "--mixture") as container:
        if not container.streams.audio:
            raise InputError(f"{path}: no audio stream; --mixture needs a recording")


def check_mixture_length(n_samples: int, path: str) -> None:
    """Refuse a mixture (``n_samples`` @16 kHz) shorter than one video frame (40 ms)."""
    if n_samples < SAMPLES_PER_FRAME:
        raise InputError(f"{path}: the mixture is {1000 * n_samples / SAMPLE_RATE:.0f} ms long, "
                         f"shorter than one video frame ({1000 * SAMPLES_PER_FRAME // SAMPLE_RATE}"
                         " ms): nothing to extract; give a longer recording")
