"""Every registered visual encoder: shapes, gradients, input kinds; resnet18 freezing/loading."""
import re

import pytest
import torch

from avse.models.base import VisualEncoder
from avse.models.visual_encoders import VTCN, ResNet18VisualEncoder, VisualConvBlock
from avse.models.registry import build, get, known

B, TV = 2, 7
# small kwargs per short name; an encoder not listed here is built with its defaults
SMALL = {
    "embedding": dict(out_dim=8, hidden=16, num_blocks=1),
    "resnet18": dict(out_dim=8, hidden=16, num_blocks=1),
    "cnn": dict(out_dim=8, hidden=8, num_blocks=1, channels=(4, 8)),
    "dlr_resnet18": dict(out_dim=8, hidden=16, num_blocks=1),
}
ENCODERS = known("visual_encoder")


def _build(name, **kw):
    torch.manual_seed(0)
    return build("visual_encoder", name, **{**SMALL.get(name, {}), **kw})


def _side(enc):
    """The ROI side an encoder reads (88, or 112 for the published lip-reading front-end)."""
    return enc.frontend.roi_size if hasattr(enc, "frontend") else 88


def _input(kind, seed=0, side=88):
    g = torch.Generator().manual_seed(seed)
    if kind == "roi":
        return torch.randint(0, 256, (B, TV, side, side), dtype=torch.uint8, generator=g)
    assert kind == "emb", kind
    return torch.randn(B, TV, 512, generator=g)


def test_builtins_are_registered():
    assert {"embedding", "resnet18", "cnn"} <= set(ENCODERS)


@pytest.mark.parametrize("name", ENCODERS)
def test_shape_and_finite_grads(name):
    enc = _build(name)
    assert isinstance(enc, VisualEncoder) and enc.input_kind in ("roi", "emb")
    n_params = sum(p.numel() for p in enc.parameters())
    n_default = sum(p.numel() for p in build("visual_encoder", name).parameters())
    print(f"{name}: {n_params} params (small), {n_default} (defaults)")
    out = enc(_input(enc.input_kind, side=_side(enc)))
    assert out.shape == (B, enc.out_dim, TV)
    out.square().mean().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ENCODERS)
def test_wrong_input_kind_is_a_clear_error(name):
    enc = _build(name)
    wrong = _input("emb" if enc.input_kind == "roi" else "roi")
    side = _side(enc)
    expected = f"[B, Tv, {side}, {side}]" if enc.input_kind == "roi" else "[B, Tv, 512]"
    with pytest.raises(ValueError, match="expects.*" + re.escape(expected)):
        enc(wrong)


ROI_ENCODERS = [n for n in ENCODERS if get("visual_encoder", n).input_kind == "roi"]


@pytest.mark.parametrize("name", ROI_ENCODERS)
def test_uint8_and_float_roi_agree(name):
    enc = _build(name).eval()
    x = _input("roi", side=_side(enc))
    with torch.no_grad():
        a, b = enc(x), enc(x.float())
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("trainable", [True, False])
def test_resnet18_frozen_vs_trainable(trainable):
    enc = _build("resnet18", trainable=trainable).train()
    assert enc.vtcn.training
    assert enc.frontend.training is trainable
    bn = enc.frontend.frontend3D[1]
    before = {k: v.clone() for k, v in enc.frontend.state_dict().items()}
    enc(_input("roi")).sum().backward()
    front = list(enc.frontend.parameters())
    if trainable:
        assert all(p.grad is not None for p in front)
        assert not torch.equal(bn.running_mean, before["frontend3D.1.running_mean"])
    else:
        assert all(not p.requires_grad and p.grad is None for p in front)
        for k, v in enc.frontend.state_dict().items():  # BN running stats included
            assert torch.equal(v, before[k]), k
    assert all(p.grad is not None for p in enc.vtcn.parameters())


def test_resnet18_pretrained_roundtrip_and_bad_keys(tmp_path):
    src = _build("resnet18")
    path = tmp_path / "front.pt"
    torch.save(src.frontend.state_dict(), path)
    torch.manual_seed(1)
    dst = ResNet18VisualEncoder(out_dim=8, hidden=16, num_blocks=1, pretrained=str(path))
    for k, v in src.frontend.state_dict().items():
        assert torch.equal(v, dst.frontend.state_dict()[k]), k
    state = dict(src.frontend.state_dict())
    state.pop("trunk.layer1.0.conv1.weight")
    state["tcn.extra"] = torch.zeros(1)
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match=r"missing keys: trunk\.layer1\.0\.conv1\.weight.*"
                                         r"unexpected keys: tcn\.extra"):
        ResNet18VisualEncoder(pretrained=str(path))


def test_vtcn_forms_keep_length():
    x = torch.randn(3, 12, 9)
    assert VTCN(12, 6, hidden=10, num_blocks=2)(x).shape == (3, 6, 9)
    assert VTCN(12, 12, hidden=None, num_blocks=1, norm="bn")(x).shape == (3, 12, 9)
    block = VisualConvBlock(12, hidden=None, kernel_size=5)
    assert block(x).shape == x.shape
    with pytest.raises(ValueError, match="norm"):
        VTCN(12, 6, norm="layer")


def test_embedding_encoder_takes_the_roi_options_but_loads_nothing():
    """One yaml swaps cnn <-> embedding: the ROI options are accepted, a front-end file is not."""
    enc = build("visual_encoder", "embedding", out_dim=8, hidden=None, num_blocks=1,
                pretrained=None, trainable=False)
    assert enc(torch.randn(1, 5, 512)).shape == (1, 8, 5)
    with pytest.raises(ValueError, match="no front-end to load 'fe.pt'.*avse.recipes.embed"):
        build("visual_encoder", "embedding", pretrained="fe.pt")
