"""Chunked long-form extraction (avse.video.longform): the chunk plan, the cross-fade, and
chunked == whole-clip for models without whole-utterance context."""
import numpy as np
import pytest
import soundfile as sf
import torch

from avse.inference import AVSEExtractor
from avse.metrics import si_sdr
from avse.models import AVSEModel
from avse.video.longform import chunk_plan, extract_span, extract_track, file_peak


@pytest.mark.parametrize("n,chunk,ctx", [(250, 100, 25), (7, 100, 25), (301, 50, 10), (100, 100, 0)])
def test_chunk_plan_tiles_the_span(n, chunk, ctx):
    plan = chunk_plan(n, chunk, ctx)
    keeps = [(k0, k1) for _, _, k0, k1 in plan]
    assert keeps[0][0] == 0 and keeps[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(keeps, keeps[1:]))
    for w0, w1, k0, k1 in plan:
        assert w0 == max(k0 - ctx, 0) and w1 == min(k1 + ctx, n)
    assert all(k1 - k0 >= chunk / 2 for k0, k1 in keeps) or len(keeps) == 1


def test_cross_fade_of_an_exact_model_is_exact_and_continuous():
    """run() = identity: the written signal must be the input, chunk joins included."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(640 * 163).astype(np.float32)
    out = []
    n = extract_span(lambda w, v: w, lambda a, b: x[a:b], lambda a, b: np.zeros((b - a, 1)), 163,
                     out.append, chunk_frames=40, context_frames=12)
    y = np.concatenate(out)
    assert n == len(x) == len(y)
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_cross_fade_blends_disagreeing_chunks_without_a_step():
    """A model whose output depends on the chunk (adds the window start): the output ramps
    from one chunk's value to the next inside the fade, with no jump larger than the ramp."""
    out = []
    extract_span(lambda w, v: np.full(len(w), float(v[0, 0]), np.float32),
                 lambda a, b: np.zeros(b - a, np.float32),
                 lambda a, b: np.full((b - a, 1), a, np.float32), 120, out.append,
                 chunk_frames=40, context_frames=8)
    y = np.concatenate(out)
    assert len(y) == 120 * 640
    assert np.max(np.abs(np.diff(y))) < 32 / (4 * 640) * 2  # windows start 32 apart, fade 4 frames


def _tcn_model(causal: bool):
    torch.manual_seed(0)
    return AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32},
                     {"type": "cnn", "out_dim": 16, "norm": "bn"},
                     {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 4,
                      "num_repeats": 1, "norm": "cln", "causal": causal}, fusion="concat").eval()


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_equals_whole_clip_for_a_tcn_with_framewise_norm(tmp_path, causal):
    rng = np.random.default_rng(1)
    n_frames, lead = 230, 17  # the track starts at grid frame 17 and ends 0.5 s before the end
    total = (lead + n_frames + 13) * 640
    env = np.repeat(rng.choice([0.01, 0.05, 0.9], total // 6400 + 1), 6400)[:total]  # loud/quiet
    mix = (env * rng.standard_normal(total)).astype(np.float32)
    sf.write(tmp_path / "mix.wav", mix, 16000, subtype="FLOAT")
    faces = rng.integers(0, 255, (n_frames, 224, 224), dtype=np.uint8)
    frames = np.arange(lead, lead + n_frames)
    ex = AVSEExtractor(_tcn_model(causal))
    gain = file_peak(str(tmp_path / "mix.wav"))
    assert gain == pytest.approx(np.abs(mix).max())
    extract_track(ex, str(tmp_path / "mix.wav"), frames, faces, None, str(tmp_path / "out.wav"),
                  "voxceleb2", gain, chunk_seconds=2.0, overlap_seconds=1.0)
    out, sr = sf.read(tmp_path / "out.wav", dtype="float32")
    assert sr == 16000 and len(out) == total
    assert not np.any(out[: lead * 640]) and not np.any(out[(lead + n_frames) * 640:])
    span = slice(lead * 640, (lead + n_frames) * 640)
    whole = ex.extract_array(mix[span], faces[:, 113:201, 68:156], gain)
    whole = np.clip(whole, -1, 1)
    score = float(si_sdr(torch.from_numpy(out[span])[None], torch.from_numpy(whole)[None]))
    # the issue asks for 30 dB; frame-wise norms give ~70 dB here, while a global-norm (gln)
    # model chunked the same way gives ~45 dB (a per-chunk gain or a misplaced fade: < 20 dB)
    assert score > 55.0, score


def test_merged_track_with_a_hole_writes_silence_in_the_hole(tmp_path):
    rng = np.random.default_rng(2)
    total = 120 * 640
    sf.write(tmp_path / "mix.wav", 0.2 * rng.standard_normal(total), 16000)
    frames = np.r_[np.arange(10, 50), np.arange(70, 110)]
    faces = rng.integers(0, 255, (len(frames), 224, 224), dtype=np.uint8)
    ex = AVSEExtractor(_tcn_model(False))
    info = extract_track(ex, str(tmp_path / "mix.wav"), frames, faces, None,
                         str(tmp_path / "o.wav"), "voxceleb2", 0.8, chunk_seconds=1.0)
    out = sf.read(tmp_path / "o.wav")[0]
    assert info["segments"] == 2 and len(out) == total
    assert not np.any(out[50 * 640: 70 * 640]) and np.any(out[10 * 640: 50 * 640])
    assert np.any(out[70 * 640: 110 * 640]) and not np.any(out[110 * 640:])


def test_a_failed_extraction_leaves_no_output(tmp_path):
    sf.write(tmp_path / "mix.wav", np.zeros(640 * 50), 16000)
    ex = AVSEExtractor(_tcn_model(False))
    with pytest.raises(ValueError, match="landmarks"):
        extract_track(ex, str(tmp_path / "mix.wav"), np.arange(50),
                      np.zeros((50, 224, 224), np.uint8), None, str(tmp_path / "o.wav"),
                      "landmarks", 1.0)
    assert not list(tmp_path.glob("o.wav*"))


def test_frame_file_appends_rows_and_reads_slices_without_a_memory_map(tmp_path):
    from avse.video.faces import FrameFile

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (7, 224, 224), dtype=np.uint8)
    store = FrameFile.create(str(tmp_path / "f.npy"), frames.shape)
    for i in [0, 1, 2, 4, 5, 6]:  # row 3 never written: stays zero
        store.append(i, frames[i])
    store.close()
    back = FrameFile(str(tmp_path / "f.npy"))
    assert len(back) == 7 and back[1:3].shape == (2, 224, 224)
    np.testing.assert_array_equal(back[4:7], frames[4:7])
    np.testing.assert_array_equal(back[-1], frames[6])
    assert not back[3].any()
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy")[[0, 5]], frames[[0, 5]])  # a real .npy
    with pytest.raises(IndexError, match="f.npy"):
        back[7]


def _head_model():
    """A tcn with a real activity head whose logits are controlled: +8 where the normalised
    mixture's frame power is above -22 dB, -8 elsewhere (the frame's own audio only)."""
    from avse.models.activity import frame_log_power

    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32},
                      {"type": "cnn", "out_dim": 16, "norm": "bn"},
                      {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 4,
                       "num_repeats": 1, "norm": "cln"}, fusion="concat",
                      activity_head={"hidden": 8}).eval()
    model.activity_head.forward = lambda mix, est, f, ef, v: torch.where(
        frame_log_power(mix, v.shape[-1]) > -22.0, 8.0, -8.0)
    return model


