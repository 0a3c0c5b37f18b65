"""Training data faults: corrupt samples are skipped and counted per rank without a crash and
without ranks falling out of step; bad shards are named before training (or skipped).

Tiny splits (4 speakers x 4 utterances of 20 frames, lip embeddings) written here, then
broken in place: FLAC bytes replaced by garbage, an npy cut short, a field left out, a tar
cut inside its last sample, a shard deleted, a shard of garbage, a shard that cannot be
opened (the open call patched: tests run as root).
"""
import builtins
import io
import os
import tarfile

import numpy as np
import pytest

from avse.data import remote
from avse.data.lists import parse_row
from avse.data.loaders import make_list_loader, make_train_loader
from avse.data.mixing import MixtureConfig
from avse.data.shards import ShardError, write_split

FRAMES, CFG = 20, MixtureConfig(crop_seconds=0.4)
N_SPK, N_UTT = 4, 4


def make_split(out, n_spk=N_SPK, n_utt=N_UTT, frames=FRAMES, shard_size=2, visual="emb",
               seed=0):
    """A split of ``n_spk x n_utt`` utterances, speakers interleaved (every shard mixes)."""
    rng = np.random.default_rng(seed)
    samples = []
    for u in range(n_utt):
        for s in range(n_spk):
            key = f"id{s:05d}/vid{u:02d}xxxxxx/00001"
            sample = {"__key__": key, "flac": 0.1 * rng.standard_normal(640 * frames),
                      "json": {"key": key, "spk": f"id{s:05d}", "duration": frames / 25,
                               "num_frames": frames}}
            if visual == "emb":
                sample["emb.npy"] = rng.standard_normal((frames, 512)).astype(np.float16)
            else:
                sample["lips.npy"] = rng.integers(0, 255, (frames, 88, 88), dtype=np.uint8)
            samples.append(sample)
    write_split(samples, str(out), shard_size=shard_size, multiple=2)
    return [s["__key__"] for s in samples]


def shard_keys(path) -> list:
    with tarfile.open(path) as tar:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in tar))


