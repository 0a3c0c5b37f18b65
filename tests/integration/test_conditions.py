"""Named conditions on the synthetic corpus: lists, the one table, training sampling, sync sweep.

A tiny synthetic VoxCeleb2 tree and a tiny synthetic MUSAN tree go through their recipes;
condition lists are written from the test shards, a (random, exported) model is evaluated
over all conditions (the silent-target ``absent`` and ``sparse`` included) by the CLI into
one table, and the sync sweep runs on the same data.
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
REFERENCE_METRICS = ["si_sdr", "si_sdri", "sdr", "sdri", "pesq", "stoi"]
PRESENT = [c for c, cond in CONDITIONS.items() if cond.target == "present"]


def _cells(path):
    """csv rows with numbers as floats and empty cells as None."""
    with open(path) as f:
        return [{k: (None if v == "" else v if k in ("id", "condition") else float(v))
                 for k, v in r.items()} for r in csv.DictReader(f)]


def _no_nan_or_inf(path):
    text = open(path).read().lower()
    assert "nan" not in text and "inf" not in text, (path, text)


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
            if cond.target == "present":
                assert mix.activity is None
            else:
                kind, start, stop = mix.activity
                n = lists.row_frames(mix.length)
                assert kind == cond.target and 0 <= start <= stop <= n
                assert (start, stop) == (0, 0) if kind == "absent" else (
                    0.2 - 0.5 / n <= (stop - start) / n <= 0.8 + 0.5 / n)
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
    # the silent-target conditions bring silent_energy (after the requested metrics)
    assert header == ["condition", *REFERENCE_METRICS, "silent_energy"]
    table = {r.pop("condition"): r for r in _cells(out / "conditions.csv")}
    assert list(table) == list(CONDITIONS)
    for name, row in table.items():
        per_utt = _cells(out / f"{name}.csv")
        assert len(per_utt) == 6
        if name in PRESENT:  # the target speaks throughout: every reference metric, no energy
            assert all(np.isfinite(row[m]) for m in REFERENCE_METRICS), (name, row)
            assert row["silent_energy"] is None
            assert np.mean([r["si_sdr"] for r in per_utt]) == pytest.approx(row["si_sdr"])
    # absent: SI-SDR etc. undefined (null), the output energy relative to the mixture finite
    absent, sparse = table["absent"], table["sparse"]
    assert all(absent[m] is None for m in REFERENCE_METRICS), absent
    assert np.isfinite(absent["silent_energy"]) and -100 <= absent["silent_energy"] <= 30
    per_utt = _cells(out / "absent.csv")
    assert all(r[m] is None for r in per_utt for m in REFERENCE_METRICS)
    assert np.mean([r["silent_energy"] for r in per_utt]) == pytest.approx(
        absent["silent_energy"])
    # sparse: SI-SDR(i) on the active span, output energy on the silent part
    for m in ("si_sdr", "si_sdri", "sdr", "sdri", "silent_energy"):
        assert np.isfinite(sparse[m]), (m, sparse)
    # input SI-SDR (si_sdr - si_sdri) falls from easy to hard conditions, as the seed notes say
    mix = {c: r["si_sdr"] - r["si_sdri"] for c, r in table.items() if c in PRESENT}
    assert mix["enhancement"] > mix["2mix_noise"] > mix["hard"]
    assert mix["2mix"] > mix["3mix"] > mix["hard"]
    summary = json.loads((out / "conditions.json").read_text())
    assert summary.keys() == set(CONDITIONS)
    assert summary["absent"]["si_sdr"] == {"mean": None, "std": None, "count": 0}
    assert summary["absent"]["silent_energy"]["count"] == 6
    assert summary["2mix"]["silent_energy"]["mean"] is None
    text = (out / "conditions.txt").read_text()
    assert text.startswith("condition")
    absent_line = next(line for line in text.splitlines() if line.startswith("absent"))
    assert absent_line.split()[1:7] == ["null"] * 6
    assert "null" in proc.stdout
    for path in [out / f"conditions.{k}" for k in ("txt", "csv", "json")] + [
            out / f"{c}.csv" for c in CONDITIONS]:
        _no_nan_or_inf(path)


def test_absent_and_sparse_metrics_match_the_signals(corpus, tmp_path):
    """evaluate_conditions on the absent and sparse lists: silent_energy added to the requested
    metrics, and every value recomputed from the model's output on the loader's batches."""
    from avse.data.loaders import make_list_loader
    from avse.data.mixing import MixtureConfig
    from avse.evaluation.conditions import evaluate_conditions
    from avse.metrics import si_sdr
    from avse.models import load_model

    model = load_model(corpus["model"]).eval()
    picked = {c: corpus["lists"][c] for c in ("absent", "sparse")}
    results = evaluate_conditions(model, corpus["speech"], picked, metrics=("si_sdr", "si_sdri"),
                                  out_dir=str(tmp_path))
    assert list(results["absent"]) == ["si_sdr", "si_sdri", "silent_energy"]
    rows = {c: _cells(tmp_path / f"{c}.csv") for c in picked}
    for name, path in picked.items():
        loader = make_list_loader(corpus["speech"], path, stage="test",
                                  config=MixtureConfig(crop_seconds=None))
        for batch, row in zip(loader, rows[name]):
            assert row["id"] == batch.keys[0]
            with torch.no_grad():
                est = model(batch.mixture, batch.visual).estimate[0].double()
            act = batch.activity[0].repeat_interleave(640).bool()
            mix, ref = batch.mixture[0].double(), batch.target[0].double()
            silent = ~act
            energy = 10 * np.log10(float(est[silent].pow(2).mean() / mix[silent].pow(2).mean()))
            assert row["silent_energy"] == pytest.approx(energy, abs=1e-4)
            if name == "absent":
                assert not act.any() and row["si_sdr"] is None and row["si_sdri"] is None
                assert float(ref.abs().max()) == 0.0
            else:
                assert act.any() and silent.any()
                assert row["si_sdr"] == pytest.approx(float(si_sdr(est[act], ref[act])), abs=1e-4)
                assert row["si_sdri"] == pytest.approx(
                    float(si_sdr(est[act], ref[act]) - si_sdr(mix[act], ref[act])), abs=1e-4)
    for kind in ("txt", "csv", "json"):
        _no_nan_or_inf(tmp_path / f"conditions.{kind}")
    table = {r.pop("condition"): r for r in _cells(tmp_path / "conditions.csv")}
    assert table["absent"]["si_sdr"] is None and np.isfinite(table["absent"]["silent_energy"])
    assert np.isfinite(table["sparse"]["si_sdri"])


def test_lists_cli_sparse_fraction(corpus, tmp_path):
    from avse.evaluation.conditions import main

    assert main(["lists", "--shards", corpus["speech"], "--out_dir", str(tmp_path),
                 "--num", "8", "--conditions", "absent,sparse", "--sparse_fraction", "0.5",
                 "0.6"]) == 0
    for mix in lists.read_list(str(tmp_path / "test_sparse.csv")):
        kind, start, stop = mix.activity
        n = lists.row_frames(mix.length)
        assert kind == "sparse" and 0.5 - 0.5 / n <= (stop - start) / n <= 0.6 + 0.5 / n
    assert {m.activity for m in lists.read_list(str(tmp_path / "test_absent.csv"))} == {
        ("absent", 0, 0)}
    assert main(["lists", "--shards", corpus["speech"], "--out_dir", str(tmp_path),
                 "--conditions", "sparse", "--sparse_fraction", "0.9", "0.1"]) == 2


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
