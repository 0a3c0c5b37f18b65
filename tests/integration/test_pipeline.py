"""Data pipeline on tiny generated shards: dynamic mixing, epochs, rank/worker splits, URL specs, lists.

Each utterance carries a frame marker: lips frame k of utterance u hold the value
``m = (k + 37 u) % 256`` and the audio of frame k is a sine (whole periods per frame) of
amplitude ``amp(m)``, so audio/visual alignment can be checked after cropping and mixing.
"""
import warnings

import numpy as np
import pytest

from avse.data import lists
from avse.data import loaders, partition
from avse.data.align import SAMPLES_PER_FRAME as SPF
from avse.data.mixing import MixtureConfig
from avse.data.shards import (ShardError, scan_speakers, split_speakers, write_speakers_file,
                              write_split)

N_SPK, N_UTT = 4, 4
FRAMES = [20, 27, 34, 41]  # 0.8 .. 1.64 s: the first is shorter than a 1 s crop


def amp(m):
    return 0.05 + 0.1 * (np.asarray(m) % 7)


def _utterance(s, u, emb=False):
    idx = s * N_UTT + u
    n = FRAMES[u]
    marks = (np.arange(n) + 37 * idx) % 256
    t = np.arange(SPF) / 16000.0
    wav = np.concatenate([amp(m) * np.sin(2 * np.pi * 250 * (s + 2) * t) for m in marks])
    key = f"id{s:05d}/video{idx:06d}/00001"
    sample = {"__key__": key, "flac": wav.astype(np.float32),
              "json": {"key": key, "spk": f"id{s:05d}", "duration": n / 25, "num_frames": n}}
    if emb:
        sample["emb.npy"] = np.tile(marks[:, None], (1, 512)).astype(np.float16)
    else:
        sample["lips.npy"] = np.tile(marks.astype(np.uint8)[:, None, None], (1, 88, 88))
    return sample


def _write(root, emb=False, shard_size=4, n_spk=N_SPK):
    # interleave speakers (as the recipe's shuffled shards do)
    samples = [_utterance(s, u, emb) for u in range(N_UTT) for s in range(n_spk)]
    write_split(samples, str(root), shard_size=shard_size)
    return sorted(s["__key__"] for s in samples)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    keys = _write(root / "train")
    _write(root / "emb", emb=True)
    _write(root / "odd", shard_size=3)  # 16 utterances in 6 shards
    return root, keys


CFG = MixtureConfig(crop_seconds=1.0, num_interferers_probs={1: 0.5, 2: 0.5})


def _spk(key):
    return key.split("/")[0]


def _check_alignment(batch, i):
    """Frame j of the target audio has amplitude amp(lips value of frame j) x a constant."""
    n = int(round(float(batch.lengths[i]) * batch.visual.shape[1]))
    frames = batch.target[i].numpy().reshape(-1, SPF)[:n]
    marks = batch.visual[i, :n, 0, 0].numpy().astype(np.int64)
    ratio = np.sqrt(2 * np.mean(frames.astype(np.float64) ** 2, axis=1)) / amp(marks)
    assert np.allclose(ratio, ratio[0], rtol=0.02), ratio


def test_dynamic_mixing_batches(shards):
    root, keys = shards
    loader = loaders.make_train_loader(str(root / "train"), CFG, batch_size=3, epoch_steps=4,
                                        shuffle_buffer=6, seed=0)
    speakers = sorted({_spk(k) for k in keys})
    n_inter, short = set(), 0
    for batch in loader:
        assert batch.mixture.shape == batch.target.shape == batch.interference.shape == (3, 16000)
        assert batch.mixture.dtype == batch.target.dtype == batch.interference.dtype
        assert str(batch.mixture.dtype) == "torch.float32"
        assert batch.visual.shape == (3, 25, 88, 88) and str(batch.visual.dtype) == "torch.uint8"
        assert ((batch.lengths > 0) & (batch.lengths <= 1)).all()
        short += int((batch.lengths < 1).sum())
        assert (batch.mixture - batch.target - batch.interference).abs().max() < 1e-5
        assert batch.mixture.abs().max() <= 1.0 + 1e-6
        for i, key in enumerate(batch.keys):
            assert batch.speaker[i] == speakers.index(_spk(key))
            inter_spk = [_spk(k) for k in batch.interferer_keys[i]]
            assert _spk(key) not in inter_spk and len(set(inter_spk)) == len(inter_spk)
            n_inter.add(len(inter_spk))
            snr = batch.snr[i].numpy()
            assert np.all((snr[:len(inter_spk)] >= -10) & (snr[:len(inter_spk)] <= 10))
            assert np.all(np.isnan(snr[len(inter_spk):]))
            assert batch.visual_keys[i] == key
            _check_alignment(batch, i)
    assert n_inter == {1, 2} and short > 0


