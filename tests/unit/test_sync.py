"""AV synchronisation: shift_visual, the training augmentation (av_shift_frames), offset parsing."""
import numpy as np
import pytest
import torch

from avse.data import lists
from avse.data.mixing import MixtureConfig, shift_visual
from avse.data.loaders import make_list_loader, make_train_loader
from avse.data.shards import write_split
from avse.evaluation import MetricTracker
from avse.evaluation.sync_sweep import parse_offsets, shift_batch_visual, summarise

# ------------------------------------------------------------------ shift_visual


def test_shift_visual_exact_frames():
    v = np.arange(6) * 10
    assert shift_visual(v, 2).tolist() == [0, 0, 0, 10, 20, 30]       # video lags: late frames
    assert shift_visual(v, -2).tolist() == [20, 30, 40, 50, 50, 50]   # video leads
    assert shift_visual(v, 0) is v
    assert shift_visual(v, 6).tolist() == [0] * 6                     # beyond the length
    assert shift_visual(v, 100).tolist() == [0] * 6
    assert shift_visual(v, -6).tolist() == [50] * 6
    assert shift_visual(v, -100).tolist() == [50] * 6
    assert shift_visual(np.zeros((0, 3)), 2).shape == (0, 3)


def test_shift_visual_keeps_shape_dtype_and_frames():
    rng = np.random.default_rng(0)
    lips = rng.integers(0, 255, (7, 88, 88), dtype=np.uint8)
    out = shift_visual(lips, 3)
    assert out.shape == lips.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[3:], lips[:4])
    np.testing.assert_array_equal(out[:3], np.repeat(lips[:1], 3, axis=0))
    emb = rng.standard_normal((5, 512)).astype(np.float16)
    out = shift_visual(emb, -1)
    np.testing.assert_array_equal(out[:4], emb[1:])
    np.testing.assert_array_equal(out[4], emb[4])
    assert shift_visual(lips, np.int64(2)).shape == lips.shape
    with pytest.raises(ValueError, match="whole number"):
        shift_visual(lips, 1.5)


def test_shift_batch_visual_shifts_each_example_over_its_own_frames():
    v = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 8, 9, 9, 9, 9]])  # example 1: 3 frames + padding
    lengths = torch.tensor([1.0, 0.5])
    assert shift_batch_visual(v, lengths, 2).tolist() == [[0, 0, 0, 1, 2, 3], [7, 7, 7, 7, 7, 7]]
    assert shift_batch_visual(v, lengths, -1).tolist() == [[1, 2, 3, 4, 5, 5], [8, 9, 9, 9, 9, 9]]
    assert shift_batch_visual(v, lengths, 0) is v


# ------------------------------------------------------------------ config


def test_config_av_shift_validation_and_sampling():
    with pytest.raises(ValueError, match="av_shift_frames"):
        MixtureConfig(av_shift_frames=-1)
    with pytest.raises(ValueError, match="av_shift_frames"):
        MixtureConfig(av_shift_frames=1.5)
    with pytest.raises(ValueError, match="av_shift_prob"):
        MixtureConfig(av_shift_frames=1, av_shift_prob=1.5)
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert MixtureConfig().sample_av_shift(rng) == 0
    assert MixtureConfig(av_shift_frames=3, av_shift_prob=0.0).sample_av_shift(rng) == 0
    assert rng.bit_generator.state == state  # off: nothing drawn, other draws unchanged
    draws = [MixtureConfig(av_shift_frames=3).sample_av_shift(rng) for _ in range(400)]
    assert set(draws) == set(range(-3, 4))
    half = [MixtureConfig(av_shift_frames=3, av_shift_prob=0.5).sample_av_shift(rng)
            for _ in range(400)]
    assert 0.45 < np.mean(np.array(half) == 0) < 0.75  # 0.5 + 0.5 / 7


# ------------------------------------------------------------------ loaders


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sync_shards"))
    rng = np.random.default_rng(0)
    utts = [{"__key__": f"id{s}/vid{u}/00001",
             "flac": 0.1 * rng.standard_normal(640 * 30).astype(np.float32),
             "lips.npy": rng.integers(0, 255, (30, 88, 88), dtype=np.uint8),
             "json": {"spk": f"id{s}"}} for s in range(4) for u in range(2)]
    write_split(utts, d, shard_size=4)
    pool = [{"key": u["__key__"], "spk": u["json"]["spk"], "set": "x", "duration": 1.2}
            for u in utts]
    rows = lists.generate_mixtures(pool, 6, 2, (-5, 5), seed=1, mix_set="x")
    return d, rows


