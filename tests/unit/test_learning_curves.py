"""tools/learning_curves.py: validation curves read from SpeechBrain train logs, steps to a target."""
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "learning_curves", os.path.join(REPO, "tools", "learning_curves.py"))
lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lc)


def _run(folder, values, steps=100, metric="si_sdri"):
    os.makedirs(folder)
    with open(os.path.join(folder, "train_log.txt"), "w") as f:
        for epoch, value in enumerate(values, 1):
            line = f"epoch: {epoch}, lr: 2.00e-03 - train loss: -1.0"
            if value is not None:
                line += f" - valid loss: {-value}, valid {metric}: {value}"
            f.write(line + "\n")
    with open(os.path.join(folder, "hyperparams.yaml"), "w") as f:
        f.write(f"seed: 1\nepoch_steps: {steps}\n")
    return folder


def test_curves_and_steps_to_target(tmp_path, capsys):
    a = _run(str(tmp_path / "a"), [3.5, None, 5.9, 6.3, 7.0])
    b = _run(str(tmp_path / "b"), [4.0, 6.1, 7.2], steps=50)
    out = str(tmp_path / "c.json")
    assert lc.main(["--run", f"random={a}", "--run", f"pretrained={b}", "--target", "6",
                    "--json", out, "--plot", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    assert "random: si_sdri 6 reached at step 400" in text
    assert "pretrained: si_sdri 6 reached at step 100" in text
    result = json.load(open(out))
    assert result["runs"]["random"]["curve"] == [[100, 3.5], [300, 5.9], [400, 6.3], [500, 7.0]]
    assert os.path.getsize(tmp_path / "c.png") > 1000


def test_lower_is_better_and_never_reached(tmp_path, capsys):
    a = _run(str(tmp_path / "a"), [90.0, 60.0, 48.0], metric="cer")
    assert lc.main(["--run", f"lips={a}", "--metric", "cer", "--target", "50",
                    "--lower_is_better"]) == 0
    assert "lips: cer 50 reached at step 300" in capsys.readouterr().out
    assert lc.main(["--run", f"lips={a}", "--metric", "cer", "--target", "10",
                    "--lower_is_better"]) == 0
    assert "not reached" in capsys.readouterr().out


def test_bad_runs_are_named(tmp_path, capsys):
    assert lc.main(["--run", "nolabel"]) == 2
    assert "LABEL=FOLDER" in capsys.readouterr().err
    assert lc.main(["--run", f"x={tmp_path / 'missing'}"]) == 2
    assert "train_log.txt not found" in capsys.readouterr().err
    a = _run(str(tmp_path / "a"), [None, None])
    assert lc.main(["--run", f"x={a}"]) == 2
    assert "no 'valid si_sdri' values" in capsys.readouterr().err
