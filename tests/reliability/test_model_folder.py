"""Model folders are data: a missing, truncated or altered checkpoint, a pickle that would run
code, a model.yaml naming an import path or an unknown plugin: avse-extract refuses each in
one line naming the file (exit 2), writes nothing and runs none of the folder's code; an
experiment folder's incomplete checkpoints are skipped with a warning."""
import contextlib
import io
import logging
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
import yaml

from avse.inference import main
from avse.models import AVSEModel, save_model
from avse.models.io import ModelLoadError, load_model

MARKER_ENV = "AVSE_TEST_MARKER"


class RunsCode:
    """Unpickling this calls exec(): it writes the file named by $AVSE_TEST_MARKER."""

    def __reduce__(self):
        return exec, ("import os; open(os.environ['AVSE_TEST_MARKER'], 'w').write('ran')",)


def _net(seed=0):
    torch.manual_seed(seed)
    return AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 16},
                     {"type": "embedding", "out_dim": 16},
                     {"type": "tcn", "bottleneck": 16, "hidden": 16, "num_blocks": 1,
                      "num_repeats": 1}, fusion="concat")


@pytest.fixture()
def inputs(tmp_path):
    """A lip embedding and a mixture (the .npy path: no video decoding)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "lips.npy", rng.standard_normal((25, 512)).astype(np.float32))
    import soundfile as sf

    sf.write(tmp_path / "mix.wav", 0.1 * rng.standard_normal(16000), 16000)
    return str(tmp_path / "lips.npy"), str(tmp_path / "mix.wav")


def _extract(folder, inputs, out, *extra):
    """avse-extract in-process -> (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["--model", folder, "--video", inputs[0], "--mixture", inputs[1], "--out",
                     str(out), "--noprogressbar", *extra])
    return code, err.getvalue()


def _refused(folder, inputs, tmp_path, *says, extra=()):
    out = tmp_path / "out.wav"
    code, err = _extract(folder, inputs, out, *extra)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("avse-extract: error: "), err
    assert "Traceback" not in err and all(ln.startswith("WARNING") for ln in lines[:-1]), err
    for text in says:
        assert text in lines[-1], (text, lines[-1])
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    return lines[-1]