def test_chunked_activity_covers_the_track_and_gating_matches_whole_clip(tmp_path):
    from avse.gating import Gate, speaking_summary, widen

    rng = np.random.default_rng(4)
    lead, n_frames = 12, 240  # loud (the target "speaks") / quiet stretches across chunk joins
    loud = np.r_[np.ones(30), np.zeros(41), np.ones(60), np.zeros(2), np.ones(20),
                 np.zeros(87)].astype(bool)
    env = np.r_[np.full(lead * 640, 0.02), np.repeat(np.where(loud, 0.2, 0.02), 640),
                np.full(20 * 640, 0.02)]
    mix = (env * rng.standard_normal(len(env))).astype(np.float32)
    sf.write(tmp_path / "mix.wav", mix, 16000, subtype="FLOAT")
    faces = rng.integers(0, 255, (n_frames, 224, 224), dtype=np.uint8)
    frames = np.arange(lead, lead + n_frames)
    gain = file_peak(str(tmp_path / "mix.wav"))
    span = slice(lead * 640, (lead + n_frames) * 640)
    lips = faces[:, 113:201, 68:156]
    outs = {}
    for gate in (False, True):
        ex = AVSEExtractor(_head_model(), gate=gate, gate_db=20.0)
        info = extract_track(ex, str(tmp_path / "mix.wav"), frames, faces, None,
                             str(tmp_path / f"{gate}.wav"), "voxceleb2", gain,
                             chunk_seconds=2.0, overlap_seconds=1.0)
        outs[gate] = sf.read(tmp_path / f"{gate}.wav", dtype="float32")[0]
        act = info["activity"]  # the kept part of every chunk: each frame once
        np.testing.assert_array_equal(act["frames"], frames)
        whole, prob = ex.extract_array(mix[span], lips, gain, return_activity=True)
        np.testing.assert_array_equal(act["probability"], prob)
        np.testing.assert_array_equal(act["speaking"], Gate().speaking(prob))
        speaking = Gate().speaking(loud.astype(np.float32))  # the 2-frame gap closes
        assert info["speaking"] == speaking_summary(speaking, first_frame=lead)
        assert info["speaking"]["seconds"] == pytest.approx(112 / 25)
        assert info["speaking"]["fraction"] == pytest.approx(112 / 240, abs=1e-4)
        assert info["speaking"]["spans"] == [[0.48, 1.68], [3.32, 6.6]]
        # chunked == whole clip, gate included (the same decision in every chunk)
        score = float(si_sdr(torch.from_numpy(outs[gate][span])[None],
                             torch.from_numpy(np.clip(whole, -1, 1))[None]))
        assert score > 50.0, (gate, score)
    on, off = outs[True][span], outs[False][span]
    passed = Gate().passed(loud.astype(np.float32))
    np.testing.assert_allclose(on[np.repeat(passed, 640)], off[np.repeat(passed, 640)],
                               atol=1.5 / 32768)  # 16-bit wav
    quiet = ~np.repeat(widen(passed, 1, 1), 640)  # away from the ramps
    assert quiet.sum() > 90 * 640
    drop = 10 * np.log10(np.sum(on[quiet] ** 2) / np.sum(off[quiet] ** 2))
    assert -20.3 < drop < -19.7, drop
    # a model without a head: no activity
    plain = extract_track(AVSEExtractor(_tcn_model(False)), str(tmp_path / "mix.wav"), frames,
                          faces, None, str(tmp_path / "p.wav"), "voxceleb2", gain)
    assert "activity" not in plain and "speaking" not in plain