def _examples(d, rows, stage, k):
    loader = make_list_loader(d, rows, stage=stage, set_name="x",
                              config=MixtureConfig(crop_seconds=0.8, av_shift_frames=k))
    return [loader.dataset[(i, 2)] for i in range(len(rows))]


def test_list_mode_train_shifts_the_lips_by_the_drawn_offset(shards):
    d, rows = shards
    plain, shifted = _examples(d, rows, "train", 0), _examples(d, rows, "train", 3)
    again = _examples(d, rows, "train", 3)
    offsets = [e["av_shift"] for e in shifted]
    assert all(e["av_shift"] == 0 for e in plain)
    assert all(-3 <= o <= 3 for o in offsets) and any(o != 0 for o in offsets)
    assert offsets == [e["av_shift"] for e in again]  # reproducible: the example's own rng
    for p, s in zip(plain, shifted):
        for name in ("mixture", "target", "interference"):  # the offset is drawn last
            np.testing.assert_array_equal(p[name], s[name])
        assert s["visual"].shape == p["visual"].shape == (20, 88, 88)
        np.testing.assert_array_equal(s["visual"], shift_visual(p["visual"], s["av_shift"]))


@pytest.mark.parametrize("stage", ["valid", "test"])
def test_list_mode_valid_and_test_stay_synchronised(shards, stage):
    d, rows = shards
    for p, s in zip(_examples(d, rows, stage, 0), _examples(d, rows, stage, 4)):
        assert s["av_shift"] == 0
        np.testing.assert_array_equal(p["visual"], s["visual"])


def test_dynamic_mixing_shifts_the_lips(shards):
    d, _ = shards
    found = []
    for seed in range(4):
        firsts = []
        for k in (0, 2):
            loader = make_train_loader(d, MixtureConfig(crop_seconds=0.8, av_shift_frames=k),
                                       batch_size=1, shuffle_buffer=4, epoch_steps=1)
            firsts.append(next(iter(loader.dataset.examples(np.random.default_rng(seed)))))
        plain, shifted = firsts
        np.testing.assert_array_equal(plain["mixture"], shifted["mixture"])
        np.testing.assert_array_equal(shifted["visual"],
                                      shift_visual(plain["visual"], shifted["av_shift"]))
        found.append(shifted["av_shift"])
    assert any(o != 0 for o in found) and all(-2 <= o <= 2 for o in found)
    # through the loader: batches carry the shifted lips
    batch = next(iter(make_train_loader(d, MixtureConfig(crop_seconds=0.8, av_shift_frames=2),
                                        batch_size=2, shuffle_buffer=4, epoch_steps=1)))
    assert tuple(batch.visual.shape) == (2, 20, 88, 88)


# ------------------------------------------------------------------ sweep helpers


@pytest.mark.parametrize("text", ["", "a:b", "5:-5", "1:2:0", "1:2:3:4", "1,,2", "0,0", "1.5"])
def test_parse_offsets_rejects(text):
    with pytest.raises(ValueError, match="offsets"):
        parse_offsets(text)


def test_parse_offsets_and_summary():
    assert parse_offsets("-5:5") == list(range(-5, 6))
    assert parse_offsets(" -1 ") == [-1]
    t = MetricTracker()
    for o, v in ((-1, 3.0), (0, 5.0), (0, 7.0), (1, 4.0)):
        t.add("u", {"si_sdr": v, "si_sdri": v + 1}, offset=o)
    rows = summarise(t, [-1, 0, 1, 2])
    assert [r["offset"] for r in rows] == [-1, 0, 1, 2]
    assert rows[1]["si_sdri"] == 7.0 and rows[1]["count"] == 2 and rows[1]["offset_ms"] == 0
    assert rows[0]["si_sdri_vs_0"] == -3.0 and rows[0]["offset_ms"] == -40.0
    assert rows[3]["count"] == 0 and np.isnan(rows[3]["si_sdri"])
