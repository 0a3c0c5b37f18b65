"""Visual front-ends: files (save/load/info), ``pretrained:``/``trainable:`` of the ROI visual
encoders, freezing and unfreezing, and old cnn checkpoints."""
import os

import pytest
import torch
from torch import nn

from avse.models.frontends import (Frontend, build_frontend, frontend_info, load_frontend,
                                   save_frontend)
from avse.models.registry import RegistryError, build, known
from avse.models.visual_encoders import SmallCNNVisualEncoder

# small front-end configs, and the visual encoder that holds each
SMALL = {"cnn": dict(hidden=8, channels=(4, 8)), "resnet18": dict(act="relu"), "dlr": {}}
ENCODER = {"cnn": "cnn", "resnet18": "resnet18", "dlr": "dlr_resnet18"}
# small visual encoders with those front-ends (the cnn encoder's ``hidden`` is its frame_dim)
ENC_SMALL = {"cnn": dict(out_dim=8, hidden=8, num_blocks=1, channels=(4, 8)),
             "resnet18": dict(out_dim=8, hidden=16, num_blocks=1, act="relu"),
             "dlr_resnet18": dict(out_dim=8, hidden=16, num_blocks=1)}


def _rois(side, t=3, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, side, side), dtype=torch.uint8, generator=g)


def _randomise_bn(module, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters, so loading them matters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module


def _frontend(name, seed=0):
    torch.manual_seed(seed)
    return _randomise_bn(build_frontend(name, **SMALL[name]), seed).eval()


def test_frontends_are_registered_with_their_attributes():
    assert {"cnn", "resnet18", "dlr"} <= set(known("frontend"))
    for name in ("cnn", "resnet18", "dlr"):
        fe = build_frontend(name, **SMALL[name])
        assert isinstance(fe, Frontend) and fe.registry_name == name
        assert fe.roi_size == (112 if name == "dlr" else 88)
        out = fe.eval()(_rois(fe.roi_size, t=2))
        assert out.shape == (1, 2, fe.frame_dim) and out.dtype == torch.float32
    assert build_frontend("dlr").preset == "lipread" and build_frontend("cnn").preset is None
    with pytest.raises(RegistryError, match="unknown frontend 'nope'; known: cnn, dlr, resnet18"):
        build_frontend("nope")


@pytest.mark.parametrize("name", ["cnn", "resnet18", "dlr"])
def test_save_load_round_trip_gives_equal_outputs(name, tmp_path):
    fe = _frontend(name)
    path = str(tmp_path / "sub" / f"{name}.pt")
    assert save_frontend(fe, path, preset="lrs2", extra={"epochs": 3}) == path
    assert os.listdir(tmp_path / "sub") == [f"{name}.pt"]  # no temporary file left
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "avse-frontend" and raw["version"] == 1 and raw["type"] == name
    info = frontend_info(path)
    assert info == {"format": "avse", "type": name, "config": fe.config,
                    "frame_dim": fe.frame_dim, "preset": "lrs2", "extra": {"epochs": 3}}
    again = load_frontend(path)
    assert type(again) is type(fe) and not again.training
    assert again.preset == "lrs2" and again.extra == {"epochs": 3}
    x = _rois(fe.roi_size)
    with torch.no_grad():
        assert torch.equal(again(x), fe(x))
        assert torch.equal(again(x.float()), fe(x))


@pytest.mark.parametrize("name", ["cnn", "resnet18", "dlr"])
def test_pretrained_loads_into_each_encoder(name, tmp_path):
    fe = _frontend(name)
    path = str(tmp_path / "front.pt")
    save_frontend(fe, path, preset="voxceleb2")
    torch.manual_seed(7)
    enc = build("visual_encoder", ENCODER[name], pretrained=path, **ENC_SMALL[ENCODER[name]])
    assert enc.frontend.preset == "voxceleb2"
    for k, v in fe.state_dict().items():
        assert torch.equal(enc.frontend.state_dict()[k], v), k
    enc.eval()
    x = _rois(fe.roi_size)
    with torch.no_grad():
        assert torch.equal(enc.frame_features(x), fe(x))
        assert enc(x).shape == (1, 8, 3)


def test_wrong_type_or_config_is_a_clear_error_naming_the_file(tmp_path):
    cnn = str(tmp_path / "cnn.pt")
    save_frontend(_frontend("cnn"), cnn)
    with pytest.raises(ValueError, match=rf"{cnn} holds a 'cnn' front-end .* this visual "
                                         r"encoder's front-end is 'resnet18'"):
        build("visual_encoder", "resnet18", pretrained=cnn, **ENC_SMALL["resnet18"])
    with pytest.raises(ValueError, match=rf"{cnn}: the 'cnn' front-end config differs .*"
                                         r"channels: file \[4, 8\], here \[16, 32, 64, 64\]; "
                                         r"hidden: file 8, here 16"):
        build("visual_encoder", "cnn", pretrained=cnn, out_dim=8, hidden=16)
    not_there = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match=f"front-end file {not_there} not found"):
        load_frontend(not_there)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=f"{text}: not a readable torch file"):
        frontend_info(str(text))
    listed = str(tmp_path / "list.pt")
    torch.save([1, 2], listed)
    with pytest.raises(ValueError, match=f"{listed}: not a front-end file; expected an avse "
                                         "front-end file .* got list"):
        load_frontend(listed)
    newer = str(tmp_path / "newer.pt")
    torch.save({**torch.load(cnn, weights_only=True), "version": 2}, newer)
    with pytest.raises(ValueError, match=f"{newer}: front-end file version 2"):
        load_frontend(newer)
    broken = str(tmp_path / "broken.pt")
    raw = torch.load(cnn, weights_only=True)
    raw["state_dict"].pop("frame_proj.bias")
    torch.save(raw, broken)
    with pytest.raises(ValueError, match=f"cannot load {broken} into the 'cnn' front-end: "
                                         "missing keys: frame_proj.bias"):
        load_frontend(broken)
    with pytest.raises(TypeError, match="save_frontend expects a front-end"):
        save_frontend(nn.Linear(2, 2), str(tmp_path / "x.pt"))