def rewrite(path, key, field, how):
    """Rewrite one member ``key.field`` of a tar: ``how`` = "garbage", "cut" or "drop"."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w") as tar:
        for m, data in members:
            if m.name == f"{key}.{field}":
                if how == "drop":
                    continue
                data = b"\x00garbage" * 40 if how == "garbage" else data[:len(data) // 3]
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def truncate_last(path) -> str:
    """Cut a tar inside its last member's bytes; returns the key of that (lost) sample."""
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    data = open(path, "rb").read()
    open(path, "wb").write(data[:last.offset_data + last.size // 2])
    return last.name.split(".", 1)[0]


def corrupt_four(split, visual="emb.npy") -> dict:
    """Break one sample in each of shards 0-3 (ranks 0, 1, 0, 1 of 2): ``{shard: key}``."""
    shards = [os.path.join(split, f"shard-{i:06d}.tar") for i in range(4)]
    bad = {}
    for shard, (field, how) in zip(shards[:3], (("flac", "garbage"), (visual, "cut"),
                                                (visual, "drop"))):
        key = shard_keys(shard)[0]
        rewrite(shard, key, field, how)
        bad[shard] = key
    bad[shards[3]] = truncate_last(shards[3])
    return bad


def test_dynamic_mixing_skips_and_counts_bad_samples_per_rank(tmp_path, caplog):
    split = tmp_path / "train"
    keys = make_split(split)  # 16 utterances in 8 shards
    bad = corrupt_four(str(split))
    reasons = [{"bad_flac": 1, "missing_field": 1}, {"bad_npy": 1, "bad_tar": 1}]
    for rank, workers in ((0, 0), (1, 2)):  # rank 1: the counts come back from 2 processes
        loader = make_train_loader(str(split), CFG, batch_size=2, num_workers=workers,
                                   epoch_steps=5, shuffle_buffer=8, rank=rank, world_size=2)
        assert len(loader.faults["bad_samples"]) == 0
        for epoch in range(2):
            batches = list(loader)
            assert len(batches) == 5 and all(len(b) == 2 for b in batches)  # ranks in step
            used = {k for b in batches for k in b.keys + [i for t in b.interferer_keys for i in t]}
            assert not used & set(bad.values()) and used <= set(keys)
            assert all(b.faults is None for b in batches)  # taken into loader.faults
        mine = {f"{s}:{k}" for i, (s, k) in enumerate(sorted(bad.items())) if i % 2 == rank}
        faults = loader.faults
        assert set(faults["bad_samples"]) == mine  # exactly the corrupt ones: no good one lost
        assert faults["skipped"] >= 2 * len(mine)  # each pass over the shards meets them
        assert set(faults["reasons"]) == set(reasons[rank])
    lines = [r.getMessage() for r in caplog.records if "skipped a bad sample" in r.getMessage()]
    shard0 = os.path.join(str(split), "shard-000000.tar")
    assert any(f"rank 0 worker 0: skipped a bad sample: shard {shard0}, sample {bad[shard0]}: "
               "bad_flac" in line for line in lines)


@pytest.mark.filterwarnings("ignore::avse.data.partition.ShardSplitWarning")  # 5 shards left
def test_missing_or_unreadable_shards_are_named_before_training_or_skipped(tmp_path,
                                                                           monkeypatch):
    split = tmp_path / "train"
    make_split(split)
    gone, garbage, locked = (os.path.join(str(split), f"shard-{i:06d}.tar") for i in (1, 2, 5))
    os.remove(gone)
    open(garbage, "wb").write(b"not a tar at all" * 64)
    real_open = builtins.open

    def deny(path, *args, **kwargs):  # root reads everything: make one shard unreadable
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(ShardError) as err:
        make_train_loader(str(split), CFG, batch_size=2, epoch_steps=2)
    for path, why in ((gone, "missing"), (garbage, "not a tar"),
                      (locked, "cannot be read (Permission denied)")):
        assert f"{path}: {why}" in str(err.value)
    assert "skip_bad_shards: true" in str(err.value)
    with pytest.warns(UserWarning, match="skipping 3 of 8 shard"):
        loader = make_train_loader(str(split), CFG, batch_size=2, epoch_steps=3,
                                   skip_bad_shards=True, rank=1, world_size=2)
    assert sorted(loader.faults["skipped_shards"]) == sorted([gone, garbage, locked])
    assert len(loader.dataset.urls) == 5 and len(list(loader)) == 3
    monkeypatch.setattr(builtins, "open", real_open)
    # list mode: the same shard check when the loader is made (every shard of the split)
    rows = [parse_row("train,train,id00000,vid00xxxxxx/00001,0,train,id00001,vid00xxxxxx/00001,"
                      "-2.5,0.6")]
    with pytest.raises(ShardError, match=f"{garbage}: not a tar"):
        make_list_loader(str(split), rows, stage="train")


def test_a_shard_that_fails_over_http_during_training_is_skipped_when_asked(tmp_path,
                                                                            monkeypatch):
    make_split(tmp_path / "train")
    monkeypatch.setattr(remote, "HTTP_RETRIES", 1)
    with remote.serve_folder(tmp_path) as url:
        urls = remote.resolve_split(f"{url}/train").urls
        urls[3] = f"{url}/train/gone.tar"
        loader = make_train_loader(urls, CFG, batch_size=2, epoch_steps=4, shuffle_buffer=8,
                                   meta=f"{url}/train/meta.json", skip_bad_shards=True,
                                   speakers=[f"id{s:05d}" for s in range(N_SPK)])
        assert len(list(loader)) == 4
        assert list(loader.faults["skipped_shards"]) == [urls[3]]
        assert loader.faults["skipped"] == 0
        loader = make_train_loader(urls, CFG, batch_size=2, epoch_steps=4,
                                   meta=f"{url}/train/meta.json",
                                   speakers=[f"id{s:05d}" for s in range(N_SPK)])
        with pytest.raises(ShardError, match="gone.tar: HTTP 404"):
            list(loader)


def _rows(keys, n_rows, seed=0):
    """``n_rows`` 2-speaker rows over ``keys`` (target and interferer of other speakers)."""
    rng, rows = np.random.default_rng(seed), []
    for i in range(n_rows):
        a, b = rng.choice(len(keys), 2, replace=False)
        while keys[a][:7] == keys[b][:7]:
            b = rng.integers(len(keys))
        sa, ra = keys[a].split("/", 1)
        sb, rb = keys[b].split("/", 1)
        rows.append(parse_row(f"train,train,{sa},{ra},0,train,{sb},{rb},-2.5,0.6"))
    return rows


@pytest.mark.filterwarnings("ignore:.*bad shard.*:UserWarning")  # asserted once below
def test_list_mode_substitutes_drops_or_raises_by_stage(tmp_path):
    split = tmp_path / "train"
    keys = make_split(split)
    bad = corrupt_four(str(split))
    lost = bad.pop(os.path.join(str(split), "shard-000003.tar"))  # truncated: see below
    rows = _rows(keys, 44)
    n_lost = sum(lost in (r.target.key, r.interferers[0].key) for r in rows)
    kept = [r for r in rows if lost not in (r.target.key, r.interferers[0].key)]
    no_audio = bad[os.path.join(str(split), "shard-000000.tar")]  # the others lack lips only:
    is_bad = [r.target.key in bad.values() or r.interferers[0].key == no_audio for r in kept]
    bad_rows = sum(is_bad)  # fine as interferers
    assert n_lost >= 1 and bad_rows >= 6
    # a truncated shard is found when the loader is made: an error, or its rest used and
    # the rows that need its lost sample left out (the same on every rank)
    with pytest.raises(ShardError, match="shard-000003.tar: truncated"):
        make_list_loader(str(split), rows, stage="train", batch_size=4)
    for rank in range(2):  # each bad row it reads (and a bad substitute) is counted
        with pytest.warns(UserWarning, match="bad shard"):
            loader = make_list_loader(str(split), rows, stage="train", batch_size=4,
                                      num_workers=rank, rank=rank, world_size=2,
                                      skip_bad_shards=True)
        assert loader.faults["dropped_rows"] == n_lost
        batches = list(loader)
        assert len(batches) == len(loader) == len(kept) // 2 // 4
        assert all(len(b) == 4 for b in batches)
        assert not {k for b in batches for k in b.keys} & set(bad.values())
        assert no_audio not in {i for b in batches for t in b.interferer_keys for i in t}
        loaded = loader.sampler._indices(0)[:len(batches) * 4]  # the rows this rank read
        assert loader.faults["skipped"] >= sum(is_bad[i] for i in loaded) >= 1
        assert set(loader.faults["reasons"]) <= {"bad_flac", "bad_npy", "missing_field"}
        assert {f.split(":", 1)[1] for f in loader.faults["bad_samples"]} <= set(bad.values())
    # validation: bad rows left out of the metrics and counted; test: a clear error
    loader = make_list_loader(str(split), kept, stage="valid", batch_size=1,
                              skip_bad_shards=True)
    assert len(list(loader)) == len(kept) - bad_rows
    assert loader.faults["skipped"] == bad_rows
    loader = make_list_loader(str(split), kept, stage="test", skip_bad_shards=True)
    first = is_bad.index(True)
    with pytest.raises(ShardError, match=f"row {first} .*Re-run the recipe's shard stage"):
        list(loader)
