"""Shards read through WebDataset URLs: an http server started here (127.0.0.1, a free
port), ``pipe:`` commands, and resampled shards. Tiny data: 16 utterances of 4 speakers
in 8 shards (lip embeddings), plus a 3-shard copy."""
import os
from itertools import islice

import numpy as np
import pytest
import torch

from avse.data import remote
from avse.data.loaders import make_train_loader
from avse.data.mixing import MixtureConfig
from avse.data.shards import ShardError, write_speakers_file, write_split

N_SPK, N_UTT, FRAMES = 4, 4, 20
CFG = MixtureConfig(crop_seconds=0.4)


def _samples():
    rng = np.random.default_rng(0)
    for u in range(N_UTT):
        for s in range(N_SPK):
            key = f"id{s:05d}/video{s * N_UTT + u:06d}/00001"
            yield {"__key__": key, "flac": 0.1 * rng.standard_normal(640 * FRAMES),
                   "emb.npy": rng.standard_normal((FRAMES, 512)).astype(np.float16),
                   "json": {"key": key, "spk": f"id{s:05d}", "duration": FRAMES / 25}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    write_split(list(_samples()), str(root / "train"), shard_size=2)  # 8 shards
    write_speakers_file(str(root / "train"))
    write_split(list(_samples()), str(root / "three"), shard_size=6)  # 3 shards
    return root


@pytest.fixture(scope="module")
def server(root):
    with remote.serve_folder(root) as url:
        yield url


KEYS = sorted(s["__key__"] for s in _samples())


def test_http_is_opened_by_urllib_not_curl():
    """WebDataset's scheme table (webdataset.gopen.gopen_schemes) holds our handler."""
    assert remote.wds_gopen.gopen_schemes["http"] is remote.gopen_http
    assert remote.wds_gopen.gopen_schemes["https"] is remote.gopen_http


def test_two_training_steps_from_an_http_server(server, monkeypatch, tmp_path):
    from avse.losses import neg_si_sdr
    from avse.models import AVSEModel

    monkeypatch.setenv("PATH", str(tmp_path))  # no curl (nor anything else) to run
    loader = make_train_loader(f"{server}/train", CFG, batch_size=2, epoch_steps=2,
                               shuffle_buffer=4, seed=0)
    assert len(loader.dataset.urls) == 8 and loader.dataset.urls[0].startswith(server)
    assert remote.num_speakers(f"{server}/train") == N_SPK
    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 16},
                      {"type": "embedding", "out_dim": 16, "hidden": 16, "num_blocks": 1},
                      {"type": "tcn", "bottleneck": 16, "hidden": 16, "num_blocks": 1,
                       "num_repeats": 1})
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for batch in loader:
        assert batch.visual.shape == (2, 10, 512) and set(batch.keys) <= set(KEYS)
        assert all(KEYS[0][:2] == k[:2] for k in batch.keys)
        assert [int(s) for s in batch.speaker] == [int(k[2:7]) for k in batch.keys]
        loss = neg_si_sdr(model(batch.mixture, batch.visual).estimate, batch.target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_http_errors_name_the_url(server, monkeypatch):
    monkeypatch.setattr(remote, "HTTP_RETRIES", 1)
    with pytest.raises(ShardError, match=r"nope/meta.json: HTTP 404"):
        make_train_loader(f"{server}/nope", CFG, batch_size=2)
    spec = f"{server}/train/shard-{{000000..000008}}.tar"  # one too many
    with pytest.raises(ShardError, match="9 shard URL.*lists 8"):
        make_train_loader(spec, CFG, batch_size=2)
    missing = remote.resolve_split(f"{server}/train/shard-{{000000..000007}}.tar")
    missing.urls[3] = f"{server}/train/gone.tar"
    loader = make_train_loader(missing.urls, CFG, batch_size=2, epoch_steps=40,
                               meta=f"{server}/train/meta.json")
    with pytest.raises(ShardError, match=r"gone.tar: HTTP 404"):
        list(loader)


def test_unreachable_server_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(remote, "HTTP_RETRIES", 1)
    with remote.serve_folder(".") as url:
        pass  # stopped: nothing listens on its port now
    with pytest.raises(ShardError, match=f"{url}/train/meta.json: cannot be fetched"):
        make_train_loader(f"{url}/train", CFG, batch_size=2)


def _pipe(root, split="train", n=8):
    return f"pipe:cat {root}/{split}/shard-{{000000..{n - 1:06d}}}.tar"


def test_pipe_urls_read_every_sample_once_per_pass(root):
    """2 ranks x 2 workers over 8 shards: the first pass of each reader is disjoint from
    the others' and together they are the split; the loaders' targets cover it too."""
    meta = str(root / "train" / "meta.json")
    firsts, targets = [], []
    for rank in range(2):
        loader = make_train_loader(_pipe(root), CFG, batch_size=2, num_workers=2, epoch_steps=8,
                                   shuffle_buffer=3, rank=rank, world_size=2, meta=meta,
                                   strict_split=True)
        assert loader.dataset.urls[0].startswith("pipe:cat ")
        for worker in range(2):
            pass_ = islice(loader.dataset.samples(np.random.default_rng(worker), worker, 2), 4)
            firsts.append([s["__key__"] for s in pass_])
        batches = list(loader)
        assert len(batches) == 8
        targets.append({k for b in batches for k in b.keys})
    assert sorted(k for f in firsts for k in f) == KEYS
    assert not targets[0] & targets[1] and targets[0] | targets[1] == set(KEYS)


def test_pipe_needs_meta_and_failing_commands_are_named(root):
    with pytest.raises(ShardError, match="pass meta="):
        make_train_loader(_pipe(root), CFG, batch_size=2)
    with pytest.raises(ShardError, match="nowhere/meta.json"):
        make_train_loader(_pipe(root), CFG, batch_size=2, meta=f"pipe:cat {root}/nowhere/meta.json")
    bad = make_train_loader([f"pipe:cat {root}/train/missing.tar"] * 8, CFG, batch_size=2,
                            epoch_steps=2, meta=str(root / "train" / "meta.json"))
    with pytest.raises(ShardError, match=r"missing.tar: the command failed \(exit status 1\)"):
        list(bad)


def test_resampled_gives_equal_steps_per_rank(root, server):
    """3 shards cannot be split among 2 ranks x 2 workers; resampled shards can."""
    with pytest.raises(ShardError, match="no shard"):
        make_train_loader(str(root / "three"), CFG, batch_size=2, num_workers=2, rank=1,
                          world_size=2)
    with pytest.warns(UserWarning, match="no speakers.txt"):  # none beside "three"
        speakers = make_train_loader(f"{server}/three", CFG, batch_size=2).dataset.labels
    assert list(speakers) == sorted({k.split("/")[0] for k in KEYS})
    per_rank = []
    for rank in range(2):
        make = lambda: make_train_loader(f"{server}/three", CFG, batch_size=2,  # noqa: E731
                                         num_workers=2, rank=rank, world_size=2,
                                         shuffle_buffer=3, seed=1, resampled=True,
                                         speakers=list(speakers))
        loader = make()
        epochs = [[tuple(b.keys) for b in loader] for _ in range(2)]
        assert len(loader) == 16 // (2 * 2) and [len(e) for e in epochs] == [4, 4]
        assert epochs[0] != epochs[1] and [tuple(b.keys) for b in make()] == epochs[0]
        loader.set_epoch(0)
        loader.skip_batches(3)
        assert len(list(loader)) == 1
        per_rank.append(epochs)
    assert per_rank[0] != per_rank[1]


def test_local_brace_pattern_finds_its_meta_and_speakers(root):
    split = remote.resolve_split(os.path.join(root, "train", "shard-{000000..000007}.tar"))
    assert split.local_dir == os.path.join(root, "train") and split.meta["count"] == 16
    assert split.speakers() == sorted({k.split("/")[0] for k in KEYS})
    with pytest.raises(ShardError, match="meta= is for URL specs"):
        remote.resolve_split(str(root / "train"), meta="x/meta.json")
