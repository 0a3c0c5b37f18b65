"""Mixing helpers: exact SNR, aligned crops, padding, safe peak normalisation, the config."""
import numpy as np
import pytest

from avse.data import mixing
from avse.data.align import SAMPLES_PER_FRAME


def _achieved(target, scaled):
    return 10 * np.log10(np.mean(target.astype(np.float64) ** 2)
                         / np.mean(scaled.astype(np.float64) ** 2))


@pytest.mark.parametrize("snr", [-10.0, -3.3, 0.0, 4.2, 10.0, 25.0])
@pytest.mark.parametrize("level_t,level_i", [(1.0, 1.0), (0.003, 0.8), (0.9, 0.0005)])
def test_scale_to_snr_is_exact(snr, level_t, level_i):
    rng = np.random.default_rng(1)
    target = (level_t * rng.standard_normal(16000)).astype(np.float32)
    interferer = (level_i * rng.standard_normal(12345 + 3655)).astype(np.float32)
    scaled = mixing.scale_to_snr(target, interferer, snr)
    assert scaled.dtype == np.float32
    assert abs(_achieved(target, scaled) - snr) < 0.1
    assert abs(mixing.snr_db(target, scaled) - snr) < 1e-3


def test_mix_sources_each_interferer_relative_to_target_and_noise():
    rng = np.random.default_rng(2)
    t, a, b, n = (rng.standard_normal(8000) * s for s in (0.5, 2.0, 0.01, 0.3))
    mix, tgt, inter = mixing.mix_sources(t, [a, b], [3.0, -5.0], noise=n, noise_snr=12.0)
    np.testing.assert_allclose(mix, tgt + inter, atol=1e-6)
    a_s, b_s, n_s = (mixing.scale_to_snr(t, x, s) for x, s in ((a, 3.0), (b, -5.0), (n, 12.0)))
    np.testing.assert_allclose(inter, a_s + b_s + n_s, atol=1e-5)
    assert abs(_achieved(t, a_s) - 3.0) < 0.1 and abs(_achieved(t, b_s) + 5.0) < 0.1
    with pytest.raises(ValueError, match="SNR"):
        mixing.mix_sources(t, [a], [1.0, 2.0])
    with pytest.raises(ValueError, match="samples"):
        mixing.mix_sources(t, [a[:100]], [1.0])


def test_silent_inputs_never_give_nan_or_inf():
    z, x = np.zeros(6400, np.float32), np.ones(6400, np.float32)
    for out in (mixing.scale_to_snr(z, x, 5.0), mixing.scale_to_snr(x, z, 5.0),
                mixing.scale_to_snr(z, z, -5.0), *mixing.mix_sources(z, [z], [0.0]),
                *mixing.mix_sources(z, [x], [0.0]), *mixing.peak_normalise(z, z, z),
                *mixing.peak_normalise(z, x, joint=False), *mixing.peak_normalise(np.zeros(0))):
        assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(mixing.peak_normalise(z)[0], z)


def test_peak_normalise_joint_keeps_the_sum_and_separate_matches_seanet():
    rng = np.random.default_rng(3)
    t, i = rng.standard_normal(1000) * 3, rng.standard_normal(1000)
    m = t + i
    mn, tn, inn = mixing.peak_normalise(m, t, i)
    np.testing.assert_allclose(mn, tn + inn, atol=1e-6)
    assert max(np.abs(x).max() for x in (mn, tn, inn)) == pytest.approx(1.0)
    for x in mixing.peak_normalise(m, t, i, joint=False):
        assert np.abs(x).max() == pytest.approx(1.0)


def _marked(n_frames):
    """Audio whose frame k holds the value k, and visual frames holding k."""
    wav = np.repeat(np.arange(n_frames, dtype=np.float32), SAMPLES_PER_FRAME)
    visual = np.tile(np.arange(n_frames, dtype=np.uint8)[:, None, None], (1, 4, 4))
    return wav, visual


def test_random_crop_stays_aligned_on_frame_boundaries():
    rng = np.random.default_rng(4)
    wav, visual = _marked(60)
    wav = np.concatenate([wav, np.full(100, -1, np.float32)])  # samples past the last frame
    starts = set()
    for _ in range(50):
        w, v = mixing.random_crop(wav, visual, 25, rng)
        assert len(v) == 25 and len(w) == 25 * SAMPLES_PER_FRAME
        frames_of_audio = w.reshape(25, SAMPLES_PER_FRAME)
        assert np.all(frames_of_audio == v[:, :1, 0].astype(np.float32))  # frame k <-> 640k..
        starts.add(int(v[0, 0, 0]))
    assert len(starts) > 10 and max(starts) <= 35
    w, v = mixing.random_crop(wav, visual, 100, rng)  # shorter clip: whole, unpadded
    assert len(v) == 60 and len(w) == 60 * SAMPLES_PER_FRAME
    w, v = mixing.random_crop(wav, visual, 10, rng, start=7)
    assert v[0, 0, 0] == 7 and w[0] == 7.0
    with pytest.raises(ValueError, match="fewer"):
        mixing.random_crop(wav[:1000], visual, 10, rng)


def test_pad_to_zero_audio_edge_visual_and_truncates():
    wav, visual = _marked(5)
    w, v = mixing.pad_to(wav, visual, 8)
    assert len(w) == 8 * SAMPLES_PER_FRAME and np.all(w[5 * SAMPLES_PER_FRAME:] == 0)
    assert v[:, 0, 0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    w, v = mixing.pad_to(wav, visual, 3)
    assert len(w) == 3 * SAMPLES_PER_FRAME and len(v) == 3
    assert mixing.pad_to(None, visual, 6)[0] is None


def test_mixture_config_defaults_validation_and_noise_slot():
    cfg = mixing.MixtureConfig()
    assert cfg.crop_frames == 100 and cfg.max_interferers == 1 and cfg.normalise == "peak"
    assert mixing.MixtureConfig(crop_seconds=None).crop_frames is None
    rng = np.random.default_rng(5)
    both = mixing.MixtureConfig(num_interferers_probs={1: 1, 2: 3})
    draws = [both.sample_num_interferers(rng) for _ in range(400)]
    assert 0.6 < np.mean(np.array(draws) == 2) < 0.9 and both.max_interferers == 2
    assert all(-10 <= s <= 10 for s in cfg.sample_snrs(50, rng))
    assert cfg.sample_noise(100, rng) == (None, None)
    for bad in ({"num_interferers_probs": {0: 1.0}}, {"snr_range": (5, -5)},
                {"noise_prob": 0.5}, {"normalise": "rms"}, {"crop_seconds": 0.01}):
        with pytest.raises(ValueError):
            mixing.MixtureConfig(**bad)
    called = mixing.MixtureConfig(noise_prob=1.0, noise_source=lambda r: r.standard_normal(50))
    noise, snr = called.sample_noise(120, rng)
    assert noise.shape == (120,) and 0 <= snr <= 15  # short noise is repeated
    np.testing.assert_array_equal(noise[50:100], noise[:50])
    cycled = mixing.MixtureConfig(noise_prob=1.0, noise_source=[np.ones(10), 2 * np.ones(10)])
    firsts = [cycled.sample_noise(5, rng)[0][0] for _ in range(4)]
    assert firsts == [1.0, 2.0, 1.0, 2.0]
