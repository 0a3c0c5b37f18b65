"""Lip-reading data faults (issue 13, Training): the text loader gives the AVSE loaders'
guarantees.

- A missing, garbage or unreadable local shard (open patched: tests run as root) in any of
  the splits read together is one ShardError naming each before training, or with
  ``skip_bad_shards`` (the yaml key, through :func:`avse.lipreading.make_loaders`) left out
  with a warning and listed in ``loader.faults["skipped_shards"]``.
- Bad samples (no json, no transcript, bad lips) and a tar cut inside its last sample are
  skipped and counted in ``loader.faults`` (``skipped``, ``reasons``, ``bad_samples``),
  through DataLoader worker processes too; no good sample is lost.
- LipReadingBrain logs them per epoch as ``skipped_samples`` in train_log.txt (AVSEBrain's
  path).
"""
import builtins
import contextlib
import os

import numpy as np
import pytest
from hyperpyyaml import load_hyperpyyaml

from avse.data.loaders.text import make_text_loader, text_vocab_size
from avse.data.shards import ShardError
from avse.lipreading import LipReadingBrain, make_loaders, model_info
from tests.conftest import REPO
from tests.lipreading_helpers import make_corpus
from tests.reliability.test_data_faults import shard_keys, truncate_last

BAD = ("no_text", "no_lips", "bad_json")  # one sample of each in the first split


def _shards(split):
    return sorted(os.path.join(split, n) for n in os.listdir(split) if n.endswith(".tar"))


