"""avse.video.mux.mux_audio: video copied (or re-encoded), a wav muxed as AAC, in sync to 1 ms.

A source with a white flash at grid frame F and a click at the same time; a new 16 kHz wav
with a click at grid frame F2 is muxed; the output is decoded again and the click must lie at
``640 * F2`` samples (+- 16, 1 ms) on the grid of the output, with the flash still at F.
"""
import av
import numpy as np
import pytest
import soundfile as sf

from avse.video.frames import decode_audio, iter_video, probe
from avse.video.media import MOUTH_CROPS, MediaError, decode_media, set_display_rotation
from avse.video.mux import mux_audio
from tests.unit.test_video_media import click, gray_frame, is_flash, peak, write_clip

F, F2 = 10, 17  # flash/click in the source, click in the muxed wav (grid frames)


def packets(path):
    """(codec name, [packet sizes]) of the video stream."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        return vs.codec_context.name, [p.size for p in c.demux(vs) if p.size]


def source(tmp_path, name, fps=25, video_start=0.0, audio_start=0.0, **kw):
    """A 2 s source with a flash (video) and a click (audio) F / 25 s after the audio start."""
    t_flash = audio_start + F / 25
    n = int(round(2.0 * fps))
    times = video_start + np.arange(n) / fps
    flash = int(np.argmin(np.abs(times - t_flash)))
    assert abs(times[flash] - t_flash) < 1e-9, "the flash must fall on a source frame"
    audio = np.stack([click(96000, int(round((t_flash - audio_start) * 48000)), 48000)] * 2)
    return write_clip(tmp_path / name, times=times, fps=fps, flash=flash, audio=audio,
                      audio_start=audio_start, **kw)


def check_sync(tmp_path, src, expect_video="copy", copy_video=True):
    info = probe(str(src))
    origin = info.origin  # the audio start
    # the source itself: flash at grid frame F, click at 640 F
    flashes = [k for k, f in iter_video(str(src), info=info) if is_flash(gray_frame(f))]
    assert flashes == [F]
    n = decode_audio(str(src), str(tmp_path / "mix.wav"))
    assert abs(peak(tmp_path / "mix.wav") - 640 * F) <= 16
    # a new full-length wav with a click at grid frame F2, muxed with origin = audio start
    sf.write(str(tmp_path / "face.wav"), click(n, 640 * F2, 16000), 16000, subtype="PCM_16")
    out = tmp_path / "out" / "face0.mp4"
    result = mux_audio(str(src), str(tmp_path / "face.wav"), str(out), origin=origin, info=info,
                       copy_video=copy_video)
    assert result["video"] == expect_video and result["audio"] == "aac"
    shift = min(info.video_start, origin)  # source time of output time 0
    assert result["duration"] == pytest.approx(max(info.video_start + info.duration - shift,
                                                   origin - shift + n / 16000), abs=0.07)
    assert sorted(p.name for p in out.parent.iterdir()) == ["face0.mp4"]  # no temp file left
    codec, sizes = packets(out)
    src_codec, src_sizes = packets(src)
    if expect_video == "copy":
        assert (codec, sizes) == (src_codec, src_sizes)  # identical packets
    else:
        assert codec == "h264" and len(sizes) == len(src_sizes)
    # the output starts at source time min(video start, origin), with the audio (zeros first
    # when origin is later): the click at 640 F2 + pad on the output's grid, the flash at F + pad
    pad = int(round((origin - shift) * 25))
    out_info = probe(str(out))
    assert out_info.audio_start == pytest.approx(0, abs=1e-6)
    assert out_info.video_start == pytest.approx(max(info.video_start - origin, 0), abs=1e-3)
    m = decode_audio(str(out), str(tmp_path / "back.wav"))
    assert abs(peak(tmp_path / "back.wav") - 640 * (F2 + pad)) <= 16
    assert abs(m - 640 * pad - n) <= 1024
    flashes = [k for k, f in iter_video(str(out), info=out_info) if is_flash(gray_frame(f))]
    assert flashes == [F + pad]
    # and relative to the first decoded video frame (decode_media aligns to it)
    wav, _ = decode_media(str(out), crop=MOUTH_CROPS["voxceleb2"])
    lead = int(round((info.video_start - origin) * 16000))
    assert abs(int(np.argmax(np.abs(wav))) - (640 * F2 - lead)) <= 16
    return out


def test_h264_aac_source_copied_in_sync(tmp_path):
    check_sync(tmp_path, source(tmp_path, "src.mp4"))


def test_video_starting_after_audio(tmp_path):
    out = check_sync(tmp_path, source(tmp_path, "late_video.mp4", video_start=0.2))
    assert probe(str(out)).video_start == pytest.approx(0.2, abs=1e-3)


def test_audio_starting_after_video_is_padded(tmp_path):
    """origin 0.32 s after the first video frame: the audio track gets 0.32 s of zeros first.

    The source audio is PCM in mov: FFmpeg's mp4 muxer would keep the AAC priming of an audio
    track that starts late as 1024 samples of content before it (see ``probe``)."""
    src = source(tmp_path, "late_audio.mov", audio_start=0.32, fmt="mov", audio_codec="pcm_s16le")
    out = check_sync(tmp_path, src)
    wav, _ = decode_media(str(out), crop=MOUTH_CROPS["voxceleb2"])
    assert np.abs(wav[: 5120 - 16]).max() < 1e-3


def test_30fps_source(tmp_path):
    check_sync(tmp_path, source(tmp_path, "src30.mp4", fps=30))


def test_30fps_video_offset_is_kept_exactly(tmp_path):
    """A video start of 7/30 s is not a whole ms: the output's edit list must keep it exact."""
    src = source(tmp_path, "off30.mp4", fps=30, video_start=7 / 30,
                 options={"movie_timescale": "3000"})
    assert probe(str(src)).video_start == pytest.approx(7 / 30, abs=1e-6)
    out = check_sync(tmp_path, src)
    assert probe(str(out)).video_start == pytest.approx(7 / 30, abs=1e-6)