@pytest.mark.parametrize("name", ["cnn", "resnet18", "dlr_resnet18"])
def test_frozen_frontend_has_no_grads_and_stays_in_eval(name):
    torch.manual_seed(0)
    enc = build("visual_encoder", name, trainable=False, **ENC_SMALL[name]).train()
    assert enc.vtcn.training and not enc.frontend.training
    before = {k: v.clone() for k, v in enc.frontend.state_dict().items()}
    enc(_rois(enc.frontend.roi_size, b=2)).square().mean().backward()
    assert all(not p.requires_grad and p.grad is None for p in enc.frontend.parameters())
    for k, v in enc.frontend.state_dict().items():  # BN running stats included
        assert torch.equal(v, before[k]), k
    assert all(p.grad is not None for p in enc.vtcn.parameters())


def test_dlr_encoder_is_frozen_by_default_and_set_frontend_trainable_switches():
    torch.manual_seed(0)
    assert not build("visual_encoder", "dlr_resnet18", **ENC_SMALL["dlr_resnet18"]).trainable
    enc = build("visual_encoder", "cnn", trainable=False, **ENC_SMALL["cnn"]).train()
    x = _rois(88, b=2)
    enc.set_frontend_trainable(True)
    assert enc.trainable and enc.frontend.training
    assert all(p.requires_grad for p in enc.frontend.parameters())
    enc(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.frontend.parameters())
    enc.eval().set_frontend_trainable(True)
    assert not enc.frontend.training  # follows the encoder's mode
    enc.train().set_frontend_trainable(False)
    assert not enc.frontend.training
    assert not any(p.requires_grad for p in enc.frontend.parameters())
    enc.train()
    assert not enc.frontend.training


def test_old_cnn_checkpoint_keys_load():
    torch.manual_seed(0)
    enc = SmallCNNVisualEncoder(**ENC_SMALL["cnn"])
    _randomise_bn(enc)
    old = {k.replace("frontend.", "", 1): v for k, v in enc.state_dict().items()}
    assert {k.split(".")[0] for k in old} == {"cnn", "frame_proj", "vtcn"}
    torch.manual_seed(1)
    fresh = SmallCNNVisualEncoder(**ENC_SMALL["cnn"])
    fresh.load_state_dict(old)  # strict
    x = _rois(88, b=2)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), enc.eval()(x))
    # nested inside a model, under a prefix
    parent = nn.ModuleDict({"visual_encoder": SmallCNNVisualEncoder(**ENC_SMALL["cnn"])})
    parent.load_state_dict({"visual_encoder." + k: v for k, v in old.items()})
    assert torch.equal(parent["visual_encoder"].frontend.cnn[0].weight, enc.frontend.cnn[0].weight)
    upgraded = SmallCNNVisualEncoder.upgrade_state_dict(
        {"visual_encoder." + k: v for k, v in old.items()}, "visual_encoder.")
    assert set(upgraded) == {"visual_encoder." + k for k in enc.state_dict()}