def _noise(rng):
    return rng.standard_normal(5000)


def test_noise_slot_in_dynamic_and_list_mode(shards):
    root, keys = shards
    cfg = MixtureConfig(crop_seconds=1.0, noise_prob=1.0, noise_snr_range=(0, 0),
                        noise_source=_noise)
    batch = next(iter(loaders.make_train_loader(str(root / "train"), cfg, batch_size=2,
                                                 epoch_steps=1, shuffle_buffer=4)))
    assert (batch.mixture - batch.target - batch.interference).abs().max() < 1e-5
    rows = _list(keys, 1, 2, 7)
    batch = next(iter(loaders.make_list_loader(str(root / "train"), rows, config=cfg)))
    t = batch.target[0].double().numpy()
    inter = batch.interference[0].double().numpy()
    # interferer at the row SNR plus noise at 0 dB: more interference than the row alone
    assert 10 * np.log10(np.mean(t ** 2) / np.mean(inter ** 2)) < min(rows[0].interferers[0].snr, 0)


def test_embeddings_are_float32(shards):
    root, _ = shards
    batch = next(iter(loaders.make_train_loader(str(root / "emb"), CFG, batch_size=2,
                                                 epoch_steps=1, shuffle_buffer=4)))
    assert batch.visual.shape == (2, 25, 512) and str(batch.visual.dtype) == "torch.float32"


def _epoch_keys(loader):
    return [tuple(b.keys) for b in loader]


def test_epochs_have_exactly_epoch_steps_and_are_reproducible(shards):
    root, _ = shards
    make = lambda: loaders.make_train_loader(str(root / "train"), CFG, batch_size=2,  # noqa: E731
                                              num_workers=2, epoch_steps=5, shuffle_buffer=4,
                                              seed=3)
    loader = make()
    assert len(loader) == 5
    first, second = _epoch_keys(loader), _epoch_keys(loader)
    assert len(first) == len(second) == 5 and first != second
    again = make()
    assert _epoch_keys(again) == first
    again.set_epoch(1)
    assert _epoch_keys(again) == second
    again.skip_batches(2)  # an intra-epoch resume: the rest of the epoch, then full epochs
    assert [len(_epoch_keys(again)) for _ in range(2)] == [3, 5]
    default = loaders.make_train_loader(str(root / "train"), CFG, batch_size=3, shuffle_buffer=4)
    assert len(default) == 16 // 3 == len(_epoch_keys(default))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_ranks_read_disjoint_shards_covering_the_split(shards, num_workers):
    root, keys = shards
    seen = []
    for rank in range(2):
        loader = loaders.make_train_loader(str(root / "train"), CFG, batch_size=2,
                                            num_workers=num_workers, epoch_steps=12,
                                            shuffle_buffer=3, rank=rank, world_size=2)
        assert len(loader) == 12
        got = [b for b in loader]
        assert len(got) == 12
        seen.append({k for b in got for k in b.keys})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(keys)


def test_split_shards_partitions_exactly_once():
    urls = [f"s{i}" for i in range(12)]
    for world, workers in ((1, 1), (2, 2), (3, 4), (2, 3)):
        parts = [partition.split_shards(urls, r, world, w, workers)
                 for r in range(world) for w in range(workers)]
        assert sorted(u for p in parts for u in p) == sorted(urls)
        assert len({len(p) for p in parts}) == 1


