"""Gating (avse.gating): from per-frame speaking probabilities to a decision, a sample-level
gain with short ramps, and the speaking time."""
import numpy as np
import pytest

from avse.gating import (Gate, format_speaking, median_filter, sample_gain, sigmoid, spans,
                         speaking_summary, widen)

SPF = 640


def _track(pattern):
    """``[(value, n_frames), ...]`` -> probabilities."""
    return np.concatenate([np.full(n, v, np.float32) for v, n in pattern])


def test_median_removes_blips_and_short_dips_and_threshold_decides():
    gate = Gate(median=5, before=0, after=0)
    # a 2-frame false alarm in silence, a 2-frame dip inside speech, a long pause
    p = _track([(0.1, 10), (0.9, 2), (0.1, 10), (0.8, 10), (0.3, 2), (0.8, 10), (0.1, 10),
                (0.7, 10), (0.05, 6)])
    got = gate.speaking(p)
    want = _track([(0, 22), (1, 22), (0, 10), (1, 10), (0, 6)]).astype(bool)
    np.testing.assert_array_equal(got, want)
    # the threshold: 0.7 frames are silent at 0.75, speaking at 0.5
    assert not Gate(threshold=0.75, median=5).speaking(p)[-16:-6].any()
    assert Gate(threshold=0.5, median=5).speaking(p)[-16:-6].all()


def test_hangover_keeps_onsets_offsets_and_short_pauses():
    gate = Gate(median=1, before=2, after=5)
    p = _track([(0.0, 10), (1.0, 10), (0.0, 7), (1.0, 5), (0.0, 8), (1.0, 3), (0.0, 20)])
    spk, passed = gate.speaking(p), gate.passed(p)
    assert spk.sum() == 18
    # onset moved 2 frames earlier; the 7-frame pause (= before + after) closed; the 8-frame
    # one is not; each offset held 5 frames
    want = _track([(0, 8), (1, 2 + 10 + 7 + 5 + 5), (0, 1), (1, 2 + 3 + 5), (0, 15)]).astype(bool)
    np.testing.assert_array_equal(passed, want)
    assert np.all(passed[spk])  # never drops a speaking frame


def test_gain_is_exactly_one_on_passed_frames_the_attenuation_elsewhere_with_20ms_ramps():
    gate = Gate(attenuation_db=30.0, median=1, before=0, after=0, ramp_ms=20.0)
    p = _track([(0.0, 10), (1.0, 10), (0.0, 10)])
    g = gate.gain(p)
    assert g.shape == (30 * SPF,) and g.dtype == np.float32
    low = 10 ** (-30 / 20)
    assert np.all(g[10 * SPF: 20 * SPF] == 1.0)  # passed frames untouched, bit for bit
    # the ramps: 320 samples (20 ms) on the attenuated side of each edge, monotone
    down = g[20 * SPF: 20 * SPF + 320]
    up = g[10 * SPF - 320: 10 * SPF]
    assert np.all(np.diff(down) < 0) and np.all(np.diff(up) > 0)
    np.testing.assert_allclose(down[-1], low, rtol=1e-5)
    np.testing.assert_allclose(up[0], low, rtol=1e-5)
    np.testing.assert_allclose(g[: 10 * SPF - 320], low, rtol=1e-6)
    np.testing.assert_allclose(g[20 * SPF + 320:], low, rtol=1e-6)
    # linear in dB: equal steps, 30 dB over 320 samples
    steps = np.diff(20 * np.log10(np.r_[1.0, down.astype(np.float64)]))
    np.testing.assert_allclose(steps, -30 / 320, rtol=1e-3)
    # other settings
    g50 = Gate(attenuation_db=50.0, median=1, before=0, after=0, ramp_ms=5).gain(p)
    np.testing.assert_allclose(g50[20 * SPF + 80:], 10 ** (-50 / 20), rtol=1e-5)
    assert np.all(Gate(attenuation_db=0.0).gain(p) == 1.0)


def test_gain_length_rows_and_apply():
    gate = Gate(median=1, before=0, after=0)
    p = np.array([1.0, 0.0, 1.0])
    assert len(gate.gain(p, 1000)) == 1000 and len(gate.gain(p, 2000)) == 2000
    assert gate.gain(p, 2000)[-1] == 1.0  # past the last frame: its gain
    rows = gate.gain(np.stack([p, 1 - p]), 3 * SPF)
    assert rows.shape == (2, 3 * SPF)
    np.testing.assert_array_equal(rows[0], gate.gain(p))
    np.testing.assert_array_equal(rows[1], gate.gain(1 - p))
    x = np.ones(3 * SPF - 5, np.float32)
    np.testing.assert_array_equal(gate.apply(x, p), gate.gain(p, len(x)))
    assert sample_gain([], 10).tolist() == [1.0] * 10


