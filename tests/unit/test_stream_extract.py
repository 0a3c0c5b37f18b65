"""Streaming extraction (issue 14): ``AVSEExtractor.stream()`` equals the offline output of the
same causal model with the same gain, whatever the block size; ``avse-extract --stream`` and
``tools/stream_demo.py`` run a clip through it and report per-block compute time, real-time
factor and latency; a causal model's ``model.yaml`` says ``mixture_norm: none``."""
import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from avse.inference import AVSEExtractor, main
from avse.models import AVSEModel, save_model
from avse.stream_extract import RealTimePace, block_stats, frames_for_block, run_blocks
from tests.conftest import REPO, run_cmd, write_test_mp4


def causal_model(seed=0):
    torch.manual_seed(seed)
    return AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32},
                     {"type": "cnn", "out_dim": 16, "hidden": 16, "num_blocks": 1, "norm": "cln"},
                     {"type": "tcn", "bottleneck": 16, "hidden": 16, "num_blocks": 2,
                      "num_repeats": 1, "norm": "cln"}, causal=True).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    live = save_model(causal_model(), str(root / "live"), inference={"mixture_norm": "none"})
    peak = save_model(causal_model(), str(root / "peak"))
    return {"live": live, "peak": peak, "root": root}


def inputs(seconds=1.23, seed=3):
    rng = np.random.default_rng(seed)
    n = int(16000 * seconds)
    wav = (0.5 * rng.standard_normal(n)).astype(np.float32)
    lips = rng.integers(0, 256, (-(-n // 640), 88, 88), dtype=np.uint8)
    return wav, lips


@pytest.mark.parametrize("block", [160, 7, 640, 1000])
def test_stream_equals_offline_for_any_block(folders, block):
    ex = AVSEExtractor.from_hparams(folders["live"])
    wav, lips = inputs()
    offline = ex.extract_array(wav, lips, peak=None)  # mixture_norm none: as it is, gain 1
    session = ex.stream()
    out = run_blocks(session, wav, lips, block=block)
    assert out.shape == wav.shape
    np.testing.assert_allclose(out, offline, atol=1e-5 * max(1.0, np.abs(offline).max()))
    stats = session.stats()
    assert stats["blocks"] == -(-len(wav) // block) and stats["rtf"] > 0
    assert stats["model_latency_ms"] == 2.0
    assert stats["stream_latency_ms"] == pytest.approx(1000 * (block + 16) / 16000)


def test_peak_trained_causal_model_streams_with_a_fixed_gain(folders, caplog):
    ex = AVSEExtractor.from_hparams(folders["peak"])
    wav, lips = inputs(0.5)
    offline = ex.extract_array(wav, lips, peak=2.0)
    with caplog.at_level("WARNING"):
        session = ex.stream(peak=2.0)
    assert "fixed gain" in caplog.text
    out = run_blocks(session, wav, lips, block=160)
    np.testing.assert_allclose(out, offline, atol=1e-5 * max(1.0, np.abs(offline).max()))
    # the offline path of a peak model still divides by the whole file's peak
    whole = ex.extract_array(wav, lips, peak=None)
    scaled = ex.extract_array(wav, lips, peak=float(np.abs(wav).max()))
    np.testing.assert_array_equal(whole, scaled)


def test_non_causal_model_is_refused(tmp_path):
    from tests.model_helpers import tiny_model_folder

    ex = AVSEExtractor.from_hparams(tiny_model_folder(str(tmp_path / "m")))
    with pytest.raises(ValueError, match="needs a causal model"):
        ex.stream()
    with pytest.raises(ValueError, match="mixture_norm"):
        AVSEExtractor(causal_model(), inference={"mixture_norm": "rms"})


def test_stream_session_checks_frames_and_counts(folders):
    session = AVSEExtractor.from_hparams(folders["live"]).stream()
    with pytest.raises(ValueError, match=r"\[m, H, W\] mouth crops"):
        session.push(np.zeros(160, np.float32), np.zeros((1, 1, 88, 88), np.uint8))
    session.reset()
    first = session.push(np.zeros(160, np.float32), np.zeros((88, 88), np.uint8))  # one frame
    assert session.frames_in == 1 and first.size <= 160
    rest = session.flush()
    assert first.size + rest.size == 160


def test_frames_for_block_and_stats():
    assert frames_for_block(0, 1, 3) == slice(0, 1)
    assert frames_for_block(1, 640, 3) == slice(1, 1)  # frame 1 starts at 640
    assert frames_for_block(640, 1920, 3) == slice(1, 3)
    assert frames_for_block(1920, 2560, 3) == slice(3, 3)  # past the last frame
    s = block_stats([0.01] * 20, 160, 3200)
    assert s["rtf"] == pytest.approx(1.0) and s["p95_ms"] == pytest.approx(10.0)


def test_real_time_pace_waits_for_each_block_and_measures_latency():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    pace = RealTimePace(160, clock=lambda: now[0], sleep=sleep)
    for b in range(3):
        pace(b)  # block b is complete at (b + 1) * 10 ms
        assert now[0] == pytest.approx((b + 1) * 0.01)
        now[0] += 0.002  # compute
        pace.emitted(b, 160)
    assert len(slept) == 3
    summary = pace.summary()
    # sample 160 b was captured at 10 b ms and returned at 10 (b + 1) + 2 ms
    assert summary["measured_latency_mean_ms"] == pytest.approx(12.0)


def test_training_inference_config_records_the_mixture_norm():
    from avse.data.mixing import MixtureConfig
    from avse.experiment import training_inference_config

    hp = {"train_shards": "/nonexistent", "mixture_config": MixtureConfig(normalise=None)}
    assert training_inference_config(hp)["mixture_norm"] == "none"
    hp["mixture_config"] = MixtureConfig()
    assert training_inference_config(hp)["mixture_norm"] == "peak"


def test_avse_extract_stream_and_stream_demo(folders, capsys):
    root = folders["root"]
    clip = write_test_mp4(str(root / "clip" / "face.mp4"), n_frames=15, size=96)
    out = root / "streamed.wav"
    assert main(["--model", folders["live"], "--video", clip, "--face_centred", "--stream",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "real-time factor" in text and "p95" in text and "latency: model 2.0 ms" in text
    streamed, sr = sf.read(str(out), dtype="float32")
    ex = AVSEExtractor.from_hparams(folders["live"])
    offline = ex.extract(video=clip).numpy()
    assert sr == 16000 and streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, np.clip(offline, -1, 1), atol=2e-4)
    # not a face-centred clip: a usage error before any work
    with pytest.raises(SystemExit):
        main(["--model", folders["live"], "--video", clip, "--stream", "--out", str(out)])
    # the real-time replay (0.6 s, paced) writes the wav, the figures and the muxed mp4
    (root / "demo").mkdir()
    live = root / "demo" / "out.wav"
    proc = run_cmd([sys.executable, os.path.join(REPO, "tools", "stream_demo.py"), "--model",
                    folders["live"], "--video", clip, "--out", str(live)])
    assert "measured latency" in proc.stdout
    figures = json.load(open(root / "demo" / "out.json"))
    assert figures["realtime"] and figures["measured_latency_mean_ms"] >= 10.0
    assert os.path.getsize(root / "demo" / "out.mp4") > 0
    np.testing.assert_allclose(sf.read(str(live), dtype="float32")[0], streamed, atol=1e-4)
    assert yaml.safe_load(open(os.path.join(folders["live"], "model.yaml")))[
        "inference"]["mixture_norm"] == "none"
