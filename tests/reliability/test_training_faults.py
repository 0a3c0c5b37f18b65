"""Training survives kill -9 (after a step, in validation, inside a checkpoint save) with the
same final weights, and NaN/inf steps are skipped and counted (README "Reliability")."""
import glob
import json
import os

import pytest
import torch
import yaml

from avse.faults import ENV
from tests.conftest import REPO, run_cmd
from tests.training_helpers import tiny_corpus

DEMO_YAML = os.path.join(REPO, "egs", "synthetic", "hparams", "demo.yaml")
TRAIN_PY = os.path.join(REPO, "egs", "synthetic", "train.py")
STEPS_PER_EPOCH, EPOCHS = 8, 2  # 16 list rows, batch 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("corpus"), train_rows=2 * STEPS_PER_EPOCH)


def _command(corpus, out):
    """The one command a user runs, and runs again after a crash (list mode)."""
    return ["python", TRAIN_PY, DEMO_YAML, f"--data_folder={corpus}", f"--output_folder={out}",
            f"--train_list={corpus}/lists/train_2mix.csv",
            f"--valid_list={corpus}/lists/val_2mix.csv", f"--number_of_epochs={EPOCHS}",
            "--batch_size=2", "--num_workers=0", "--crop_seconds=1.0", "--valid_every_n_epochs=1",
            "--test_sets=null", "--ckpt_interval_steps=3", "--noprogressbar", "--device=cpu"]


def _latest(out):
    """(folder, optimizer_step) of the most recent checkpoint (None, 0 when there is none)."""
    found = []
    for folder in glob.glob(os.path.join(out, "save", "CKPT+*")):
        meta = yaml.safe_load(open(os.path.join(folder, "CKPT.yaml")))
        state = yaml.safe_load(open(os.path.join(folder, "brain.ckpt")))
        found.append((meta["unixtime"], folder, state["optimizer_step"]))
    if not found:
        return None, 0
    _, folder, step = max(found)
    return folder, step


def _run(cmd, monkeypatch, fault=None):
    if fault:
        monkeypatch.setenv(ENV, fault)
    else:
        monkeypatch.delenv(ENV, raising=False)
    return run_cmd(cmd, check=False, timeout=300)


def test_kill_after_a_step_in_validation_and_in_a_save_then_resume_is_exact(corpus, tmp_path,
                                                                            monkeypatch):
    reference = tmp_path / "reference"
    proc = _run(_command(corpus, reference), monkeypatch)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "crashed"
    cmd = _command(corpus, out)
    # (fault, the optimiser step reached when it fires); checkpoints every 3 steps and at the
    # end of each epoch (8 steps)
    kills = [("train_step=5:kill", 5),    # resumes from step 3: steps 4, 5 redone
             ("valid_batch=2:kill", 8),   # epoch 1's validation; resumes from step 6
             ("ckpt_save=2:kill", 11)]    # end of epoch 1 saved, killed saving step 11: from 8
    redone = []
    for fault, reached in kills:
        proc = _run(cmd, monkeypatch, fault)
        assert proc.returncode == -9, (fault, proc.returncode, proc.stderr[-3000:])
        assert not glob.glob(os.path.join(out, "save", "CKPT+*", "*.tmp*"))
        _, resume_from = _latest(out)
        redone.append(reached - resume_from)
    assert redone == [2, 2, 3]
    hidden = [p for p in os.listdir(out / "save") if p.startswith(".tmp-")]
    assert hidden  # the save killed half-way is there, but not a checkpoint ...
    proc = _run(cmd, monkeypatch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [p for p in os.listdir(out / "save") if p.startswith(".tmp-")]  # ... and removed

    (ref_dir, ref_steps), (got_dir, got_steps) = _latest(reference), _latest(out)
    assert ref_steps == got_steps == STEPS_PER_EPOCH * EPOCHS
    want = torch.load(os.path.join(ref_dir, "model.ckpt"), weights_only=True)
    got = torch.load(os.path.join(got_dir, "model.ckpt"), weights_only=True)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "weights differ after the resumes"
    log = (out / "train_log.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in log] == ["epoch: 1", "epoch: 2"]
    with open(tmp_path.parent / "reliability_training.json", "w") as f:  # README figures
        json.dump({"kills": len(kills), "steps_redone": redone, "runs_survived": len(kills)}, f)


def _brain(corpus, out, **overrides):
    from hyperpyyaml import load_hyperpyyaml

    from avse.brain import AVSEBrain
    from avse.experiment import make_loaders

    hp_over = {"data_folder": corpus, "output_folder": str(out),
               "train_list": f"{corpus}/lists/train_2mix.csv", "valid_list": None,
               "number_of_epochs": 1, "batch_size": 2, "num_workers": 0, "crop_seconds": 1.0,
               **overrides}
    with open(DEMO_YAML) as f:
        hp = load_hyperpyyaml(f, hp_over)
    brain = AVSEBrain(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                      run_opts={"device": "cpu", "noprogressbar": True},
                      checkpointer=hp["checkpointer"])
    return brain, hp, make_loaders(hp)[0]


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run_when_they_persist(
        corpus, tmp_path, monkeypatch):
    from avse import faults
    from avse.brain import NonFiniteError

    monkeypatch.setenv(ENV, "loss=2-3:nan")  # the loss of optimiser steps 2 and 3 is NaN
    faults.reset()
    brain, hp, train = _brain(corpus, tmp_path / "a")
    brain.fit(hp["epoch_counter"], train)
    assert brain.optimizer_step == STEPS_PER_EPOCH - 2  # two steps skipped, the rest trained
    assert brain.run_state.counters["nonfinite_skipped"] == 2
    assert all(torch.isfinite(p).all() for p in brain.modules.parameters())
    assert "skipped_steps: 2" in (tmp_path / "a" / "train_log.txt").read_text()

    monkeypatch.setenv(ENV, "loss=2-99:nan")  # from step 2 on: 3 in a row are tolerated
    faults.reset()
    brain, hp, train = _brain(corpus, tmp_path / "b")
    with pytest.raises(NonFiniteError, match="4 optimiser steps in a row"):
        brain.fit(hp["epoch_counter"], train)
    assert brain.optimizer_step == 1
    assert all(torch.isfinite(p).all() for p in brain.modules.parameters())