def test_speaking_time_and_spans():
    gate = Gate(median=3, before=1, after=2)
    p = _track([(0.0, 25), (0.9, 50), (0.0, 25), (0.9, 12), (0.0, 13)])
    summary = speaking_summary(gate.speaking(p))
    assert summary == {"seconds": 2.48, "on_screen_seconds": 5.0, "fraction": 0.496,
                       "spans": [[1.0, 3.0], [4.0, 4.48]]}
    # a track with a hole: pieces at their own grid frames
    pieces = [(100, np.r_[np.zeros(5), np.ones(20)].astype(bool)), (200, np.ones(10, bool))]
    summary = speaking_summary(pieces)
    assert summary["seconds"] == pytest.approx(30 / 25)
    assert summary["fraction"] == pytest.approx(30 / 35, abs=1e-4)
    assert summary["spans"] == [[4.2, 5.0], [8.0, 8.4]]
    assert speaking_summary(np.zeros(0, bool)) == {"seconds": 0.0, "on_screen_seconds": 0.0,
                                                   "fraction": 0.0, "spans": []}
    assert spans(np.ones(3, bool)) == [[0.0, 0.12]]
    line = format_speaking(speaking_summary(pieces))
    assert line.startswith("speaking 1.20 s of 1.40 s (86 %) in 2 span(s): 4.20-5.00")
    many = format_speaking(speaking_summary(np.tile([True, False], 20)), max_spans=3)
    assert "20 span(s)" in many and "(17 more)" in many


def test_helpers_and_bad_options():
    assert sigmoid([0.0])[0] == 0.5 and np.all(np.isfinite(sigmoid([-1e9, 1e9])))
    np.testing.assert_array_equal(median_filter([3, 1, 2], 1), [3, 1, 2])
    assert widen(np.zeros(4, bool), 3, 3).sum() == 0 and widen(np.ones(2, bool), 9, 9).all()
    for bad, match in [(dict(threshold=1.0), "threshold"), (dict(attenuation_db=-3), "dB"),
                       (dict(attenuation_db=float("inf")), "dB"), (dict(median=4), "odd"),
                       (dict(after=-1), "before/after"), (dict(ramp_ms=50), "ramp")]:
        with pytest.raises(ValueError, match=match):
            Gate(**bad)


def test_gated_model_gates_like_the_extractor_and_needs_a_head():
    """GatedModel (conditions evaluate --gate) multiplies the estimate by the gate's gain from
    the model's own activity logits."""
    import torch

    from avse.gating import Gate, GatedModel
    from tests.unit.test_inference import _head_model, _loud_quiet

    model = _head_model()
    mix, lips = _loud_quiet([(True, 20), (False, 30), (True, 20)])
    mixture, visual = torch.from_numpy(mix)[None], torch.from_numpy(lips)[None]
    with torch.no_grad():
        plain = model(mixture, visual)
        gated = GatedModel(model, Gate(attenuation_db=20.0)).eval()(mixture, visual)
    prob = 1 / (1 + np.exp(-plain.aux["activity"].numpy()))
    expected = plain.estimate[0].numpy() * Gate(attenuation_db=20.0).gain(prob[0], mix.size)
    np.testing.assert_allclose(gated.estimate[0].numpy(), expected, rtol=1e-6, atol=1e-7)
    quiet = slice(30 * 640, 40 * 640)  # inside the silent stretch, past the hangover
    ratio = gated.estimate[0, quiet].abs().sum() / plain.estimate[0, quiet].abs().sum()
    assert float(ratio) == pytest.approx(0.1, rel=1e-4)
    from avse.models import AVSEModel

    no_head = AVSEModel({"type": "conv", "out_channels": 8, "kernel_size": 16},
                        {"type": "cnn", "out_dim": 8},
                        {"type": "tcn", "bottleneck": 8, "hidden": 16, "num_blocks": 1,
                         "num_repeats": 1})
    with pytest.raises(ValueError, match="model exp/x has no activity head"):
        GatedModel(no_head, where="model exp/x")
