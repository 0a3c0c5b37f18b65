"""tools/silent_tradeoff.py: condition tables of models trained with more or fewer silent
targets, one row per probability (seeds averaged), null where a table lacks a value."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "silent_tradeoff", os.path.join(REPO, "tools", "silent_tradeoff.py"))
st = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(st)


def _table(folder, two_mix, absent=None, sparse=None):
    os.makedirs(folder)
    data = {"2mix": {"si_sdri": {"mean": two_mix, "std": 1.0, "count": 3}}}
    if absent is not None:
        data["absent"] = {"si_sdri": {"mean": None, "std": None, "count": 0},
                          "silent_energy": {"mean": absent, "std": 2.0, "count": 3}}
    if sparse is not None:
        data["sparse"] = {"si_sdri": {"mean": sparse[0], "count": 3},
                          "silent_energy": {"mean": sparse[1], "count": 3}}
    with open(os.path.join(folder, "conditions.json"), "w") as f:
        json.dump(data, f)
    return folder


def test_rows_average_seeds_and_keep_nulls(tmp_path, capsys):
    a = _table(str(tmp_path / "a"), 9.0, absent=-2.0)
    b1 = _table(str(tmp_path / "b1"), 8.6, absent=-30.0, sparse=(7.0, -20.0))
    b2 = _table(str(tmp_path / "b2"), 8.8, absent=-34.0, sparse=(7.4, -24.0))
    out = tmp_path / "out"
    assert st.main(["--run", f"0.3={b1}", "--run", f"0={a}", "--run", f"0.3={b2}",
                    "--out_dir", str(out)]) == 0
    rows = json.loads((out / "tradeoff.json").read_text())
    assert [r["p_silent"] for r in rows] == [0.0, 0.3] and rows[1]["seeds"] == 2
    assert rows[1]["2mix_si_sdri"] == pytest.approx(8.7)
    assert rows[1]["absent_silent_energy"] == pytest.approx(-32.0)
    assert rows[1]["sparse_silent_energy"] == pytest.approx(-22.0)
    assert rows[0]["sparse_si_sdri"] is None
    text = (out / "tradeoff.txt").read_text()
    assert "null" in text and "nan" not in text.lower()
    assert (out / "tradeoff.png").stat().st_size > 1000
    assert "0.30" in capsys.readouterr().out


def test_bad_run_specs_are_named(tmp_path, capsys):
    assert st.main(["--run", "zero=x", "--out_dir", str(tmp_path)]) == 2
    assert "P=FOLDER" in capsys.readouterr().err
    assert st.main(["--run", f"0.1={tmp_path / 'missing'}", "--out_dir", str(tmp_path)]) == 2
    assert "conditions.json" in capsys.readouterr().err
