"""Fuzzed media for the reliability tests: every broken or unusual input a corpus or a user
throws at the staging recipes and ``avse-extract``, written with PyAV and numpy in a second.

Each ``write_*`` function writes one file at ``path`` (its folder created) and returns the
path; :data:`FUZZ_CASES` names them all with what a user should expect (``reject`` with a
word of the reason, or ``keep``; :data:`HANGING_CASES`: those that hang an unchecked reader). The unreadable file needs an in-process patch (tests run
as root, so permissions do not stop a read): :func:`unreadable` patches ``open``/``av.open``
for one path.
"""
from __future__ import annotations

import builtins
import contextlib
import os
import struct

import numpy as np


def _folder(path) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def _tone(seconds: float, sr: int, channels: int, freq: float = 440.0) -> np.ndarray:
    """A ``[channels, T]`` float32 tone (channel c at ``freq * (c + 1)``), amplitude 0.3."""
    t = np.arange(int(round(seconds * sr))) / sr
    return np.stack([0.3 * np.sin(2 * np.pi * freq * (c + 1) * t)
                     for c in range(channels)]).astype(np.float32)


def write_av(path, seconds: float = 1.2, fps: int = 25, width: int = 96, height: int = 96,
             sr: int = 16000, channels: int = 1, video: bool = True, audio: bool = True,
             codec: str = "libx264", pix_fmt: str = "yuv420p", fmt: str = "mp4", seed: int = 0):
    """A clip of ``seconds``: frame k uniformly gray (value 8k mod 256) at ``fps`` and a tone
    plus a little noise (``seed``; ``channels`` at ``sr``); either stream may be left out.
    ``codec``/``pix_fmt`` of the video (``mjpeg``/``yuvj444p`` for odd sizes)."""
    import av

    path = _folder(path)
    n_frames = max(1, int(round(seconds * fps))) if video else 0
    with av.open(path, "w", format=fmt) as out:
        if video:
            opts = {"preset": "ultrafast", "crf": "10"} if codec == "libx264" else {}
            vs = out.add_stream(codec, rate=fps, options=opts)
            vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        if audio:
            layout = {1: "mono", 2: "stereo"}[channels]
            aus = out.add_stream("aac", rate=sr, layout=layout)
        for k in range(n_frames):
            img = np.full((height, width, 3), (8 * k) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = k
            out.mux(vs.encode(frame))
        if video:
            out.mux(vs.encode())
        if audio:
            wav = _tone(seconds, sr, channels)
            wav += 0.02 * np.random.default_rng(seed).standard_normal(wav.shape, np.float32)
            for start in range(0, wav.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, start:start + 1024]),
                                                format="fltp", layout=layout)
                af.sample_rate, af.pts = sr, start
                out.mux(aus.encode(af))
            out.mux(aus.encode())
    return path


