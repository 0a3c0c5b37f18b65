"""Checkpoints are complete or invisible (avse.checkpoints): corrupt ones are skipped, a
failed write (disk full) leaves the previous one intact, the random generators come back."""
import logging
import os
import random
import resource
import time

import numpy as np
import pytest
import speechbrain as sb
import torch

from avse.checkpoints import (TMP_PREFIX, Checkpointer, CheckpointWriteError, RunState,
                              checkpoint_problem, upgrade)


def _objects(seed=0):
    torch.manual_seed(seed)
    return {"model": torch.nn.Linear(64, 64), "run_state": RunState()}


def _save(ckpt, **meta):
    out = ckpt.save_checkpoint(meta=meta)
    time.sleep(0.01)  # distinct unixtime order
    return out


def _weights(obj):
    return obj["model"].weight.detach().clone()


def test_save_is_a_renamed_folder_with_a_manifest(tmp_path):
    objs = _objects()
    ckpt = Checkpointer(tmp_path, recoverables=objs)
    saved = _save(ckpt, epoch=1)
    assert sorted(os.listdir(tmp_path)) == [saved.path.name]  # no temporary left
    meta = sb.utils.checkpoints.Checkpointer._construct_checkpoint_objects([saved.path])[0].meta
    assert set(meta["files"]) == {"model.ckpt", "run_state.ckpt"}
    assert meta["files"]["model.ckpt"]["size"] == os.path.getsize(saved.path / "model.ckpt")
    assert checkpoint_problem(saved.path) is None


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete", "bad_yaml"])
def test_a_damaged_latest_checkpoint_is_skipped_and_the_previous_loaded(tmp_path, caplog, damage):
    objs = _objects()
    ckpt = Checkpointer(tmp_path, recoverables=objs)
    first = _save(ckpt, epoch=1)
    good = _weights(objs)
    with torch.no_grad():
        objs["model"].weight.add_(1.0)
    latest = _save(ckpt, epoch=2)
    path = latest.path / "model.ckpt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "flip_byte":  # same size, other content: only the sha256 tells
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "delete":
        path.unlink()
    else:
        (latest.path / "CKPT.yaml").write_text("end-of-epoch: [unclosed\n")
    assert checkpoint_problem(latest.path) is not None
    fresh = _objects(seed=1)
    with caplog.at_level(logging.WARNING, logger="avse.checkpoints"):
        found = Checkpointer(tmp_path, recoverables=fresh).recover_if_possible()
    assert found.path == first.path
    assert torch.equal(_weights(fresh), good)
    assert any("skipping the checkpoint" in r.message and latest.path.name in r.message
               for r in caplog.records)


def test_a_speechbrain_checkpoint_without_manifest_still_loads(tmp_path):
    objs = _objects()
    sb.utils.checkpoints.Checkpointer(tmp_path, recoverables={"model": objs["model"]}) \
        .save_checkpoint(meta={"epoch": 1})
    fresh = _objects(seed=3)
    found = Checkpointer(tmp_path, recoverables={"model": fresh["model"]}).recover_if_possible()
    assert found is not None and torch.equal(_weights(fresh), _weights(objs))
    # ... unless the file of a recoverable is missing
    (found.path / "model.ckpt").unlink()
    assert Checkpointer(tmp_path, recoverables={"model": fresh["model"]}).find_checkpoint() is None


def test_temporaries_of_a_killed_save_are_invisible_and_removed(tmp_path):
    objs = _objects()
    ckpt = Checkpointer(tmp_path, recoverables=objs)
    saved = _save(ckpt)
    stale = tmp_path / f"{TMP_PREFIX}CKPT+2026-01-01+00-00-00+00"
    stale.mkdir()
    (stale / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: 9e9\n")  # newest, if listed
    assert [c.path for c in ckpt.list_checkpoints()] == [saved.path]
    Checkpointer(tmp_path, recoverables=objs)  # a new start removes it
    assert not stale.exists()


def test_disk_full_during_a_save_is_a_clear_error_and_loses_nothing(tmp_path):
    objs = {"model": torch.nn.Linear(256, 256), "run_state": RunState()}  # 260 kB of weights
    ckpt = Checkpointer(tmp_path, recoverables=objs)
    kept = _save(ckpt, epoch=1)
    before = {p.name: p.read_bytes() for p in kept.path.iterdir()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # files stop at 64 kB: EFBIG
    try:
        with pytest.raises(CheckpointWriteError) as err:
            ckpt.save_and_keep_only(meta={"epoch": 2}, num_to_keep=1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(err.value)
    assert str(kept.path) in message and "intact" in message and "run the same command" in message
    assert sorted(os.listdir(tmp_path)) == [kept.path.name]  # no half folder, nothing deleted
    assert {p.name: p.read_bytes() for p in kept.path.iterdir()} == before
    assert checkpoint_problem(kept.path) is None


def test_run_state_restores_every_random_generator(tmp_path):
    objs = _objects()
    ckpt = Checkpointer(tmp_path, recoverables=objs)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    objs["run_state"].counters["nonfinite_skipped"] = 2
    _save(ckpt)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    state = RunState()
    Checkpointer(tmp_path, recoverables={"model": objs["model"], "run_state": state}) \
        .recover_if_possible()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and state.counters == {"nonfinite_skipped": 2}


def test_a_plain_speechbrain_checkpointer_is_upgraded_in_place(tmp_path):
    plain = sb.utils.checkpoints.Checkpointer(tmp_path, recoverables=_objects())
    assert upgrade(plain) is plain and isinstance(plain, Checkpointer)
    saved = _save(plain)
    assert checkpoint_problem(saved.path) is None
