"""Named conditions on the synthetic corpus: lists, the one table, training sampling, sync sweep.

A tiny synthetic VoxCeleb2 tree and a tiny synthetic MUSAN tree go through their recipes;
condition lists are written from the test shards, a (random, exported) model is evaluated
over all five conditions by the CLI into one table, and the sync sweep runs on the same data.
"""
import csv
import json
import os

import numpy as np
import pytest
import torch

from avse.data.conditions import CONDITIONS
from avse.data.lists import make_condition_lists
from avse.data import lists
from tests.conftest import run_cmd

CLI = ["python", "-m", "avse.evaluation.conditions"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from avse.data.synthetic import make_musan_corpus, make_voxceleb2_corpus
    from avse.models import AVSEModel, save_model
    from avse.recipes.musan import prepare_musan
    from avse.recipes.voxceleb2 import prepare_voxceleb2

    root = tmp_path_factory.mktemp("conditions")
    make_voxceleb2_corpus(root / "vox", n_speakers=8, n_clips=2, seed=21, test_fraction=0.4,
                          progress=False)
    prepare_voxceleb2(str(root / "vox"), str(root / "vox_out"), shard_size=2, shard_multiple=1,
                      stop_stage=3)
    make_musan_corpus(root / "musan", 6, seed=22, progress=False)
    prepare_musan(str(root / "musan"), str(root / "musan_out"), val_fraction=0.2,
                  test_fraction=0.5, shard_size=4)
    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32},
                      {"type": "cnn", "out_dim": 16},
                      {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 2,
                       "num_repeats": 1}, fusion="concat")
    save_model(model, str(root / "model"))
    speech = str(root / "vox_out" / "shards" / "test")
    noise = str(root / "musan_out" / "shards" / "test")
    lists = make_condition_lists(speech, str(root / "lists"), num=6, noise_dir=noise, seed=3)
    return {"root": root, "speech": speech, "noise": noise, "lists": lists,
            "model": str(root / "model")}


def test_condition_lists_share_rows_and_hold_what_the_condition_says(corpus):
    rows = {c: lists.read_list(p) for c, p in corpus["lists"].items()}
    assert set(rows) == set(CONDITIONS)
    for name, cond in CONDITIONS.items():
        assert len(rows[name]) == 6
        for mix, ref in zip(rows[name], rows["3mix"]):
            assert mix.target == ref.target  # same targets and interferers in every condition
            assert mix.interferers == ref.interferers[:cond.num_interferers]
            assert len(mix.noise) == int(cond.noise)
            assert len({s.spk for s in mix.sources}) == len(mix.sources)
    for a, b, c in zip(rows["enhancement"], rows["2mix_noise"], rows["hard"]):
        assert a.noise == b.noise == c.noise  # the same noise per row
        assert a.noise[0].category in ("noise", "music", "babble")
    again = make_condition_lists(corpus["speech"], str(corpus["root"] / "again"), num=6,
                                 noise_dir=corpus["noise"], seed=3)
    for name, path in again.items():
        assert open(path).read() == open(corpus["lists"][name]).read()  # seeded


def test_condition_table_over_all_conditions(corpus):
    out = corpus["root"] / "eval"
    proc = run_cmd([*CLI, "evaluate", "--model", corpus["model"],
                    "--shards", corpus["speech"], "--noise_shards", corpus["noise"],
                    "--lists_dir", os.path.dirname(corpus["lists"]["2mix"]),
                    "--out_dir", str(out)])
    header = proc.stdout.splitlines()[0].split()
    assert header == ["condition", "si_sdr", "si_sdri", "sdr", "sdri", "pesq", "stoi"]
    with open(out / "conditions.csv") as f:
        table = {r["condition"]: {k: float(v) for k, v in r.items() if k != "condition"}
                 for r in csv.DictReader(f)}
    assert list(table) == list(CONDITIONS)
    for name, row in table.items():
        assert all(np.isfinite(v) for v in row.values()), (name, row)
        per_utt = list(csv.DictReader(open(out / f"{name}.csv")))
        assert len(per_utt) == 6
        assert np.mean([float(r["si_sdr"]) for r in per_utt]) == pytest.approx(row["si_sdr"])
    # input SI-SDR (si_sdr - si_sdri) falls from easy to hard conditions, as the seed notes say
    mix = {c: r["si_sdr"] - r["si_sdri"] for c, r in table.items()}
    assert mix["enhancement"] > mix["2mix_noise"] > mix["hard"]
    assert mix["2mix"] > mix["3mix"] > mix["hard"]
    assert json.loads((out / "conditions.json").read_text()).keys() == set(CONDITIONS)
    assert (out / "conditions.txt").read_text().startswith("condition")


def test_condition_cli_errors_are_clear(corpus, tmp_path):
    proc = run_cmd([*CLI, "lists", "--shards", corpus["speech"],
                    "--out_dir", str(tmp_path), "--num", "2"], check=False)
    assert proc.returncode == 2 and "--noise_shards" in proc.stderr
    proc = run_cmd([*CLI, "lists", "--shards", corpus["speech"],
                    "--out_dir", str(tmp_path), "--conditions", "2mix,quiet"], check=False)
    assert proc.returncode == 2 and "unknown condition 'quiet'" in proc.stderr
    proc = run_cmd([*CLI, "evaluate", "--model", corpus["model"],
                    "--shards", corpus["speech"], "--lists_dir", str(tmp_path)], check=False)
    assert proc.returncode == 2 and "missing condition list" in proc.stderr
    proc = run_cmd([*CLI, "evaluate", "--model", str(tmp_path),
                    "--shards", corpus["speech"], "--noise_shards", corpus["noise"],
                    "--lists_dir", os.path.dirname(corpus["lists"]["2mix"])], check=False)
    assert proc.returncode == 2 and "python -m avse.evaluation.conditions: error:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_training_samples_conditions(corpus):
    from avse.data.mixing import MixtureConfig
    from avse.data.noise import MusanNoise
    from avse.data.loaders import make_train_loader

    noise = MusanNoise([corpus["noise"]], babble_pieces=(1, 2))
    with pytest.raises(ValueError, match="adds noise"):
        MixtureConfig(conditions={"hard": 1.0})
    cfg = MixtureConfig(crop_seconds=1.0, noise_source=noise,
                        conditions={"enhancement": 0.5, "3mix": 0.5})
    train = os.path.join(os.path.dirname(corpus["speech"]), "train")
    loader = make_train_loader(train, cfg, batch_size=4, epoch_steps=3, shuffle_buffer=8)
    counts = []
    for batch in loader:
        for keys, snr in zip(batch.interferer_keys, batch.snr):
            n = len(keys)
            counts.append(n)
            assert n in (0, 2)
        assert torch.allclose(batch.mixture, batch.target + batch.interference, atol=1e-5)
    assert 0 in counts and 2 in counts  # both conditions drawn


def test_sync_sweep_on_the_synthetic_corpus(corpus):
    out = corpus["root"] / "sync"
    run_cmd(["python", "tools/eval_sync.py", "--model", corpus["model"], "--shards",
             corpus["speech"], "--list", corpus["lists"]["2mix"], "--offsets", "-2:2",
             "--out_dir", str(out), "--no_plot"])
    with open(out / "sync_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["offset"]) for r in rows] == [-2, -1, 0, 1, 2]
    assert all(int(r["count"]) == 6 for r in rows)
