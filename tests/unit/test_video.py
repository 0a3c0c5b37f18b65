"""PyAV decoding: mouth crop geometry, fps resampling, audio readers, clear errors."""
import numpy as np
import pytest
import soundfile as sf

from avse.video.media import (
    MOUTH_CROPS,
    MediaError,
    decode_media,
    read_audio,
    resample_frame_times,
)
from tests.conftest import write_test_mp4


def test_crop_boxes_are_documented_pixels():
    assert MOUTH_CROPS["voxceleb2"].box(224, 224) == (113, 68, 88)
    assert MOUTH_CROPS["lrs2"].box(160, 160) == (71, 36, 88)
    top, left, side = MOUTH_CROPS["voxceleb2"].box(448, 448)  # other sizes scale
    assert side == 176 and top + side <= 448


def test_25fps_clip_keeps_every_frame(tmp_path):
    path = write_test_mp4(tmp_path / "a.mp4", n_frames=30)
    wav, lips = decode_media(str(path), crop=MOUTH_CROPS["voxceleb2"])
    assert lips.shape == (30, 88, 88) and lips.dtype == np.uint8
    expected = (8 * np.arange(30)) % 256
    assert np.all(np.abs(lips.mean(axis=(1, 2)) - expected) < 4)
    assert abs(len(wav) - 30 * 640) <= 1


def test_30fps_clip_is_resampled_by_timestamp(tmp_path):
    path = write_test_mp4(tmp_path / "b.mp4", n_frames=36, fps=30)  # 1.2 s
    _, lips = decode_media(str(path), crop=MOUTH_CROPS["voxceleb2"])
    assert lips.shape[0] == 30
    src_index = np.floor(np.arange(30) / 25 * 30 + 1e-3).astype(int)
    np.testing.assert_allclose(lips.mean(axis=(1, 2)), (8 * src_index) % 256, atol=4)


def test_other_frame_sizes_are_resized_to_88(tmp_path):
    path = write_test_mp4(tmp_path / "c.mp4", n_frames=5, size=160)
    _, lips = decode_media(str(path), want_audio=False, crop=MOUTH_CROPS["voxceleb2"])
    assert lips.shape == (5, 88, 88)


def test_resample_frame_times_identity_and_upsampling():
    t = np.arange(10) / 25
    assert resample_frame_times(t, 10 / 25).tolist() == list(range(10))
    t = np.arange(5) / 12.5  # 12.5 fps -> each frame twice
    assert resample_frame_times(t, 5 / 12.5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_read_audio_wav_resamples_and_mixes_down(tmp_path):
    sr = 48000
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], 1) * 0.5
    sf.write(tmp_path / "x.wav", stereo, sr)
    wav = read_audio(str(tmp_path / "x.wav"))
    assert wav.dtype == np.float32 and abs(len(wav) - 16000) <= 1
    assert abs(np.max(np.abs(wav[100:-100])) - 0.5) < 0.02


def test_read_audio_from_mp4_audio_stream(tmp_path):
    path = write_test_mp4(tmp_path / "d.mp4", n_frames=25)
    wav = read_audio(str(path))
    assert abs(len(wav) - 16000) <= 1 and np.std(wav) > 0.1


def test_errors_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        decode_media(str(tmp_path / "missing.mp4"), crop=MOUTH_CROPS["voxceleb2"])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(MediaError, match="bad.mp4"):
        decode_media(str(bad), crop=MOUTH_CROPS["voxceleb2"])
    silent = write_test_mp4(tmp_path / "noaudio.mp4", n_frames=5, with_audio=False)
    with pytest.raises(MediaError, match="no audio stream"):
        decode_media(str(silent), crop=MOUTH_CROPS["voxceleb2"])
    with pytest.raises(MediaError, match="bad.wav"):
        (tmp_path / "bad.wav").write_bytes(b"RIFF....")
        read_audio(str(tmp_path / "bad.wav"))


def test_fast_luma_path_matches_swscale_gray(tmp_path):
    import av

    from avse.data.synthetic import render_face, speaker_look
    from avse.video.media import frame_to_gray_box

    rng = np.random.default_rng(0)
    frames = render_face(rng.uniform(0, 1, 6), rng.uniform(0, 1, 6), rng.uniform(0, 1, 6),
                         look=speaker_look(0, 3))
    frames = np.clip(frames.astype(int) + rng.integers(-20, 20, frames.shape), 0, 255).astype(np.uint8)
    from avse.data.synthetic import write_mp4
    write_mp4(tmp_path / "f.mp4", frames, np.zeros(6 * 640, np.float32))
    crop = MOUTH_CROPS["voxceleb2"]
    top, left, side = crop.box(224, 224)
    with av.open(str(tmp_path / "f.mp4")) as c:
        for frame in c.decode(video=0):
            ref = frame.to_ndarray(format="gray")[top:top + side, left:left + side]
            fast = frame_to_gray_box(frame, crop)
            assert np.abs(fast.astype(int) - ref).max() <= 1