def test_vp8_source_is_reencoded_in_sync(tmp_path):
    src = source(tmp_path, "src.webm", codec="libvpx", fmt="webm", audio_codec="libopus")
    assert probe(str(src)).video_codec == "vp8"
    check_sync(tmp_path, src, expect_video="h264")


def test_rotation_kept_when_copying_and_reencoding(tmp_path):
    src = source(tmp_path, "rot.mp4")
    set_display_rotation(str(src), 90)
    out = check_sync(tmp_path, src)
    assert probe(str(out)).rotation == 90
    forced = check_sync(tmp_path, src, expect_video="h264", copy_video=False)
    info = probe(str(forced))
    assert info.rotation == 90 and (info.width, info.height) == (48, 64)


def test_errors_name_the_file(tmp_path):
    src = source(tmp_path, "src.mp4")
    with pytest.raises(MediaError, match="nowav.wav"):
        mux_audio(str(src), str(tmp_path / "nowav.wav"), str(tmp_path / "o.mp4"), origin=0.0)
    sf.write(str(tmp_path / "st.wav"), np.zeros((1600, 2), np.float32), 16000)
    with pytest.raises(MediaError, match="st.wav.*mono"):
        mux_audio(str(src), str(tmp_path / "st.wav"), str(tmp_path / "o.mp4"), origin=0.0)
    sf.write(str(tmp_path / "m.wav"), np.zeros(1600, np.float32), 16000)
    with pytest.raises(MediaError, match="gone.mp4.*no such file"):
        mux_audio(str(tmp_path / "gone.mp4"), str(tmp_path / "m.wav"), str(tmp_path / "o.mp4"),
                  origin=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.wav", "src.mp4", "st.wav"]
