"""tools/eval_sync.py end to end: a tiny trained experiment, the -5..+5 sweep, bad arguments."""
import csv
import json
import os

import pytest

from avse.evaluation import sync_sweep as sync
from tests.conftest import REPO, run_cmd
from tests.integration.test_training import DEMO_YAML, TINY, tiny_data  # noqa: F401 (fixture)

TOOL = os.path.join(REPO, "tools", "eval_sync.py")


@pytest.fixture(scope="module")
def tiny_exp(tiny_data, tmp_path_factory):  # noqa: F811
    """The demo yaml trained for 2 steps with the lip-offset augmentation on, then evaluated."""
    out = tmp_path_factory.mktemp("sync_exp") / "exp"
    run_cmd(["python", os.path.join(REPO, "egs", "synthetic", "train.py"), DEMO_YAML,
             f"--data_folder={tiny_data['lips']}", f"--output_folder={out}", "--av_shift_frames=2",
             "--eval_metrics=[si_sdr,si_sdri]"] + TINY)
    return out


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_eval_sync_sweep_reproduces_the_evaluation_at_offset_0(tiny_exp, tmp_path):
    assert "av_shift_frames: 2" in (tiny_exp / "hyperparams.yaml").read_text()
    out = tmp_path / "sweep"
    proc = run_cmd(["python", TOOL, "--model", str(tiny_exp), "--out_dir", str(out)])
    rows = _read_csv(out / "sync_sweep.csv")
    assert [int(r["offset"]) for r in rows] == list(range(-5, 6))
    assert [float(r["offset_ms"]) for r in rows] == [40.0 * k for k in range(-5, 6)]
    assert all(int(r["count"]) == 3 for r in rows)
    assert (out / "sync_sweep.png").stat().st_size > 1000
    # offset 0 == the experiment's own test evaluation (same list, same model, same metrics)
    normal = json.loads((tiny_exp / "eval" / "test.json").read_text())["summary"]
    zero = next(r for r in rows if int(r["offset"]) == 0)
    for metric in ("si_sdr", "si_sdri"):
        assert float(zero[metric]) == pytest.approx(normal[metric]["mean"], abs=1e-9)
    per_utt = {r["id"]: float(r["si_sdri"]) for r in _read_csv(tiny_exp / "eval" / "test.csv")}
    swept = {r["id"]: float(r["si_sdri"]) for r in _read_csv(out / "sync_sweep_utts.csv")
             if r["offset"] == "0"}
    assert swept == pytest.approx(per_utt, abs=1e-9)
    # shifted lips change the estimate (the model does read them)
    assert len({round(float(r["si_sdri"]), 9) for r in rows}) > 1
    report = json.loads((out / "sync_sweep.json").read_text())
    assert report["n_mixtures"] == 3 and report["offsets"] == list(range(-5, 6))
    assert report["plot"] == "sync_sweep.png" and "video lags audio" in report["sign"]
    assert "offset" in proc.stdout and "si_sdri" in proc.stdout and "+5" in proc.stdout


def test_eval_sync_explicit_list_and_max_mixtures(tiny_exp, tiny_data, tmp_path):  # noqa: F811
    root = tiny_data["lips"]
    code = sync.main(["--model", str(tiny_exp), "--shards", os.path.join(root, "shards", "test"),
                      "--list", os.path.join(root, "lists", "voxmix_2mix.csv"),
                      "--offsets", "-1,1", "--max_mixtures", "2", "--out_dir", str(tmp_path),
                      "--no_plot"])
    assert code == 0
    rows = _read_csv(tmp_path / "sync_sweep.csv")
    assert [int(r["offset"]) for r in rows] == [-1, 1] and all(r["count"] == "2" for r in rows)
    assert not (tmp_path / "sync_sweep.png").exists()
    assert "si_sdri_vs_0" not in rows[0]  # no offset 0 to compare with


def test_eval_sync_bad_arguments_exit_2(tiny_exp, tmp_path, capsys):
    proc = run_cmd(["python", TOOL, "--model", str(tiny_exp), "--offsets", "-5..5"], check=False)
    assert proc.returncode == 2 and "offsets '-5..5'" in proc.stderr and "low:high" in proc.stderr
    with pytest.raises(SystemExit) as exc:
        sync.main(["--model", str(tiny_exp), "--list", str(tmp_path / "nope.csv")])
    assert exc.value.code == 2 and "nope.csv: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        sync.main(["--model", str(tiny_exp), "--offsets", "3:-3"])
    assert exc.value.code == 2 and "low <= high" in capsys.readouterr().err
    # a folder that is not a model / not an experiment: a message, exit 2
    assert sync.main(["--model", str(tmp_path), "--shards", str(tmp_path),
                      "--list", __file__]) == 2
    assert "error" in capsys.readouterr().err
    assert sync.main(["--model", str(tmp_path)]) == 2
    assert "hyperparams.yaml not found" in capsys.readouterr().err
    assert sync.main(["--model", str(tiny_exp), "--test_set", "nope"]) == 2
    assert "no test_sets.nope" in capsys.readouterr().err
