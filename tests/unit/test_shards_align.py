"""Shard writing/reading, meta.json, shard planning, and the A/V alignment helper."""
import json

import numpy as np
import pytest
import webdataset as wds

from avse.data import shards
from avse.data.align import AlignmentError, align_av, frames_to_samples


def _samples(n, rng):
    for i in range(n):
        frames = 5 + i % 3
        yield {"__key__": f"id{i % 4:05d}/video{i:06d}/00001",
               "flac": rng.uniform(-0.9, 0.9, frames_to_samples(frames)).astype(np.float32),
               "lips.npy": rng.integers(0, 255, (frames, 88, 88), dtype=np.uint8),
               "json": {"spk": f"id{i % 4:05d}", "duration": frames / 25}}


@pytest.mark.parametrize("n,size,multiple", [(1, 4, 1), (10, 4, 2), (7, 100, 4), (64, 8, 8)])
def test_plan_shards_even_and_multiple(n, size, multiple):
    plan = shards.plan_shards(n, size, multiple)
    assert sum(plan) == n and len(plan) % multiple == 0
    assert max(plan) - min(plan) <= 1 and max(plan) <= size


def test_write_then_read_with_webdataset(tmp_path):
    rng = np.random.default_rng(0)
    expected = list(_samples(10, np.random.default_rng(0)))
    meta = shards.write_split(_samples(10, rng), str(tmp_path), shard_size=3, multiple=2,
                              n_samples=10, extra_meta={"split": "train"})
    assert meta["num_shards"] == 4 and meta["count"] == 10 and meta["speakers"] == 4
    assert meta["fields"] == ["flac", "json", "lips.npy"]
    assert json.loads((tmp_path / "meta.json").read_text())["split"] == "train"
    urls = shards.shard_urls(str(tmp_path))
    got = {}
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        got[s["__key__"]] = shards.decode_sample(s)
    assert len(got) == 10
    for ref in expected:
        back = got[ref["__key__"]]
        assert back["sr"] == 16000
        np.testing.assert_allclose(back["wav"], ref["flac"], atol=1.0 / 32767)
        np.testing.assert_array_equal(back["lips.npy"], ref["lips.npy"])
        assert len(back["wav"]) == 640 * len(back["lips.npy"])
    assert [s["__key__"] for s in shards.iter_split(str(tmp_path))] == [
        s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


def test_missing_meta_and_dotted_key_are_clear_errors(tmp_path):
    with pytest.raises(shards.ShardError, match="meta.json"):
        shards.read_meta(str(tmp_path))
    with pytest.raises(shards.ShardError, match="dot"):
        shards.encode_sample({"__key__": "a.b", "json": {}})


def test_inspect_cli_verifies_counts(tmp_path, capsys):
    shards.write_split(_samples(4, np.random.default_rng(1)), str(tmp_path), shard_size=2,
                       n_samples=4)
    assert shards.main([str(tmp_path), "--verify"]) == 0
    assert "OK: read 4 samples" in capsys.readouterr().out


def test_align_av_trims_pads_and_rejects():
    frames = np.zeros((10, 88, 88), np.uint8)
    wav, f = align_av(np.ones(6400 + 300), frames)
    assert len(wav) == 6400 and len(f) == 10
    wav, f = align_av(np.ones(6400 - 300), frames)  # short audio: zero padded
    assert len(wav) == 6400 and wav[-1] == 0 and len(f) == 10
    wav, f = align_av(np.ones(6400 - 640), frames)  # a whole frame short: drop a frame
    assert len(f) == 9 and len(wav) == 9 * 640
    with pytest.raises(AlignmentError, match="video frames"):
        align_av(np.ones(6400 + 2 * 640), frames)


def test_shard_index_reads_members_with_few_open_files(tmp_path):
    import pickle
    import tarfile

    shards.write_split(_samples(6, np.random.default_rng(2)), str(tmp_path), shard_size=2,
                       n_samples=6)
    index = shards.ShardIndex(str(tmp_path), max_open=1)
    for url in shards.shard_urls(str(tmp_path)):
        with tarfile.open(url) as tar:
            for m in tar:
                key, field = shards.member_key(m.name)
                assert index.read(key, field) == tar.extractfile(m).read()
                assert len(index._maps) == 1
    again = pickle.loads(pickle.dumps(index))  # as a spawned DataLoader worker gets it
    key = sorted(index.entries)[0]
    assert again._maps == {} and again.read(key, "flac") == index.read(key, "flac")
    with pytest.raises(shards.ShardError, match="has no emb.npy"):
        index.read(key, "emb.npy")