def test_damaged_checkpoints_are_refused_in_one_line(tmp_path, inputs):
    good = save_model(_net(), str(tmp_path / "good"))
    code, err = _extract(good, inputs, tmp_path / "ok.wav")
    assert code == 0 and (tmp_path / "ok.wav").exists(), err
    os.remove(tmp_path / "ok.wav")
    ckpt = os.path.join(good, "model.ckpt")
    data = open(ckpt, "rb").read()
    cases = 0
    for name, damage, says in [
        ("missing", lambda d: os.remove(f"{d}/model.ckpt"), "not found"),
        ("truncated", lambda d: open(f"{d}/model.ckpt", "wb").write(data[: len(data) // 2]),
         "truncated"),
        ("empty", lambda d: open(f"{d}/model.ckpt", "wb").close(), "truncated"),
        ("altered", lambda d: open(f"{d}/model.ckpt", "wb").write(
            data[:-200] + bytes([data[-200] ^ 1]) + data[-199:]), "sha256 differs"),
        ("bad yaml", lambda d: open(f"{d}/model.yaml", "w").write("separator: [\n"),
         "cannot be read as yaml"),
    ]:
        folder = str(tmp_path / name.replace(" ", "_"))
        shutil.copytree(good, folder)
        damage(folder)
        _refused(folder, inputs, tmp_path, folder, says)
        cases += 1
    # a folder from before the manifest: the truncated file still fails to load, clearly
    folder = str(tmp_path / "old")
    shutil.copytree(good, folder)
    config = yaml.safe_load(open(f"{folder}/model.yaml"))
    del config["files"]
    yaml.safe_dump(config, open(f"{folder}/model.yaml", "w"))
    open(f"{folder}/model.ckpt", "wb").write(data[: len(data) // 2])
    _refused(folder, inputs, tmp_path, "cannot be read as a torch weights file",
             f"{folder}/model.ckpt")
    assert cases == 5


def test_a_pickle_that_runs_code_is_refused_without_running(tmp_path, inputs, monkeypatch):
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    pickle.loads(pickle.dumps(RunsCode()))  # the payload works: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    folder = save_model(_net(), str(tmp_path / "evil"))
    state = dict(_net().state_dict(), payload=RunsCode())
    torch.save(state, os.path.join(folder, "model.ckpt"))
    config = yaml.safe_load(open(f"{folder}/model.yaml"))
    del config["files"]  # an attacker rewrites the manifest too: the loader must still refuse
    yaml.safe_dump(config, open(f"{folder}/model.yaml", "w"))
    _refused(folder, inputs, tmp_path, f"{folder}/model.ckpt", "would run code")
    with pytest.raises(ModelLoadError, match="would run code"):
        load_model(folder)
    assert not marker.exists()


def test_model_yaml_may_only_name_registered_plugins(tmp_path, inputs, monkeypatch):
    marker = tmp_path / "imported.txt"
    pkg = tmp_path / "plugins"
    pkg.mkdir()
    (pkg / "evil_plugin.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nclass Sep:\n    pass\n")
    monkeypatch.syspath_prepend(str(pkg))
    good = save_model(_net(), str(tmp_path / "good"))
    for key, spec, path in [("separator", "evil_plugin.Sep", "separator.type"),
                            ("fusion", "evil_plugin.Sep", "fusion"),
                            ("decoder", {"type": "nope"}, "decoder.type")]:
        folder = str(tmp_path / f"bad_{key}")
        shutil.copytree(good, folder)
        config = yaml.safe_load(open(f"{folder}/model.yaml"))
        config[key] = dict(config[key], type=spec) if isinstance(spec, str) and isinstance(
            config[key], dict) else spec
        yaml.safe_dump(config, open(f"{folder}/model.yaml", "w"))
        _refused(folder, inputs, tmp_path, folder, path, "not a registered", "--trust_model_code")
    # a nested spec naming an import path
    folder = str(tmp_path / "nested")
    shutil.copytree(good, folder)
    config = yaml.safe_load(open(f"{folder}/model.yaml"))
    config["separator"]["block"] = {"type": "evil_plugin.Sep"}
    yaml.safe_dump(config, open(f"{folder}/model.yaml", "w"))
    _refused(folder, inputs, tmp_path, "separator.block.type", "import path")
    assert not marker.exists()  # nothing was imported
    # with the explicit trust flag the class path is imported (and found not to be a plugin)
    _refused(str(tmp_path / "bad_separator"), inputs, tmp_path, "is not a separator",
             extra=["--trust_model_code"])
    assert marker.exists()


def _checkpoint(save, name, net, score, damage=None):
    """A CKPT+ folder with a files manifest (sizes, sha256) as the trainer writes it."""
    from avse.safe_io import file_manifest

    ckpt = save / name
    ckpt.mkdir(parents=True)
    torch.save(net.state_dict(), ckpt / "model.ckpt")
    meta = {"si_sdr": score, "unixtime": score, "end-of-epoch": True,
            "files": file_manifest(str(ckpt), ["model.ckpt"])}
    (ckpt / "CKPT.yaml").write_text(yaml.safe_dump(meta))
    if damage:
        damage(ckpt / "model.ckpt")
    return ckpt


def test_experiment_folder_skips_incomplete_checkpoints(tmp_path, inputs, caplog):
    from avse.models.io import save_config

    exp = tmp_path / "exp"
    save_config(_net(), str(exp))
    save = exp / "save"
    nets = {k: _net(seed=k) for k in range(4)}
    cut = (lambda p: p.write_bytes(p.read_bytes()[:100]))
    _checkpoint(save, "CKPT+best_but_cut", nets[0], 9.0, damage=cut)
    _checkpoint(save, "CKPT+second_altered", nets[1], 8.0,
                damage=lambda p: p.write_bytes(p.read_bytes()[:-10] + b"0123456789"))
    _checkpoint(save, "CKPT+third", nets[2], 7.0)
    _checkpoint(save, "CKPT+worst", nets[3], 1.0)
    hidden = save / ".tmp-CKPT+half"  # a save in progress: ignored
    hidden.mkdir()
    (hidden / "CKPT.yaml").write_text("si_sdr: 99\n")
    with caplog.at_level(logging.WARNING):
        model = load_model(str(exp))
    for k, v in model.state_dict().items():
        assert torch.equal(v, nets[2].state_dict()[k]), k
    warned = caplog.text
    assert "CKPT+best_but_cut" in warned and "CKPT+second_altered" in warned
    assert ".tmp-CKPT+half" not in warned
    code, _ = _extract(str(exp), inputs, tmp_path / "ok.wav")
    assert code == 0
    os.remove(tmp_path / "ok.wav")
    # nothing complete left: one line, exit 2
    for name in ("CKPT+third", "CKPT+worst"):
        cut(save / name / "model.ckpt")
    _refused(str(exp), inputs, tmp_path, "no complete CKPT+* checkpoint", str(save))
