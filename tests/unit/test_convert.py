"""tools/convert_seanet_checkpoint.py (avse.models.reference.cli): reference trainer checkpoints of
every SEANet-repository backbone -> exported model folders, losslessly; bad keys fail loudly."""
import os
import subprocess
import sys

import pytest
import torch

from avse.inference import AVSEExtractor
from avse.models import AVSEModel, load_model
from avse.models.reference import avsep, dprnn, muse, seanet
from avse.models.reference import cli as convert
from tests.model_helpers import randomise

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TO_REFERENCE = {"seanet": seanet.to_reference_state_dict,
                "dprnn": dprnn.to_reference_state_dict,
                "muse": muse.to_reference_state_dict,
                "avsep": avsep.to_reference_state_dict}
NESTING = {"seanet": None, "dprnn": "state_dict", "muse": "model", "avsep": None}


def write_reference_checkpoint(arch, path, seed=0):
    """Our reference-config model (randomised) and its reference-format checkpoint at path."""
    torch.manual_seed(seed)
    model = randomise(AVSEModel(**convert.reference_config(arch)), seed, scale=0.05).eval()
    ref = TO_REFERENCE[arch](model.state_dict())
    assert all(k.startswith("model.") for k in ref)
    nest = NESTING[arch]
    torch.save({nest: ref} if nest else ref, path)
    return model, ref


def short_inputs(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 6400, generator=gen), torch.randn(1, 10, 512, generator=gen)


@pytest.mark.parametrize("arch", convert.ARCHS)
def test_convert_is_lossless(arch, tmp_path, capsys):
    ckpt, out = str(tmp_path / f"{arch}.model"), str(tmp_path / "exported")
    model, _ = write_reference_checkpoint(arch, ckpt)
    assert convert.main(["--arch", arch, "--checkpoint", ckpt, "--out", out]) == 0
    assert arch in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["model.ckpt", "model.yaml"]
    loaded = load_model(out)
    own, back = model.state_dict(), loaded.state_dict()
    assert set(own) == set(back)
    for key, value in own.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    mix, emb = short_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(mix, emb).estimate, model(mix, emb).estimate)
    if arch == "dprnn":
        extractor = AVSEExtractor.from_hparams(source=out)
        with torch.no_grad():
            assert torch.equal(extractor.model(mix, emb).estimate, model(mix, emb).estimate)


@pytest.mark.parametrize("arch", convert.ARCHS)
def test_renamed_key_fails_with_its_name(arch, tmp_path, capsys):
    ckpt, out = str(tmp_path / "ref.model"), str(tmp_path / "exported")
    _, ref = write_reference_checkpoint(arch, ckpt)
    keys = sorted(k for k in ref if k.endswith(".weight"))
    key = keys[len(keys) // 2]
    renamed = key.replace(".weight", ".weight_renamed")
    ref[renamed] = ref.pop(key)
    torch.save(ref, ckpt)
    assert convert.main(["--arch", arch, "--checkpoint", ckpt, "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"missing keys: {key}" in err and f"unexpected keys: {renamed}" in err
    assert not os.path.exists(out)


def test_wrong_shape_fails_and_bare_keys_are_accepted(tmp_path, capsys):
    ckpt, out = str(tmp_path / "ref.model"), str(tmp_path / "exported")
    model, ref = write_reference_checkpoint("dprnn", ckpt)
    shaped = dict(ref, **{"model.separator.av_conv.weight": torch.zeros(64, 300, 1)})
    torch.save(shaped, ckpt)
    assert convert.main(["--arch", "dprnn", "--checkpoint", ckpt, "--out", out]) == 2
    assert "wrong shapes: model.separator.av_conv.weight (64, 300, 1)" in capsys.readouterr().err
    torch.save({k[len("model."):]: v for k, v in ref.items()}, ckpt)  # the module's own keys
    assert convert.main(["--arch", "dprnn", "--checkpoint", ckpt, "--out", out]) == 0
    back = load_model(out).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(back[key], value), key


def test_tools_script_exit_status(tmp_path):
    ckpt = str(tmp_path / "ref.model")
    torch.save({"model.encoder.conv1d_U.weight": torch.zeros(256, 1, 40)}, ckpt)
    script = os.path.join(REPO, "tools", "convert_seanet_checkpoint.py")
    proc = subprocess.run([sys.executable, script, "--arch", "dprnn", "--checkpoint", ckpt,
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr
    assert "missing keys: model.decoder_s.basis_signals.weight" in proc.stderr


def test_wrong_arch_and_bad_files_fail(tmp_path, capsys):
    ckpt = str(tmp_path / "dprnn.model")
    write_reference_checkpoint("dprnn", ckpt)
    out = str(tmp_path / "exported")
    assert convert.main(["--arch", "seanet", "--checkpoint", ckpt, "--out", out]) == 2
    assert "missing keys" in capsys.readouterr().err
    assert convert.main(["--arch", "dprnn", "--checkpoint", str(tmp_path / "nope"),
                         "--out", out]) == 2
    assert "no such file" in capsys.readouterr().err
    torch.save([1, 2], str(tmp_path / "list.pt"))
    assert convert.main(["--arch", "dprnn", "--checkpoint", str(tmp_path / "list.pt"),
                         "--out", out]) == 2
    assert "expected a state dict" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        convert.main(["--arch", "tcn", "--checkpoint", ckpt, "--out", out])
    assert exc.value.code == 2
