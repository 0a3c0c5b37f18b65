"""Training end to end on tiny generated shards: every egs yaml, resume, DDP, inference."""
import glob
import json
import os
import re

import numpy as np
import pytest
import torch

from avse.data import lists
from avse.data.shards import write_split
from tests.conftest import REPO, run_cmd
from tests.training_helpers import make_split

# AVSE yamls (lip reading, egs/lrs2/hparams/lipreading.yaml: tests/integration/test_lipreading.py)
YAMLS = sorted(p for p in glob.glob(os.path.join(REPO, "egs", "*", "hparams", "*.yaml"))
               if not os.path.basename(p).startswith("lipreading"))
TINY = ["--number_of_epochs=1", "--epoch_steps=2", "--batch_size=2", "--num_workers=0",
        "--crop_seconds=1.0", "--noprogressbar", "--device=cpu"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Two prepared folders (lips and emb) in the recipe's output layout."""
    roots = {}
    for visual in ("lips", "emb"):
        rng = np.random.default_rng(0)
        root = str(tmp_path_factory.mktemp(f"tiny_{visual}"))
        rows = []
        for split, spks, n, count in (("train", ["id00001", "id00002", "id00003", "id00004"], 3, 8),
                                      ("val", ["id00001", "id00002"], 1, 2),
                                      ("test", ["id00005", "id00006", "id00007"], 1, 3)):
            pool = make_split(root, split, spks, n, visual, rng)
            rows += lists.generate_mixtures(pool, count, 2, (-5, 5), seed=1, mix_set=split)
        lists.write_list(rows, os.path.join(root, "lists", "voxmix_2mix.csv"))
        _make_noise_and_condition_lists(root, rng)
        roots[visual] = root
    return roots


def _make_noise_and_condition_lists(root, rng):
    """MUSAN-shaped noise shards under ``root/musan`` and the condition lists of the noisy
    yamls (``lists/test_<condition>.csv``, ``lists/val_2mix_noise.csv``)."""
    from avse.data.lists import make_condition_lists

    for split in ("train", "val", "test"):
        pieces = [{"__key__": f"{cat}/sub/{cat}-{split}{i:03d}-000",
                   "flac": (0.2 * rng.standard_normal(16000)).astype(np.float32),
                   "json": {"category": cat, "duration": 1.0}}
                  for cat, n in (("noise", 2), ("music", 2), ("speech", 8)) for i in range(n)]
        write_split(pieces, os.path.join(root, "musan", "shards", split), shard_size=8)
    make_condition_lists(os.path.join(root, "shards", "test"), os.path.join(root, "lists"), 3,
                         os.path.join(root, "musan", "shards", "test"), seed=1)
    make_condition_lists(os.path.join(root, "shards", "val"), os.path.join(root, "lists"), 2,
                         os.path.join(root, "musan", "shards", "val"), ("2mix_noise",), seed=1)


def _visual_kind(yaml_path):
    text = open(yaml_path).read()
    m = re.search(r"^visual_encoder_type:\s*(\S+)", text, re.M)
    return "emb" if m and m.group(1) == "embedding" else "lips"


@pytest.mark.parametrize("yaml_path", YAMLS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_egs_yaml_trains_and_evaluates(yaml_path, tiny_data, tmp_path):
    out = tmp_path / "exp"
    train_py = os.path.join(os.path.dirname(os.path.dirname(yaml_path)), "train.py")
    data = tiny_data[_visual_kind(yaml_path)]
    noisy = re.search(r"^noise_folder:", open(yaml_path).read(), re.M)
    # AV-Sepformer at its published size: one 0.5 s step (2 steps of 1 s took ~70 s)
    heavy = re.search(r"^separator_type:\s*avsep\b", open(yaml_path).read(), re.M)
    smaller = {"--epoch_steps": "1", "--crop_seconds": "0.5"} if heavy else {}
    tiny = [f"{k}={smaller[k]}" if k in smaller else a
            for a, (k, _, _) in ((a, a.partition("=")) for a in TINY)]
    run_cmd(["python", train_py, yaml_path, f"--data_folder={data}", f"--output_folder={out}"]
            + ([f"--noise_folder={data}/musan"] if noisy else []) + tiny)
    for name in ("hyperparams.yaml", "env.log", "train_log.txt", "model.yaml", "log.txt"):
        assert (out / name).is_file(), name
    assert glob.glob(str(out / "save" / "CKPT+*" / "model.ckpt"))
    tests = json.loads((out / "eval" / "summary.json").read_text())
    for name, summary in tests.items():  # one test set, or one per named condition
        assert summary["si_sdr"]["count"] == 3 and np.isfinite(summary["si_sdr"]["mean"]), name
    table = (out / "eval" / "table.txt").read_text().splitlines()
    assert table[0].split()[0] == "condition" and len(table) == 1 + len(tests)
    if noisy:
        assert list(tests) == ["enhancement", "2mix", "3mix", "2mix_noise", "hard"]
    assert "epoch: 1" in (out / "train_log.txt").read_text()
    if "tensorboard_logger:" in open(yaml_path).read():
        assert any((out / "tensorboard").iterdir())


def test_bf16_training_on_cpu(tiny_data, tmp_path):
    out = tmp_path / "exp"
    run_cmd(["python", os.path.join(REPO, "egs", "synthetic", "train.py"), DEMO_YAML,
             f"--data_folder={tiny_data['lips']}", f"--output_folder={out}", "--precision=bf16",
             "--eval_precision=bf16"] + TINY)
    log = (out / "log.txt").read_text()
    assert "--precision=bf16" in log
    summary = json.loads((out / "eval" / "test.json").read_text())["summary"]
    assert np.isfinite(summary["si_sdr"]["mean"])


DEMO_YAML = os.path.join(REPO, "egs", "synthetic", "hparams", "demo.yaml")


class _Interrupt(Exception):
    pass


def _brain(yaml_path, overrides, **run_opts):
    from hyperpyyaml import load_hyperpyyaml

    from avse.brain import AVSEBrain

    with open(yaml_path) as f:
        hp = load_hyperpyyaml(f, overrides)
    brain = AVSEBrain(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                      run_opts={"device": "cpu", "noprogressbar": True, **run_opts},
                      checkpointer=hp["checkpointer"])
    return brain, hp


def test_interrupt_and_resume_continues_mid_epoch(tiny_data, tmp_path):
    from avse.experiment import make_loaders

    overrides = {"data_folder": tiny_data["lips"], "output_folder": str(tmp_path / "exp"),
                 "number_of_epochs": 2, "epoch_steps": 4, "batch_size": 2, "num_workers": 0,
                 "crop_seconds": 1.0, "trace_dir": str(tmp_path / "trace"), "valid_list": None}
    brain, hp = _brain(DEMO_YAML, overrides, ckpt_interval_steps=2)
    original_end = brain.on_fit_batch_end

    def crash_on_third_step(batch, outputs, loss, should_step):
        original_end(batch, outputs, loss, should_step)
        if brain.optimizer_step == 3:
            raise _Interrupt()

    brain.on_fit_batch_end = crash_on_third_step
    train, _ = make_loaders(hp)
    with pytest.raises(_Interrupt):
        brain.fit(hp["epoch_counter"], train)
    ckpts = glob.glob(str(tmp_path / "exp" / "save" / "CKPT+*"))
    assert len(ckpts) == 1  # the intra-epoch checkpoint written after step 2
    # a fresh process-like start: new objects, same folder
    brain2, hp2 = _brain(DEMO_YAML, overrides, ckpt_interval_steps=2)
    train2, _ = make_loaders(hp2)
    brain2.fit(hp2["epoch_counter"], train2)
    assert brain2.optimizer_step == 2 * 4  # 2 recovered + 2 to finish epoch 1 + 4 of epoch 2
    traces = sorted(glob.glob(str(tmp_path / "trace" / "rank0_epoch*.json")))
    steps = {os.path.basename(t): json.load(open(t))["steps"] for t in traces}
    assert steps == {"rank0_epoch1.json": 2, "rank0_epoch2.json": 4}
    assert hp2["epoch_counter"].current == 2


def test_torchrun_ddp_two_ranks(tiny_data, tmp_path):
    out, trace = tmp_path / "exp", tmp_path / "trace"
    run_cmd(["torchrun", "--standalone", "--nproc_per_node=2",
             os.path.join(REPO, "egs", "synthetic", "train.py"), DEMO_YAML,
             f"--data_folder={tiny_data['lips']}", f"--output_folder={out}",
             "--distributed_backend=gloo", f"--trace_dir={trace}", "--number_of_epochs=1",
             "--epoch_steps=3", "--batch_size=2", "--num_workers=1", "--crop_seconds=1.0",
             "--noprogressbar", "--device=cpu"], timeout=300)
    r0 = json.load(open(trace / "rank0_epoch1.json"))
    r1 = json.load(open(trace / "rank1_epoch1.json"))
    assert r0["steps"] == r1["steps"] == 3
    assert not set(r0["keys"]) & set(r1["keys"])  # each rank mixes its own shards' targets
    assert r0["param_checksum"] == pytest.approx(r1["param_checksum"], rel=1e-6, abs=1e-6)
    assert len(glob.glob(str(out / "save" / "CKPT+*"))) == 1
    assert (out / "eval" / "test.json").is_file()


def test_avse_extract_cli_on_a_synthetic_mp4(tmp_path):
    import soundfile as sf

    from avse.data.synthetic import render_face, speaker_look, write_mp4
    from avse.data.synthetic.speech import speaker_voice, synthesize_utterance
    from avse.models import AVSEModel, save_model

    utt = synthesize_utterance(speaker_voice(3, 0), np.random.default_rng(0), 2.0)
    frames = render_face(utt.opening, utt.width, utt.roundness, look=speaker_look(3, 0))
    mp4 = tmp_path / "face.mp4"
    write_mp4(mp4, frames, utt.wav)
    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32},
                      {"type": "cnn", "out_dim": 16},
                      {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 2,
                       "num_repeats": 1}, fusion="concat")
    save_model(model, str(tmp_path / "model"))
    out = tmp_path / "target.wav"
    proc = run_cmd(["avse-extract", "--model", str(tmp_path / "model"), "--video", str(mp4),
                    "--face_centred", "--out", str(out)])
    wav, sr = sf.read(out)
    assert sr == 16000 and abs(len(wav) - len(utt.wav)) <= 1024  # the mp4's own audio
    assert np.all(np.isfinite(wav)) and "wrote" in proc.stdout
    # a separate mixture at 8 kHz, 0.5 s longer than the video: resampled, padded with a warning
    mix8k = tmp_path / "mix.wav"
    sf.write(mix8k, np.random.default_rng(1).uniform(-0.5, 0.5, 8000 * 2 + 4000), 8000)
    proc = run_cmd(["avse-extract", "--model", str(tmp_path / "model"), "--video", str(mp4),
                    "--face_centred", "--mixture", str(mix8k), "--out", str(out)])
    assert len(sf.read(out)[0]) == 16000 * 2 + 8000 and "padded" in proc.stderr
    # beyond 1 s of mismatch: a clear error, nothing written
    sf.write(mix8k, np.zeros(8000 * 5), 8000)
    proc = run_cmd(["avse-extract", "--model", str(tmp_path / "model"), "--video", str(mp4),
                    "--face_centred", "--mixture", str(mix8k), "--out", str(tmp_path / "x.wav")],
                   check=False)
    assert proc.returncode == 2 and "at most 25 are padded" in proc.stderr
    assert not (tmp_path / "x.wav").exists()
    # an embedding file for a ROI model
    np.save(tmp_path / "e.npy", np.zeros((50, 512), np.float32))
    proc = run_cmd(["avse-extract", "--model", str(tmp_path / "model"), "--video",
                    str(tmp_path / "e.npy"), "--mixture", str(mix8k), "--out", str(out)], check=False)
    assert proc.returncode == 2 and "mouth ROI" in proc.stderr


