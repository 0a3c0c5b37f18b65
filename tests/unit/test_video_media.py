"""avse.video.frames / media: probe, the 25 fps grid, rotation, audio to disk, clear errors.

Clips are written here with PyAV: frame n carries n in 8 black/white stripes (top half) and an
optional white "flash" (bottom half); audio is a tone or a single click.
"""
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf

from avse.video.frames import decode_audio, gray_frame, iter_video, probe, rgb_frame
from avse.video.media import MediaError, set_display_rotation

W, H = 64, 48  # stored frame size of the stripe clips
TB = Fraction(1, 3000)  # video time base of the clips: exact for 25 and 30 fps and 0.1 s steps


def stripes(n: int, flash: bool = False) -> np.ndarray:
    """``[H, W, 3]`` uint8: bit i of n as stripe i of the top half; bottom half white = flash."""
    img = np.zeros((H, W, 3), np.uint8)
    for bit in range(8):
        if (n >> bit) & 1:
            img[: H // 2, bit * 8 : bit * 8 + 8] = 255
    if flash:
        img[H // 2 :] = 255
    return img


def frame_number(gray: np.ndarray) -> int:
    """Invert :func:`stripes` on a decoded gray frame."""
    top = gray[: H // 2].astype(float)
    return sum(1 << bit for bit in range(8) if top[4:-4, bit * 8 + 2 : bit * 8 + 6].mean() > 128)


def is_flash(gray: np.ndarray) -> bool:
    return gray[H // 2 + 4 : -4].mean() > 128


def click(n: int, at: int, rate: int) -> np.ndarray:
    """``[n]`` float32 silence with a 1 ms raised-cosine click centred on sample ``at``."""
    x = np.zeros(n, np.float32)
    half = rate // 2000
    x[at - half : at + half + 1] = 0.9 * np.hanning(2 * half + 1)
    return x


def tone(n: int, freq: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def write_clip(path, times=None, fps=25, n_frames=25, video_start=0.0, images=None, flash=None,
               codec="libx264", fmt=None, time_base=TB, audio=None, audio_rate=48000,
               audio_start=0.0, audio_codec="aac", options=None):
    """Write a test clip; returns its path.

    Arguments
    ---------
    times : frame times in seconds (default ``video_start + n / fps``); ``n_frames=0``: no video.
    images : ``[N, h, w, 3]`` frames (default :func:`stripes`, white bottom at frame ``flash``).
    audio : ``[C, T]`` or ``[T]`` float32 at ``audio_rate`` starting at ``audio_start`` s.
    options : muxer options (``{"movie_timescale": "3000"}``: exact mp4 edit lists).
    """
    import av

    if times is None:
        times = video_start + np.arange(n_frames) / fps
    if images is None:
        images = [stripes(n, n == flash) for n in range(len(times))]
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        if len(times):
            vs = out.add_stream(codec, rate=fps)
            vs.height, vs.width = images[0].shape[:2]
            vs.pix_fmt = "yuv420p"
            vs.codec_context.time_base = vs.time_base = time_base
            if codec == "libx264":
                vs.options = {"preset": "ultrafast", "crf": "12"}
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, np.float32))
            layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
            aus = out.add_stream(audio_codec, rate=audio_rate, layout=layout)
        for img, t in zip(images, times):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = int(round(t / time_base)), time_base
            out.mux(vs.encode(frame))
        if len(times):
            out.mux(vs.encode())
        if audio is not None:
            start = int(round(audio_start * audio_rate))
            for s0 in range(0, audio.shape[1], 1024):
                block = np.ascontiguousarray(audio[:, s0 : s0 + 1024])
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
                frame.sample_rate, frame.pts = audio_rate, start + s0
                out.mux(aus.encode(frame))
            out.mux(aus.encode())
    return path


def grid(path, origin=None, **kw):
    """``{k: gray frame}`` from iter_video."""
    return {k: gray_frame(frame) for k, frame in iter_video(str(path), origin=origin, **kw)}


def peak(path) -> int:
    wav, _ = sf.read(str(path), dtype="float32")
    return int(np.argmax(np.abs(wav)))


# ------------------------------------------------------------------------------ the 25 fps grid
def test_30fps_source_maps_by_timestamp(tmp_path):
    path = write_clip(tmp_path / "a.mp4", fps=30, n_frames=36)  # 1.2 s
    frames = grid(path)
    assert sorted(frames) == list(range(30))
    shown = [frame_number(frames[k]) for k in range(30)]
    assert shown == [int(np.floor(k * 30 / 25 + 1e-6)) for k in range(30)]


def test_25fps_source_is_identity_and_info(tmp_path):
    path = write_clip(tmp_path / "b.mp4", n_frames=20)
    frames = grid(path)
    assert [frame_number(frames[k]) for k in sorted(frames)] == list(range(20))
    info = probe(str(path))
    assert (info.width, info.height, info.rotation, info.video_codec) == (W, H, 0, "h264")
    assert info.fps == pytest.approx(25) and info.duration == pytest.approx(0.8, abs=0.05)
    assert not info.has_audio and info.audio_start is None and info.origin == info.video_start


def test_vfr_source_maps_by_timestamp(tmp_path):
    times = np.array([0, 30, 95, 100, 180, 300, 310, 400]) / 1000
    path = write_clip(tmp_path / "vfr.mp4", times=times, time_base=Fraction(1, 1000))
    frames = grid(path)
    # the last frame lasts the median step (65 ms): the grid ends at round(0.465 * 25) = 12
    assert sorted(frames) == list(range(12))
    expected = [int(np.searchsorted(times, k / 25 + 1e-4, side="right") - 1) for k in range(12)]
    assert [frame_number(frames[k]) for k in range(12)] == expected
    assert expected.count(4) == 3 and 2 not in expected and 5 not in expected  # held, skipped


def test_video_starting_after_origin_starts_at_k13(tmp_path):
    audio = click(48000, 9600, 48000)  # audio from 0 s: the default origin
    path = write_clip(tmp_path / "late.mp4", video_start=0.5, n_frames=10, audio=audio)
    info = probe(str(path))
    assert info.video_start == pytest.approx(0.5, abs=1e-3) and info.origin == pytest.approx(0)
    frames = grid(path, info=info)
    assert min(frames) == 13 and max(frames) == 22  # 0.48 s precedes the first frame at 0.5 s
    assert frame_number(frames[13]) == 0 and frame_number(frames[22]) == 9
    # an explicit origin after the first frames: earlier source frames are consumed
    frames = grid(path, origin=0.7)
    assert min(frames) == 0 and frame_number(frames[0]) == 5


# ------------------------------------------------------------------------------------- rotation
def upright_image() -> np.ndarray:
    """Portrait ``[48, 32, 3]``: a bright square in the top-left corner, a mid-gray bar at right."""
    img = np.zeros((48, 32, 3), np.uint8)
    img[:12, :12] = 255
    img[:, 28:] = 128
    return img


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_mp4_is_returned_upright(tmp_path, degrees):
    up = upright_image()
    stored = np.rot90(up, -(degrees // 90))  # the documented convention: up = rot90(stored, k)
    path = tmp_path / f"rot{degrees}.mp4"
    write_clip(path, images=[np.ascontiguousarray(stored)] * 3)
    set_display_rotation(str(path), degrees)
    info = probe(str(path))
    assert info.rotation == degrees and (info.height, info.width) == up.shape[:2]
    _, frame = next(iter_video(str(path), info=info))
    gray = gray_frame(frame, info.rotation)
    assert gray.shape == up.shape[:2]
    assert np.abs(gray.astype(int) - up[..., 0]).mean() < 6
    rgb, scale = rgb_frame(frame, max_side=24, rotation=info.rotation)
    assert rgb.shape == (24, 16, 3) and scale == pytest.approx(0.5)
    assert rgb[:5, :5].mean() > 200 and rgb[-5:, :5].mean() < 40 and rgb[-5:, 8:12].mean() < 40
    assert rgb[:, -1].mean() == pytest.approx(128, abs=8)  # the bar on the right
    full, scale = rgb_frame(frame, rotation=info.rotation)
    assert full.shape == (48, 32, 3) and scale == 1.0


def test_rotation_matches_ffmpeg_and_phone_conventions(tmp_path):
    """90 and 270 are not swapped: our tkhd matrix equals PyAV's own writer's, and 270 is the
    matrix phones write for portrait clips (a=0, b=1, c=-1, d=0: turn 90 deg clockwise)."""
    import av

    def matrix(path):
        data = path.read_bytes()
        at = data.find(b"tkhd") + 4
        at += 40 if data[at] == 0 else 52
        return [int.from_bytes(data[at + 4 * i : at + 4 * i + 4], "big", signed=True)
                for i in range(9)]

    ours = write_clip(tmp_path / "ours.mp4", n_frames=2)
    set_display_rotation(str(ours), 270)
    assert [v / 65536 for v in matrix(ours)[:5]] == [0, 1, 0, -1, 0]
    for degrees in (90, 270):
        set_display_rotation(str(ours), degrees)
        ref = tmp_path / f"pyav{degrees}.mp4"
        with av.open(str(ref), "w") as out:
            vs = out.add_stream("libx264", rate=25)
            vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
            vs.set_display_rotation(degrees)  # PyAV: counter-clockwise, as VideoFrame.rotation
            out.mux(vs.encode(av.VideoFrame.from_ndarray(stripes(1), format="rgb24")))
            out.mux(vs.encode())
        assert matrix(ours)[:5] == matrix(ref)[:5]
        assert probe(str(ours)).rotation == probe(str(ref)).rotation == degrees
    with pytest.raises(ValueError, match="multiple of 90"):
        set_display_rotation(str(ours), 45)


def test_gray_frame_is_full_range(tmp_path):
    images = [np.full((H, W, 3), v, np.uint8) for v in (0, 128, 255)]
    path = write_clip(tmp_path / "levels.mp4", images=images, n_frames=3)
    means = [gray_frame(f).mean() for _, f in iter_video(str(path))]
    np.testing.assert_allclose(means, [0, 128, 255], atol=3)


# ---------------------------------------------------------------------------------------- audio
@pytest.mark.parametrize("rate,channels,codec,fmt,ext", [
    (44100, 2, "aac", "mp4", "m4a"), (48000, 1, "aac", "mp4", "mp4"),
    (48000, 2, "pcm_s16le", "mov", "mov")])
def test_decode_audio_to_16k_mono(tmp_path, rate, channels, codec, fmt, ext):
    sig = np.stack([tone(rate, 1000, rate)] * channels)  # 1 s, 1 kHz, identical channels
    path = write_clip(tmp_path / f"t.{ext}", n_frames=0 if ext == "m4a" else 25, fmt=fmt,
                      audio=sig, audio_rate=rate, audio_codec=codec)
    info = probe(str(path), require_video=False)
    assert (info.audio_rate, info.audio_channels) == (rate, channels)
    out = tmp_path / "out" / "t.wav"
    n = decode_audio(str(path), str(out))
    wav, sr = sf.read(str(out), dtype="float32")
    assert sr == 16000 and wav.ndim == 1 and len(wav) == n
    assert abs(n - 16000) <= (0 if codec.startswith("pcm") else 1024 * 16000 // rate)
    spectrum = np.abs(np.fft.rfft(wav[1000:9000]))
    assert np.argmax(spectrum) * 16000 / 8000 == pytest.approx(1000, abs=2)
    assert np.abs(wav[2000:8000]).max() == pytest.approx(0.5, abs=0.05)  # downmix = mean
    assert not list(out.parent.glob("*.tmp*"))


def test_decode_audio_origin_shifts(tmp_path):
    """Audio 0.3 s after the video, origin = video start: 4800 leading zeros, click in place."""
    audio = click(48000, 9600, 48000)  # click 0.2 s into the audio
    path = write_clip(tmp_path / "late_audio.mp4", n_frames=40, audio=audio, audio_start=0.3)
    info = probe(str(path))
    assert info.audio_start == pytest.approx(0.3, abs=0.03)  # FFmpeg keeps the priming here
    out = tmp_path / "a.wav"
    n = decode_audio(str(path), str(out), origin=info.video_start)
    wav, _ = sf.read(str(out), dtype="float32")
    assert abs(peak(out) - (4800 + 3200)) <= 16
    assert not np.any(wav[: 4800 - 16 - 1024 // 3]) and n == len(wav)
    assert abs(n - (4800 + 16000)) <= 1024 // 3 + 16
    n_plain = decode_audio(str(path), str(out))  # default origin: the audio start
    assert abs(peak(out) - 3200) <= 16 + 1024 // 3
    n_late = decode_audio(str(path), str(out), origin=info.audio_start + 0.1)  # drop 0.1 s
    assert n_plain - n_late == 1600 and abs(peak(out) - (3200 - 1600)) <= 16 + 1024 // 3


# --------------------------------------------------------------------------------------- errors
def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.mp4"
    for call in (probe, lambda p: next(iter_video(p, origin=0.0)),
                 lambda p: decode_audio(p, str(tmp_path / "x.wav"))):
        with pytest.raises(MediaError, match="missing.mp4.*no such file"):
            call(str(missing))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    with pytest.raises(MediaError, match="junk.mp4"):
        probe(str(junk))
    good = write_clip(tmp_path / "good.mp4", n_frames=25, audio=tone(48000, 440, 48000))
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MediaError, match="trunc.mp4"):
        probe(str(trunc))
    garbled = bytearray(good.read_bytes())  # media data overwritten: opens, fails to decode
    at, n = garbled.find(b"mdat") + 208, len(garbled) // 3
    garbled[at : at + n] = np.random.default_rng(1).integers(0, 256, n, np.uint8).tobytes()
    (tmp_path / "garbled.mp4").write_bytes(bytes(garbled))
    with pytest.raises(MediaError, match="garbled.mp4.*corrupt video stream"):
        list(iter_video(str(tmp_path / "garbled.mp4"), origin=0.0))
    with pytest.raises(MediaError, match="garbled.mp4.*corrupt audio stream"):
        decode_audio(str(tmp_path / "garbled.mp4"), str(tmp_path / "g.wav"))
    assert not list(tmp_path.glob("g.wav*"))  # no partial output
    m4a = write_clip(tmp_path / "voice.m4a", n_frames=0, fmt="mp4", audio=tone(16000, 440, 16000),
                     audio_rate=16000)
    with pytest.raises(MediaError, match="voice.m4a.*no video stream"):
        probe(str(m4a))
    with pytest.raises(MediaError, match="voice.m4a.*no video stream"):
        next(iter_video(str(m4a), origin=0.0))
    assert probe(str(m4a), require_video=False).audio_rate == 16000
    silent = write_clip(tmp_path / "silent.mp4", n_frames=5)
    with pytest.raises(MediaError, match="silent.mp4.*no audio stream"):
        decode_audio(str(silent), str(tmp_path / "s.wav"))
    assert not (tmp_path / "s.wav").exists()
    with pytest.raises(MediaError, match="clip.mp4"):
        set_display_rotation(str(tmp_path / "clip.mp4"), 90)


def test_gray_frame_range_expansion_is_the_lut():
    import av

    from avse.video.media import LIMITED_TO_FULL

    luma = np.tile(np.arange(256, dtype=np.uint8), (16, 1))  # every value, 16 x 256
    i420 = np.concatenate([luma, np.full((8, 256), 128, np.uint8)])  # Y, then U and V rows
    frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
    assert np.array_equal(gray_frame(frame)[0], LIMITED_TO_FULL)  # limited range: expanded
    frame.color_range = 2  # flagged full range: unchanged
    assert np.array_equal(gray_frame(frame)[0], np.arange(256))
    full = av.VideoFrame.from_ndarray(i420, format="yuvj420p")
    assert np.array_equal(gray_frame(full, rotation=180)[-1], np.arange(256)[::-1])