def test_uneven_shards_warn_or_raise(shards, monkeypatch):
    root, _ = shards
    odd = str(root / "odd")  # 6 shards
    with pytest.warns(partition.ShardSplitWarning, match="do not divide evenly"):
        loaders.make_train_loader(odd, CFG, batch_size=2, num_workers=2, rank=0, world_size=2)
    with pytest.raises(ShardError, match="divide evenly"):
        loaders.make_train_loader(odd, CFG, batch_size=2, num_workers=4, strict_split=True)
    with pytest.raises(ShardError, match="no shard"):
        loaders.make_train_loader(odd, CFG, batch_size=2, num_workers=4, rank=1, world_size=2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert partition.dist_info() == (1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 6 shards / (3 ranks x 2 workers): even, no warning
        loader = loaders.make_train_loader(odd, CFG, batch_size=2, num_workers=2)
    assert loader.dataset.rank == 1 and len(loader) == 16 // 6


def test_speakers_file_is_used_when_it_matches_meta(tmp_path):
    keys = _write(tmp_path / "split", n_spk=3)
    split = str(tmp_path / "split")
    expected = sorted({_spk(k) for k in keys})
    assert scan_speakers(split) == split_speakers(split) == expected
    path = tmp_path / "split" / "speakers.txt"
    assert write_speakers_file(split) == str(path)
    assert path.read_text().split() == expected
    path.write_text("c\nb\na\n")  # a file with meta.json's speaker count is trusted
    assert split_speakers(split) == ["a", "b", "c"]
    path.write_text("a\n")  # a stale one is not
    assert split_speakers(split) == expected


def _list(keys, n, k, seed, mix_set="test"):
    pool = [{"key": key, "spk": _spk(key), "set": "test",
             "duration": FRAMES[int(key.split("/")[1][5:]) % N_UTT] / 25} for key in keys]
    return lists.generate_mixtures(pool, n, k, (-8, 8), seed=seed, mix_set=mix_set)


def test_list_mode_full_length_achieves_row_snr(shards, tmp_path):
    root, keys = shards
    rows = _list(keys, 6, 2, 0) + _list(keys, 3, 3, 1) + _list(keys, 4, 2, 2, mix_set="val")
    path = str(tmp_path / "list.csv")
    lists.write_list(rows, path)
    loader = loaders.make_list_loader(str(root / "train"), path, stage="test")
    test_rows = [m for m in rows if m.set == "test"]
    got = list(loader)
    assert len(got) == len(test_rows) == 9
    for mix, batch in zip(test_rows, got):
        n = int(np.floor(mix.length * 25 + 1e-6))
        assert batch.mixture.shape == (1, n * SPF) and batch.visual.shape[1] == n
        assert batch.keys == [mix.target.key] and float(batch.lengths[0]) == 1.0
        t = batch.target[0].double().numpy()
        inter = (batch.mixture[0].double() - batch.target[0].double()).numpy()
        if len(mix.interferers) == 1:
            achieved = 10 * np.log10(np.mean(t ** 2) / np.mean(inter ** 2))
            assert abs(achieved - mix.interferers[0].snr) < 0.1
        np.testing.assert_allclose(batch.snr[0].numpy(), [s.snr for s in mix.interferers],
                                   atol=1e-4)
        _check_alignment(batch, 0)
    valid = loaders.make_list_loader(str(root / "train"), path, stage="valid", batch_size=2)
    vb = list(valid)
    assert [k for b in vb for k in b.keys] == [m.target.key for m in rows if m.set == "val"]
    assert all(((b.lengths > 0) & (b.lengths <= 1)).all() for b in vb)


def test_list_mode_train_crops_and_ranks_split_rows(shards):
    root, keys = shards
    rows = _list(keys, 9, 2, 4, mix_set="train")
    cfg = MixtureConfig(crop_seconds=0.6)
    per_rank = []
    for rank in range(2):
        loader = loaders.make_list_loader(str(root / "train"), rows, stage="train", config=cfg,
                                           batch_size=2, rank=rank, world_size=2, seed=1)
        batches = list(loader)
        assert len(batches) == len(loader) == 2  # 9 rows -> 4 per rank -> 2 batches
        assert all(b.mixture.shape == (2, 15 * SPF) for b in batches)
        per_rank.append([k for b in batches for k in b.keys])
        again = list(loader)  # the next epoch reshuffles rows and re-crops
        assert not all(np.array_equal(a.mixture.numpy(), b.mixture.numpy())
                       for a, b in zip(batches, again))
    assert len(per_rank[0]) == len(per_rank[1]) == 4
    loader.set_epoch(0)
    loader.skip_batches(1)
    assert [k for b in loader for k in b.keys] == per_rank[1][2:]
    evals = [loaders.make_list_loader(str(root / "train"), rows, stage="test", rank=r,
                                       world_size=2) for r in range(2)]
    got = [[b.keys[0] for b in loader] for loader in evals]
    assert sorted(got[0] + got[1]) == sorted(m.target.key for m in rows)
    assert got[0] == [m.target.key for m in rows[0::2]]


def test_mismatched_lips_come_from_another_speaker(shards):
    root, keys = shards
    rows = _list(keys, 5, 2, 5)
    same = list(loaders.make_list_loader(str(root / "train"), rows, stage="test"))
    other = list(loaders.make_list_loader(str(root / "train"), rows, stage="test",
                                           visual_from="mismatched"))
    for mix, a, b in zip(rows, same, other):
        assert a.visual_keys == [mix.target.key]
        assert _spk(b.visual_keys[0]) not in {s.spk for s in mix.sources}
        assert b.visual.shape == a.visual.shape
        assert not np.array_equal(a.visual.numpy(), b.visual.numpy())
        assert np.array_equal(a.target.numpy(), b.target.numpy())


def test_missing_keys_are_named_or_skipped(shards):
    root, keys = shards
    rows = _list(keys, 3, 2, 6)
    ghost = lists.Mixture("test", (lists.Source("test", "id09999", "ghostvideo0/00001"),
                                    rows[0].sources[1]), 1.0)
    with pytest.raises(lists.ListError, match="id09999/ghostvideo0/00001"):
        loaders.make_list_loader(str(root / "train"), rows + [ghost], stage="test")
    with pytest.warns(UserWarning, match="id09999/ghostvideo0/00001"):
        loader = loaders.make_list_loader(str(root / "train"), rows + [ghost], stage="test",
                                           skip_missing=True)
    assert len(list(loader)) == 3


def test_url_specs_of_a_local_split_give_the_same_batches(shards):
    root, _ = shards
    folder = str(root / "train")
    make = lambda source, **kw: [b.keys for b in loaders.make_train_loader(  # noqa: E731
        source, CFG, batch_size=2, epoch_steps=3, shuffle_buffer=4, seed=5, **kw)]
    expected = make(folder)
    assert make(folder + "/shard-{000000..000003}.tar") == expected
    urls = [f"{folder}/shard-{i:06d}.tar" for i in range(4)]
    assert make(urls, meta=folder + "/meta.json") == expected


def test_one_speaker_per_shard_and_empty_shards_are_clear_errors(tmp_path):
    import tarfile

    by_speaker = [_utterance(s, u) for s in range(2) for u in range(N_UTT)]  # not shuffled
    write_split(by_speaker, str(tmp_path / "sorted"), shard_size=N_UTT)
    loader = loaders.make_train_loader(str(tmp_path / "sorted"), CFG, batch_size=2, rank=0,
                                        world_size=2, epoch_steps=2, shuffle_buffer=2)
    with pytest.raises(ShardError, match="one speaker each; write shards in shuffled order"):
        list(loader)
    empty = [str(tmp_path / f"empty{i}.tar") for i in range(2)]
    for path in empty:
        tarfile.open(path, "w").close()
    loader = loaders.make_train_loader(empty, CFG, batch_size=2, epoch_steps=1,
                                        meta=str(tmp_path / "sorted" / "meta.json"),
                                        speakers=["a", "b"])
    with pytest.raises(ShardError, match="2 shard.s. read and no sample"):
        list(loader)


def test_bad_meta_json_and_corrupt_shards_are_clear_errors(tmp_path):
    import json
    import shutil

    split = tmp_path / "s"
    rng = np.random.default_rng(0)
    write_split([{"__key__": f"id{s}/v{u}/00001", "flac": 0.1 * rng.standard_normal(640 * 30),
                  "lips.npy": np.zeros((30, 88, 88), np.uint8), "json": {"spk": f"id{s}"}}
                 for s in range(3) for u in range(2)], str(split), shard_size=3)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        loaders.make_train_loader(str(split), CFG, batch_size=0)
    meta_path = split / "meta.json"
    good = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in good.items() if k != "num_shards"}))
    with pytest.raises(ShardError, match="meta.json: no num_shards"):
        loaders.make_train_loader(str(split), CFG, batch_size=2)
    meta_path.write_text("{not json")
    with pytest.raises(ShardError, match="meta.json is not valid JSON"):
        loaders.make_train_loader(str(split), CFG, batch_size=2)
    meta_path.write_text(json.dumps(good))
    (split / "shard-000001.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(ShardError, match="shard-000001.tar: cannot read"):
        scan_speakers(str(split))
    shutil.rmtree(split)
