"""egs/lrs2 lip reading end to end on tiny LRS2-layout shards: CTC training, greedy decoding,
CER/WER and per-utterance hypotheses, the front-end export and its use by an AVSE yaml."""
import csv
import glob
import json
import os

import numpy as np
import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from avse.lipreading import LipReadingBrain, export_frontend, make_loaders
from avse.models.frontends import build_frontend, frontend_info, load_frontend
from tests.conftest import REPO, run_cmd
from tests.lipreading_helpers import make_corpus

YAML = os.path.join(REPO, "egs", "lrs2", "hparams", "lipreading.yaml")
TINY = ["--device=cpu", "--noprogressbar", "--frontend_type=cnn",
        "--frontend_config={hidden: 16, channels: [8, 16]}", "--temporal_type=conformer",
        "--d_model=16", "--num_layers=1", "--nhead=2", "--d_ffn=32", "--batch_size=4",
        "--valid_batch_size=8", "--num_workers=0", "--shuffle_buffer=8", "--dropout=0.0"]
SPLITS = {"train": 12, "pretrain": 4, "val": 4, "test": 6}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrs2_lr")
    make_corpus(root, np.random.default_rng(3), splits=SPLITS, lips="syllables")
    return str(root)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """The recipe's command (a subprocess: SpeechBrain sets up the root logger)."""
    out = str(tmp_path_factory.mktemp("exp") / "lipreading")
    run_cmd(["python", os.path.join(REPO, "egs", "lrs2", "train_lipreading.py"), YAML,
             f"--data_folder={data}", f"--output_folder={out}", "--number_of_epochs=2",
             "--epoch_steps=3", "--curriculum=[[1, 1.0], [2, null]]"] + TINY)
    return out, json.load(open(os.path.join(out, "eval", "summary.json")))


def _best_front_end(out):
    """The front-end of the best checkpoint, rebuilt by hand from model.ckpt."""
    from speechbrain.utils.checkpoints import Checkpointer

    ckpt = Checkpointer(os.path.join(out, "save")).find_checkpoint(min_key="cer")
    state = torch.load(os.path.join(ckpt.path, "model.ckpt"), map_location="cpu")
    fe = build_frontend("cnn", hidden=16, channels=[8, 16])
    fe.load_state_dict({k[len("frontend."):]: v for k, v in state.items()
                        if k.startswith("frontend.")})
    return fe.eval(), str(ckpt.path)


def _brain(data, tmp_path, *extra):
    with open(YAML) as f:
        hp = load_hyperpyyaml(f, "\n".join(a.lstrip("-").replace("=", ": ", 1) for a in
                                           [f"--data_folder={data}",
                                            f"--output_folder={tmp_path}"] + TINY[2:] +
                                           list(extra)))
    brain = LipReadingBrain(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                            run_opts={"device": "cpu", "noprogressbar": True})
    return brain, hp


def test_training_decodes_scores_and_writes_hypotheses(trained):
    out, results = trained
    log = open(os.path.join(out, "train_log.txt")).read()
    assert "epoch: 2" in log and "valid cer" in log
    assert glob.glob(os.path.join(out, "save", "CKPT+*", "model.ckpt"))
    with open(os.path.join(out, "eval", "test_hyps.tsv")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == SPLITS["test"] and set(rows[0]) == {"key", "ref", "hyp", "cer", "wer"}
    assert all(r["ref"] and float(r["cer"]) >= 0 and float(r["wer"]) >= 0 for r in rows)
    summary = json.load(open(os.path.join(out, "eval", "test.json")))
    assert summary["count"] == SPLITS["test"] and results["test"]["cer"] == summary["cer"]
    # the corpus-level CER is the edit count over all references, not a mean of rows
    assert 0 <= summary["cer"] and np.isfinite(summary["wer"]) and np.isfinite(summary["loss"])
    info = json.load(open(os.path.join(out, "lipreading.json")))
    assert info["crop"] == "lrs2" and info["model"]["frontend_type"] == "cnn"


def test_exported_front_end_loads_equal_and_into_an_avse_yaml(trained, tmp_path):
    out, results = trained
    path = os.path.join(out, "frontend.pt")
    info = frontend_info(path)
    assert info["type"] == "cnn" and info["preset"] == "lrs2" and info["frame_dim"] == 16
    assert info["extra"]["cer"] == pytest.approx(results["test"]["cer"])
    assert info["extra"]["source"] == os.path.abspath(out)
    x = torch.randint(0, 256, (2, 9, 88, 88), dtype=torch.uint8)
    ours, ckpt = _best_front_end(out)  # the tests and the export use the best checkpoint
    loaded = load_frontend(path)
    assert torch.equal(loaded(x), ours(x))
    again = export_frontend(ckpt, str(tmp_path / "from_ckpt.pt"))
    assert torch.equal(load_frontend(again)(x), ours(x))
    assert frontend_info(again)["extra"]["source"].endswith("model.ckpt")
    avse_yaml = f"""
model: !new:avse.models.AVSEModel
    audio_encoder: {{type: conv, out_channels: 16, kernel_size: 32}}
    visual_encoder:
        type: cnn
        out_dim: 8
        hidden: 16
        channels: [8, 16]
        pretrained: {path}
        trainable: false
    separator: {{type: tcn, bottleneck: 8, hidden: 16, num_blocks: 2, num_repeats: 1}}
unfreeze_frontend_after: 3
"""
    model = load_hyperpyyaml(avse_yaml)["model"].eval()
    assert torch.equal(model.visual_encoder.frontend(x), ours(x))
    assert not any(p.requires_grad for p in model.visual_encoder.frontend.parameters())


def test_a_few_ctc_steps_lower_the_loss(data, tmp_path):
    brain, hp = _brain(data, tmp_path, "--lr=0.01")
    train, _ = make_loaders(hp)
    brain.on_fit_start()
    batch = next(iter(train))
    losses = [float(brain.fit_batch(batch)) for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_blank_frames_feed_zeros(data, tmp_path):
    brain, hp = _brain(data, tmp_path, "--blank_frames=true")
    _, valid = make_loaders(hp)
    batch = next(iter(valid))
    brain.modules.eval()
    import speechbrain as sb

    with torch.no_grad():
        a, _ = brain.compute_forward(batch, sb.Stage.VALID)
        batch.lips = 255 - batch.lips
        b, _ = brain.compute_forward(batch, sb.Stage.VALID)
        brain.hparams.blank_frames = False
        c, _ = brain.compute_forward(batch, sb.Stage.VALID)
    assert torch.equal(a, b) and not torch.equal(b, c)
