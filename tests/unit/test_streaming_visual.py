"""Streaming steppers of the causal visual encoders (issue 14): chunk after chunk (1, 3 or all
frames at a time) the features equal the offline encoder's; fixed-shape state; non-causal
encoders refused with a clear error."""
import pytest
import torch

from avse.models.visual_encoders import (DLRVisualEncoder, EmbeddingVisualEncoder,
                                         ResNet18VisualEncoder, SmallCNNVisualEncoder)
from avse.streaming.registry import stepper_for
from avse.streaming.visual import EmbeddingStepper, FrontendStepper

B, TV = 2, 8


def _randomise_batchnorm(module, seed=3):
    """Non-trivial running statistics and affine parameters (fresh BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return module


def _encoder(kind, **kw):
    torch.manual_seed(0)
    if kind == "emb_cln":
        enc = EmbeddingVisualEncoder(in_dim=24, out_dim=8, hidden=16, num_blocks=2,
                                     kernel_size=5, norm="cln", causal=True, **kw)
    elif kind == "emb_bn":
        enc = EmbeddingVisualEncoder(in_dim=16, out_dim=16, hidden=None, num_blocks=2,
                                     norm="bn", causal=True, **kw)
    else:
        enc = SmallCNNVisualEncoder(out_dim=8, hidden=8, num_blocks=2, channels=(4, 8),
                                    diff=kind == "cnn", norm="cln", causal=True, **kw)
    return _randomise_batchnorm(enc).eval()


def _frames(enc, batch=B, frames=TV, side=88, seed=1):
    g = torch.Generator().manual_seed(seed)
    if enc.input_kind == "emb":
        return torch.randn(batch, frames, enc.vtcn.in_dim, generator=g)
    return torch.randint(0, 256, (batch, frames, side, side), dtype=torch.uint8, generator=g)


def _stream(stepper, frames, chunk):
    state = stepper.init_state(frames.shape[0], frames.device, torch.float32)
    outs = []
    for start in range(0, frames.shape[1], chunk):
        y, state = stepper.step(state, frames[:, start:start + chunk])
        outs.append(y)
    return torch.cat(outs, 2), state


@pytest.mark.parametrize("kind", ["emb_cln", "emb_bn", "cnn", "cnn_nodiff"])
@torch.no_grad()
def test_stream_equals_offline_in_any_chunks(kind):
    enc = _encoder(kind)
    frames = _frames(enc)
    ref = enc(frames)
    stepper = stepper_for(enc)
    for chunk in (1, 3, TV):
        out, _ = _stream(stepper, frames, chunk)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-5, rtol=0), (chunk, (out - ref).abs().max())


@torch.no_grad()
def test_resnet18_causal_stem_streams():
    """Fresh BatchNorm here: the 18 layers at random weights reach features of 20-30 already;
    one frame at a time the convs sum in another order, and the difference (about 5e-6 at an
    output peak of 5) is float rounding, so the bound is 1e-5 of the peak."""
    torch.manual_seed(0)
    enc = ResNet18VisualEncoder(out_dim=8, hidden=16, num_blocks=1, norm="cln", causal=True)
    enc.eval()
    frames = _frames(enc, batch=1, frames=6)
    ref = enc(frames)
    stepper = FrontendStepper(enc)
    assert stepper.init_state(1, "cpu", torch.float32)["stem"].shape == (1, 1, 4, 88, 88)
    tol = 1e-5 * max(1.0, ref.abs().max().item())
    for chunk in (1, 3, 6):
        out, _ = _stream(stepper, frames, chunk)
        assert (out - ref).abs().max() <= tol, (chunk, (out - ref).abs().max())


@torch.no_grad()
def test_float_rois_on_another_scale_and_another_side():
    enc = _encoder("cnn", input_scale=1.0)
    frames = _frames(enc, side=40).float() / 255.0
    out, _ = _stream(FrontendStepper(enc, roi_size=40), frames, 3)
    assert torch.allclose(out, enc(frames), atol=1e-5, rtol=0)


@torch.no_grad()
def test_state_has_fixed_shapes_and_inputs_are_left_alone():
    enc = _encoder("cnn")
    stepper = FrontendStepper(enc)
    state = stepper.init_state(B, "cpu", torch.float32)
    assert set(state) == {"cnn_prev", "cnn_started", "vtcn0", "vtcn1"}
    assert state["vtcn0"].shape == (B, 8, 2) and state["cnn_prev"].shape == (B, 1, 88, 88)
    frames = _frames(enc, frames=3)
    kept_frames, kept_state = frames.clone(), {k: v.clone() for k, v in state.items()}
    for chunk in (frames[:, :1], frames[:, 1:]):
        _, new = stepper.step(state, chunk)
        assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in state.items()}
        assert all(torch.equal(state[k], kept_state[k]) for k in state)
    assert torch.equal(frames, kept_frames)


def test_stepper_for_finds_the_encoders_and_refuses_dlr():
    assert isinstance(stepper_for(_encoder("emb_cln")), EmbeddingStepper)
    assert isinstance(stepper_for(_encoder("cnn"), roi_size=40), FrontendStepper)
    with pytest.raises(ValueError, match="DLRVisualEncoder is not causal"):
        stepper_for(DLRVisualEncoder(out_dim=8, hidden=16, num_blocks=1))


@pytest.mark.parametrize("make,words", [
    (lambda: EmbeddingVisualEncoder(out_dim=8, hidden=16, num_blocks=1),
     ["EmbeddingVisualEncoder", "global layer norm"]),
    (lambda: EmbeddingVisualEncoder(out_dim=8, hidden=16, num_blocks=1, norm="cln"),
     ["EmbeddingVisualEncoder", "centred conv"]),
    (lambda: ResNet18VisualEncoder(out_dim=8, hidden=16, num_blocks=1, norm="cln"),
     ["ResNet18VisualEncoder", "3-D conv stem"]),
    (lambda: DLRVisualEncoder(out_dim=8, hidden=16, num_blocks=1),
     ["DLRVisualEncoder", "DLRFrontend"]),
])
def test_non_causal_encoders_are_refused(make, words):
    enc = make()
    stepper = EmbeddingStepper if isinstance(enc, EmbeddingVisualEncoder) else FrontendStepper
    with pytest.raises(ValueError) as err:
        stepper(enc)
    for word in words + ["AVSEModel(..., causal=True)"]:
        assert word in str(err.value)


def test_batchnorm_in_train_mode_is_refused():
    enc = _encoder("cnn").train()
    stepper = FrontendStepper(enc)
    with pytest.raises(ValueError, match="eval"):
        stepper.step(stepper.init_state(1, "cpu", torch.float32), _frames(enc, batch=1, frames=1))