def write_random_bytes(path, size: int = 6000, seed: int = 0):
    """``size`` random bytes under an .mp4 name."""
    path = _folder(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_empty(path):
    """A zero-length file."""
    path = _folder(path)
    open(path, "wb").close()
    return path


def write_no_audio(path):
    return write_av(path, audio=False)


def write_no_video(path):
    return write_av(path, video=False)


def write_tiny_frame(path):
    """1x1 pixel frames (mjpeg: h264 needs even sizes)."""
    return write_av(path, width=1, height=1, codec="mjpeg", pix_fmt="yuvj444p")


def write_huge_frame(path, side: int = 8000):
    """A one-second mjpeg clip with audio whose headers claim ``side x side`` frames (64
    megapixels at 8000): the JPEG frame header (SOF0) and the mp4 sample description say so,
    as a decompression bomb would, while the data is a 16x16 picture (written in
    milliseconds; a decoder that trusts the header allocates the large frame)."""
    path = write_av(path, seconds=1.0, fps=1, width=16, height=16, codec="mjpeg",
                    pix_fmt="yuvj420p")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    sof = data.find(b"\xff\xc0")  # baseline JPEG frame header: len(2) precision(1) h(2) w(2)
    entry = data.find(b"mp4v")  # visual sample entry: ... width(2) height(2) at +28
    if sof < 0 or entry < 0:
        raise RuntimeError(f"{path}: no JPEG SOF0 / mp4v sample entry to patch")
    struct.pack_into(">HH", data, sof + 5, side, side)
    struct.pack_into(">HH", data, entry + 28, side, side)
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_fps(path, fps: int, seconds: float = 1.2):
    return write_av(path, seconds=seconds, fps=fps)


def write_48k_stereo(path, seconds: float = 1.2):
    """25 fps video with 48 kHz stereo audio (left 440 Hz, right 880 Hz)."""
    return write_av(path, seconds=seconds, sr=48000, channels=2)


def write_lying_duration(path, factor: float = 10.0, seconds: float = 1.2):
    """A good clip (Matroska, under an .mp4 name: FFmpeg goes by the content) whose header
    claims ``factor`` times its real duration (the Segment ``Duration`` element)."""
    path = write_av(path, seconds=seconds, fmt="matroska")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    at = data.find(b"\x44\x89\x88")  # Duration, an 8-byte float
    if at < 0:
        raise RuntimeError(f"{path}: no 8-byte Matroska Duration element to patch")
    (value,) = struct.unpack(">d", data[at + 3:at + 11])
    struct.pack_into(">d", data, at + 3, value * factor)
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_symlink_loop(path):
    """``path`` -> ``path.loop`` -> ``path``: opening either fails with ELOOP."""
    path = _folder(path)
    other = path + ".loop"
    os.symlink(os.path.basename(other), path)
    os.symlink(os.path.basename(path), other)
    return path


def write_fifo(path):
    """A named pipe under an .mp4 name: a reader that opens it without checking blocks for
    ever (no writer ever comes)."""
    path = _folder(path)
    os.mkfifo(path)
    return path


@contextlib.contextmanager
def unreadable(*paths):
    """Make ``paths`` unreadable in this process (root reads everything): ``open``,
    ``os.open`` and ``av.open`` raise ``PermissionError`` for them."""
    import av

    bad = {os.path.abspath(str(p)) for p in paths}
    real_open, real_os_open, real_av_open = builtins.open, os.open, av.open

    def denied(file):
        if isinstance(file, (str, bytes, os.PathLike)) and \
                os.path.abspath(os.fsdecode(file)) in bad:
            raise PermissionError(13, "Permission denied", os.fsdecode(file))

    def fake_open(file, *a, **k):
        denied(file)
        return real_open(file, *a, **k)

    def fake_os_open(file, *a, **k):
        denied(file)
        return real_os_open(file, *a, **k)

    def fake_av_open(file, *a, **k):
        denied(file)
        return real_av_open(file, *a, **k)

    builtins.open, os.open, av.open = fake_open, fake_os_open, fake_av_open
    try:
        yield
    finally:
        builtins.open, os.open, av.open = real_open, real_os_open, real_av_open


#: ``name -> (writer, expectation)``: ``("reject", word of the reason)`` or ``("keep", None)``
FUZZ_CASES = {
    "random_bytes": (write_random_bytes, ("reject", "cannot open")),
    "empty": (write_empty, ("reject", "empty")),
    "no_audio": (write_no_audio, ("reject", "no audio stream")),
    "no_video": (write_no_video, ("reject", "no video stream")),
    "tiny_frame": (write_tiny_frame, ("reject", "frame 1x1")),
    "huge_frame": (write_huge_frame, ("reject", "frame 8000x8000")),
    "fps1": (lambda p: write_fps(p, 1, seconds=2.0), ("reject", "frame rate")),
    "fps120": (lambda p: write_fps(p, 120), ("keep", None)),
    "stereo48k": (write_48k_stereo, ("keep", None)),
    "lying_duration": (write_lying_duration, ("reject", "truncated")),
    "lying_short": (lambda p: write_lying_duration(p, factor=0.25), ("keep", None)),
    "symlink_loop": (write_symlink_loop, ("reject", "symbolic links")),
    "unreadable": (write_av, ("reject", "Permission denied")),
}

#: more cases, kept out of :data:`FUZZ_CASES` because a reader that does not check them
#: first hangs instead of failing (a FIFO blocks ``open``)
HANGING_CASES = {
    "fifo": (write_fifo, ("reject", "not a regular file")),
}