def test_validation_every_n_epochs_and_best_checkpoint(tiny_data, tmp_path):
    from avse.experiment import make_loaders

    overrides = {"data_folder": tiny_data["lips"], "output_folder": str(tmp_path / "exp"),
                 "number_of_epochs": 3, "valid_every_n_epochs": 2, "epoch_steps": 1,
                 "batch_size": 2, "num_workers": 0, "crop_seconds": 1.0}
    brain, hp = _brain(DEMO_YAML, overrides)
    train, valid = make_loaders(hp)
    brain.fit(hp["epoch_counter"], train, valid)
    lines = (tmp_path / "exp" / "train_log.txt").read_text().splitlines()
    assert len(lines) == 3
    assert ["valid si_sdr" in line for line in lines] == [False, True, True]
    # lr decays with the StepScheduler after every epoch (x0.97 every 3)
    assert "lr: 2.00e-03" in lines[0]
    ckpts = glob.glob(str(tmp_path / "exp" / "save" / "CKPT+*" / "CKPT.yaml"))
    metas = [open(c).read() for c in ckpts]
    assert 1 <= len(ckpts) <= 2 and any("si_sdr" in m for m in metas)


def test_silent_targets_train_validate_and_test(tiny_data, tmp_path):
    """The demo yaml (absent / sparse examples, activity head): a validation list with absent
    rows reports their output energy beside the SI-SDR of the others, and a test list of
    absent rows writes null SI-SDR and a finite silent_energy (never nan/inf)."""
    from dataclasses import replace

    from avse.data.loaders import make_list_loader
    from avse.experiment import make_loaders

    rows = lists.read_list(os.path.join(tiny_data["lips"], "lists", "voxmix_2mix.csv"))
    val = [r for r in rows if r.set == "val"]
    absent = [replace(r, activity=("absent", 0, 0)) for r in val]
    val_path = str(tmp_path / "val_absent.csv")
    lists.write_list(val + absent, val_path)
    out = tmp_path / "exp"
    overrides = {"data_folder": tiny_data["lips"], "output_folder": str(out),
                 "number_of_epochs": 1, "epoch_steps": 3, "batch_size": 4, "num_workers": 0,
                 "crop_seconds": 1.0, "valid_list": val_path, "p_2mix": 0.4, "p_absent": 0.3,
                 "p_sparse": 0.3}
    brain, hp = _brain(DEMO_YAML, overrides)
    assert hp["modules"]["model"].has_activity_head
    train, valid = make_loaders(hp)
    brain.fit(hp["epoch_counter"], train, valid)
    stats = brain.last_valid_stats
    assert np.isfinite(stats["si_sdr"]) and np.isfinite(stats["silent_energy"])
    assert "silent_energy" in (out / "train_log.txt").read_text()
    loader = make_list_loader(os.path.join(tiny_data["lips"], "shards", "val"), absent,
                              stage="test", set_name="val")
    summary = brain.evaluate_to(loader, str(out / "eval"), "absent")
    assert summary["si_sdr"]["count"] == 0 and summary["silent_energy"]["count"] == len(absent)
    assert np.isfinite(summary["silent_energy"]["mean"])
    for name in ("absent.csv", "absent.json"):
        text = (out / "eval" / name).read_text().lower()
        assert "nan" not in text and "inf" not in text
    assert json.loads((out / "eval" / "absent.json").read_text())["summary"]["si_sdr"]["mean"] is None
