"""The cross-corpus table: one model over several tiny recipe-layout corpora, one table.

Tiny generated corpora (shards/<split>, lists/) stand for VoxCeleb2 (its default list
``lists/voxmix_2mix.csv`` holding train, val and test rows), LRS3 (an explicit list) and
TCD-TIMIT (``shards/volunteers``, ``lists/volunteers/voxmix_2mix.csv``, as its recipe lays
them out); a missing GRID folder and an LRS2 folder without its list fail with errors
naming them, and the others are still evaluated into the one table.
"""
import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from avse.data import lists
from tests.conftest import run_cmd
from tests.model_helpers import tiny_model_folder
from tests.training_helpers import make_split, tiny_corpus

CLI = ["python", "-m", "avse.evaluation.cross_corpus"]
FAST = ["si_sdr", "si_sdri", "sdr", "sdri"]


def _cells(path):
    with open(path) as f:
        return [{k: (None if v == "" else v if k in ("id", "corpus", "status", "error")
                     else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross_corpus")
    vox = tiny_corpus(root / "vox", test_rows=3, seed=0)
    rows = [m for s in ("train", "val", "test")
            for m in lists.read_list(os.path.join(vox, "lists", f"{s}_2mix.csv"))]
    lists.write_list(rows, os.path.join(vox, "lists", "voxmix_2mix.csv"))  # the recipes' name
    lrs3 = tiny_corpus(root / "lrs3", test_rows=2, seed=1)
    tcd = str(root / "tcd")
    pool = make_split(tcd, "volunteers", ["01M", "02F", "03M"], 1, "lips",
                      np.random.default_rng(2))
    lists.write_list(lists.generate_mixtures(pool, 2, 2, (-5, 5), seed=1, mix_set="volunteers"),
                     os.path.join(tcd, "lists", "volunteers", "voxmix_2mix.csv"))
    (root / "lrs2" / "shards" / "test").mkdir(parents=True)
    return {"root": root, "vox": vox, "lrs3": lrs3, "tcd": tcd, "lrs2": str(root / "lrs2"),
            "model": tiny_model_folder(str(root / "model"))}


def test_one_table_over_the_corpora_and_failures_listed(setup):
    out = setup["root"] / "table"
    missing = str(setup["root"] / "no_grid")
    proc = run_cmd([*CLI, "--model", setup["model"], "--metrics", ",".join(FAST),
                    "--corpus", f"voxceleb2={setup['vox']}", f"LRS3={setup['lrs3']}:test_2mix.csv",
                    "--corpus", f"grid={missing}", f"TCD-TIMIT={setup['tcd']}",
                    f"lrs2={setup['lrs2']}",
                    "--out_dir", str(out)], check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # the failures name the corpus and the path
    assert f"corpus grid: folder {missing} not found" in proc.stderr
    lrs2_list = os.path.join(setup["lrs2"], "lists", "voxmix_2mix.csv")
    assert f"corpus lrs2: mixture list {lrs2_list} not found" in proc.stderr
    assert "2 of 5 corpora failed" in proc.stderr
    table = _cells(out / "cross_corpus.csv")
    assert [r["corpus"] for r in table] == ["voxceleb2", "lrs3", "grid", "tcdtimit", "lrs2"]
    assert list(table[0]) == ["corpus", "mixtures", *FAST, "status", "error"]
    vox, lrs3, grid, tcd, lrs2 = table
    # voxceleb2: the test rows only; tcdtimit: the volunteers' list and shards
    assert (vox["mixtures"], lrs3["mixtures"], tcd["mixtures"]) == (3, 2, 2)
    for row in (vox, lrs3, tcd):
        assert row["status"] == "ok" and row["error"] is None
        assert all(np.isfinite(row[m]) for m in FAST), row
        per_mix = _cells(out / f"{row['corpus']}.csv")
        assert len(per_mix) == row["mixtures"]
        assert np.mean([r["si_sdri"] for r in per_mix]) == pytest.approx(row["si_sdri"])
    test_keys = [m.target.key for m in lists.read_list(
        os.path.join(setup["vox"], "lists", "test_2mix.csv"))]
    assert [r["id"] for r in _cells(out / "voxceleb2.csv")] == test_keys
    for row in (grid, lrs2):
        assert row["status"] == "failed" and row["mixtures"] == 0
        assert all(row[m] is None for m in FAST) and row["error"].startswith(
            f"corpus {row['corpus']}:")
    summary = json.loads((out / "cross_corpus.json").read_text())
    assert set(summary["failed"]) == {"grid", "lrs2"}
    assert summary["corpora"]["tcdtimit"]["shards"] == os.path.join(setup["tcd"], "shards",
                                                                    "volunteers")
    assert summary["corpora"]["tcdtimit"]["set"] == "volunteers"
    assert summary["corpora"]["lrs3"]["list"].endswith(os.path.join("lists", "test_2mix.csv"))
    assert summary["corpora"]["voxceleb2"]["summary"]["si_sdr"]["count"] == 3
    text = (out / "cross_corpus.txt").read_text().splitlines()
    assert text[0].split() == ["corpus", "mixtures", *FAST, "status"]
    assert text[3].split()[2:] == text[5].split()[2:] == ["null"] * 4 + ["failed"]
    assert proc.stdout.splitlines()[0] == text[0]
    for kind in ("txt", "csv", "json"):
        assert "nan" not in (out / f"cross_corpus.{kind}").read_text().lower()


def test_same_numbers_as_the_condition_evaluation(setup, tmp_path):
    """The table is the evaluation package's loop: the LRS3 row equals evaluate_conditions
    on the same list and shards."""
    from avse.evaluation.conditions import evaluate_conditions
    from avse.evaluation.cross_corpus import Corpus, evaluate_corpora
    from avse.models import load_model

    model = load_model(setup["model"])
    path = os.path.join(setup["lrs3"], "lists", "test_2mix.csv")
    ours = evaluate_corpora(model, [Corpus("lrs3", setup["lrs3"], path)], FAST,
                            out_dir=str(tmp_path))
    ref = evaluate_conditions(model, os.path.join(setup["lrs3"], "shards", "test"),
                              {"x": path}, metrics=FAST)["x"]
    got = ours["corpora"]["lrs3"]["summary"]
    for m in FAST:
        assert got[m]["mean"] == pytest.approx(ref[m]["mean"], abs=1e-6)


def test_pesq_and_stoi_columns_on_one_mixture(setup, tmp_path):
    from avse.evaluation.cross_corpus import main

    assert main(["--model", setup["model"], "--corpus", f"lrs3={setup['lrs3']}:test_2mix.csv",
                 "--max_mixtures", "1", "--metrics", "si_sdr,pesq,stoi",
                 "--out_dir", str(tmp_path)]) == 0
    (row,) = _cells(tmp_path / "cross_corpus.csv")
    assert row["mixtures"] == 1 and row["status"] == "ok"
    assert 1.0 <= row["pesq"] <= 4.7 and -1.0 <= row["stoi"] <= 1.0, row


def test_argument_errors_stop_before_evaluating(setup, tmp_path, capsys):
    from avse.evaluation.cross_corpus import main, parse_corpus

    base = ["--model", setup["model"], "--out_dir", str(tmp_path)]
    assert main([*base, "--corpus", f"wsj0={setup['lrs3']}"]) == 2
    assert "unknown corpus 'wsj0'" in capsys.readouterr().err
    assert main([*base, "--corpus", setup["lrs3"]]) == 2
    assert "expected NAME=OUT_DIR[:LIST]" in capsys.readouterr().err
    assert main([*base, "--corpus", f"lrs3={setup['lrs3']}", f"LRS3={setup['vox']}"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main([*base, "--corpus", f"lrs3={setup['lrs3']}", "--metrics", "si_sdr,mos"]) == 2
    assert "mos" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--corpus", f"lrs3={setup['lrs3']}"]) == 2
    assert not os.listdir(tmp_path)  # nothing evaluated, nothing written
    # any label with an explicit list; a list path missing names the paths tried
    assert parse_corpus(f"lrs3_b={setup['lrs3']}:x.csv").name == "lrs3_b"
    assert main([*base, "--corpus", f"lrs3={setup['lrs3']}:nope.csv"]) == 1
    err = capsys.readouterr().err
    assert "corpus lrs3: mixture list nope.csv not found (tried" in err
    assert "test_2mix.csv" in err  # what lists/ holds
    # a list of a set the folder has no shards of; a list whose utterances the shards lack
    tcd_list = os.path.join(setup["tcd"], "lists", "volunteers", "voxmix_2mix.csv")
    assert main([*base, "--corpus", f"lrs3={setup['lrs3']}:{tcd_list}"]) == 1
    shards = os.path.join(setup["lrs3"], "shards", "volunteers")
    assert f"corpus lrs3: no volunteers shards {shards} for {tcd_list}" in capsys.readouterr().err
    other = str(tmp_path / "other.csv")
    lists.write_list([dataclasses.replace(m, set="test") for m in lists.read_list(tcd_list)],
                     other)
    assert main([*base, "--corpus", f"lrs3={setup['lrs3']}:{other}"]) == 1
    err = capsys.readouterr().err
    assert f"corpus lrs3 ({other}): " in err and "not found in" in err
    assert "Traceback" not in err