@contextlib.contextmanager
def _denied(path):
    """``open(path)`` raises PermissionError in this process (root reads everything)."""
    real = builtins.open

    def deny(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real(file, *args, **kwargs)

    builtins.open = deny
    try:
        yield
    finally:
        builtins.open = real


def test_bad_shards_are_named_before_training_or_skipped(tmp_path):
    root = tmp_path / "lrs2"
    make_corpus(root, np.random.default_rng(0), splits={"pretrain": 7, "train": 8, "val": 2})
    pretrain, train = str(root / "shards" / "pretrain"), str(root / "shards" / "train")
    assert len(_shards(pretrain)) == len(_shards(train)) == 4
    gone, garbage, locked = _shards(pretrain)[1], _shards(train)[0], _shards(train)[3]
    lost = set(shard_keys(gone)) | set(shard_keys(garbage)) | set(shard_keys(locked))
    os.remove(gone)
    with open(garbage, "wb") as f:
        f.write(b"not a tar at all" * 64)
    why = {gone: "missing", garbage: "not a tar", locked: "cannot be read (Permission denied)"}
    both = [pretrain, train]
    hp = {"train_shards": both, "valid_shards": train, "batch_size": 2, "epoch_steps": 2,
          "shuffle_buffer": 4, "modules": {"model": None}}
    with _denied(locked):
        for make, named in ((lambda: make_text_loader(both, batch_size=2), list(why)),
                            (lambda: make_text_loader(train, stage="valid"), [garbage, locked]),
                            (lambda: make_loaders(hp), list(why))):  # the yaml's way
            with pytest.raises(ShardError) as err:
                make()
            for path in named:  # one error naming every bad shard, and the way out
                assert f"{path}: {why[path]}" in str(err.value), str(err.value)
            assert "skip_bad_shards: true" in str(err.value)
        with pytest.warns(UserWarning, match="skipping 3 of 8 shard"):
            loader = make_text_loader(both, batch_size=2, stage="train", shuffle_buffer=4,
                                      skip_bad_shards=True)
        with pytest.warns(UserWarning) as warned:
            train_loader, valid = make_loaders({**hp, "skip_bad_shards": True})
        assert ["skipping 3 of 8 shard" in str(w.message) for w in warned] == [True, False]
        assert ["skipping 2 of 4 shard" in str(w.message) for w in warned] == [False, True]
        # what only reads meta.json is not stopped by a missing shard
        assert text_vocab_size(both) > 0 and model_info(hp)["crop"] == "lrs2"
    assert sorted(loader.faults["skipped_shards"]) == sorted([gone, garbage, locked])
    assert loader.faults["skipped"] == 0 and len(loader.dataset.urls) == 5
    # the default epoch: the clips of the shards left, not of the split
    assert len(loader) == (7 + 8 - len(lost)) // 2
    keys = {k for b in loader for k in b.keys}
    assert keys and not keys & lost
    assert sorted(train_loader.faults["skipped_shards"]) == sorted([gone, garbage, locked])
    assert sorted(valid.faults["skipped_shards"]) == sorted([garbage, locked])
    assert {k for b in valid for k in b.keys} == set(shard_keys(_shards(train)[1])) | \
        set(shard_keys(_shards(train)[2]))


def test_bad_samples_and_a_cut_tar_are_counted_in_loader_faults(tmp_path):
    split, _, samples = make_corpus(tmp_path, np.random.default_rng(1), n_clips=9, bad=BAD)
    last = _shards(split)[0]  # (the bad samples are in the last shard)
    cut = truncate_last(last)  # the tar ends inside its last sample
    good = set(samples) - {f"9{i:03d}/main/00001" for i in range(len(BAD))} - {cut}

    test = make_text_loader(split, batch_size=2, stage="test")
    assert {k for b in test for k in b.keys} == good  # every good clip, each once
    faults = test.faults
    assert faults["reasons"] == {**{r: 1 for r in BAD}, "bad_tar": 1}, faults
    assert faults["skipped"] == len(BAD) + 1 == len(faults["bad_samples"])
    assert f"{last}:{cut}" in faults["bad_samples"]
    assert dict(test.skipped) == {r: 1 for r in BAD}  # the loader's own counter, as before

    train = make_text_loader(split, batch_size=2, stage="train", epoch_steps=6,
                             shuffle_buffer=2, num_workers=2)
    batches = list(train)
    assert len(batches) == 6 and all(b.faults is None for b in batches)  # taken by the loader
    faults = train.faults  # gathered from both worker processes
    assert faults["skipped"] == sum(faults["reasons"].values()) >= len(BAD) + 1, faults
    assert set(BAD) | {"bad_tar"} <= set(faults["reasons"]) <= set(BAD) | {"bad_tar",
                                                                          "ctc_too_short"}
    assert {k for b in batches for k in b.keys} <= good


TINY = ["--device=cpu", "--noprogressbar", "--frontend_type=cnn",
        "--frontend_config={hidden: 16, channels: [8, 16]}", "--d_model=16", "--num_layers=1",
        "--nhead=2", "--d_ffn=32", "--batch_size=4", "--valid_batch_size=8",
        "--num_workers=0", "--shuffle_buffer=8", "--dropout=0.0", "--number_of_epochs=1",
        "--epoch_steps=2", "--curriculum=null"]


def test_lip_reading_brain_logs_skipped_samples(tmp_path):
    data, out = tmp_path / "lrs2", tmp_path / "exp"
    make_corpus(data, np.random.default_rng(2), splits={"pretrain": 2, "train": 2, "val": 2},
                bad=BAD)  # one pass: 7 clips, the shuffle buffer holds 8: every bad one is met
    with open(os.path.join(REPO, "egs", "lrs2", "hparams", "lipreading.yaml")) as f:
        hp = load_hyperpyyaml(f, "\n".join(a.lstrip("-").replace("=", ": ", 1) for a in
                                           [f"--data_folder={data}", f"--output_folder={out}"]
                                           + TINY[2:]))
    brain = LipReadingBrain(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                            run_opts={"device": "cpu", "noprogressbar": True},
                            checkpointer=hp["checkpointer"])
    train, valid = make_loaders(hp)
    brain.fit(hp["epoch_counter"], train, valid)
    skipped = train.faults["skipped"]
    assert skipped >= len(BAD)
    with open(hp["train_log"]) as f:
        log = f.read()
    assert f"skipped_samples: {skipped}" in log, log
