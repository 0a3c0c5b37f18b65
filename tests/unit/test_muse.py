"""MuSE separator: size, shapes, speaker logits per repeat, train/eval, the reference's visual
alignment, reference checkpoint conversion, and the yaml's loss against the reference trainer's.

The numerical equality with the reference model itself (same weights, eval mode, 4 s input)
was measured against the reference code run outside the repository (see the module doc of
avse/models/separators/muse.py); these tests pin down everything that measurement relies on.
"""
import hashlib
import os
from types import SimpleNamespace

import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F

from avse import losses
from avse.brain import AVSEBrain
from tests.model_helpers import av_inputs as inputs, randomise
from avse.metrics import si_sdr
from avse.models import AVSEModel, ModelOutput
from avse.models.reference.muse import convert_reference_state_dict, to_reference_state_dict
from avse.models.reference.muse import reference_config as reference_model_config
from avse.models.separators.muse import MuSESeparator, upsample_visual

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YAML = os.path.join(REPO, "egs", "voxceleb2", "hparams", "muse.yaml")
REF_PARAMS = 15_014_109  # what the reference trainer prints as "Model para number = 15.01"
# sha256 of the sorted "key:shape" lines of the reference trainer's state dict (muse(M=800)
# under `model.`), recorded from the reference code itself; reference_keys() must reproduce it
REF_KEYS, REF_SHA = 559, "9d83e1fac7d3316352b64ab31568e0b68681676451161da258ae849b8056bfc9"
SMALL_SEP = {"type": "muse", "bottleneck": 8, "hidden": 16, "num_blocks": 2, "num_repeats": 3,
             "num_speakers": 5, "speaker_hidden": 8}


def reference_keys(n=256, l=40, c=256, h=512, x=8, r=4, m=800, dv=512, spk_h=256):
    """(key, shape) of the reference trainer's state dict (TaoRuijie/SEANet model/muse.py)."""
    bn = lambda pre, ch: [(f"{pre}.{p}", (ch,)) for p in  # noqa: E731
                          ("weight", "bias", "running_mean", "running_var")] + [
        (f"{pre}.num_batches_tracked", ())]
    keys = [("encoder.conv1d_U.weight", (n, 1, l)), ("decoder.basis_signals.weight", (l, n)),
            ("separator.layer_norm.weight", (n,)), ("separator.layer_norm.bias", (n,)),
            ("separator.bottleneck_conv1x1.weight", (c, n, 1)),
            ("separator.mask_conv1x1.weight", (n, c, 1))]
    for v in range(5):
        pre = f"separator.visual_conv.{v}.net"
        keys += bn(f"{pre}.1", dv) + [(f"{pre}.2.weight", (dv, 1, 3)), (f"{pre}.3.weight", (1,))]
        keys += bn(f"{pre}.4", dv) + [(f"{pre}.5.weight", (dv, dv, 1))]
    for i in range(r):
        keys.append((f"separator.tcn.{i}.0.weight", (c, 3 * c, 1)))
        for j in range(1, x + 1):
            pre = f"separator.tcn.{i}.{j}.net"
            keys += [(f"{pre}.0.weight", (h, c, 1)), (f"{pre}.1.weight", (1,)),
                     (f"{pre}.2.gamma", (1, h, 1)), (f"{pre}.2.beta", (1, h, 1)),
                     (f"{pre}.3.net.0.weight", (h, 1, 3)), (f"{pre}.3.net.1.weight", (1,)),
                     (f"{pre}.3.net.2.gamma", (1, h, 1)), (f"{pre}.3.net.2.beta", (1, h, 1)),
                     (f"{pre}.3.net.3.weight", (c, h, 1))]
        keys += [(f"separator.ve_conv1x1.{i}.weight", (c, dv, 1)),
                 (f"separator.ve_conv1x1_SE.{i}.weight", (c, dv, 1)),
                 (f"separator.audio_linear.{i}.weight", (m, c)),
                 (f"separator.audio_linear.{i}.bias", (m,))]
        pre = f"separator.se_net.{i}"
        keys.append((f"{pre}.conv_proj.weight", (c, 2 * c, 1)))
        for k in range(3):
            res = f"{pre}.resnet.{k}"
            keys += [(f"{res}.0.weight", (spk_h, c, 1))] + bn(f"{res}.1", spk_h)
            keys += [(f"{res}.2.weight", (1,)), (f"{res}.3.weight", (c, spk_h, 1))]
            keys += bn(f"{res}.4", c) + [(f"{pre}.prelu.{k}.weight", (1,))]
        keys += [(f"{pre}.conv.weight", (c, c, 1)), (f"{pre}.conv.bias", (c,))]
    return [("model." + k, s) for k, s in keys]


def reference_state(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 100, s, generator=gen) if k.endswith("num_batches_tracked")
                else torch.randn(s, generator=gen)) for k, s in reference_keys()}


def default_model():
    return AVSEModel(**reference_model_config())


def small_model(**sep_kwargs):
    torch.manual_seed(0)
    return AVSEModel({"type": "conv", "out_channels": 32, "kernel_size": 40},
                     {"type": "embedding", "out_dim": 16, "hidden": None, "num_blocks": 2,
                      "norm": "bn"},
                     {**SMALL_SEP, **sep_kwargs}, fusion="concat")


# ----------------------------------------------------------------------------- size / layout
def test_parameter_count():
    model = default_model()
    counts = {slot: sum(p.numel() for p in getattr(model, slot).parameters())
              for slot in ("audio_encoder", "visual_encoder", "separator", "decoder")}
    total = sum(counts.values())
    print(f"MuSE: {total / 1e6:.3f} M parameters {counts}")
    assert abs(total / 1e6 - 15.01) < 0.005
    assert total == REF_PARAMS
    sep = model.separator
    assert isinstance(sep, MuSESeparator)
    assert (len(sep.repeats), len(sep.repeats[0]), len(sep.classifiers)) == (4, 8, 4)
    assert sep.classifiers[0].out_features == 800 and sep.mask_conv.in_channels == 256
    assert sep.repeats[0][0].conv_in.out_channels == 512 and sep.in_norm.eps == 1e-5
    assert not hasattr(model.visual_encoder.vtcn.proj, "weight")  # no 512 -> 512 projection


def test_reference_key_table_is_the_reference():
    lines = sorted(f"{k}:{tuple(s)}" for k, s in reference_keys())
    assert len(lines) == REF_KEYS
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == REF_SHA
    assert sum(torch.Size(s).numel() for k, s in reference_keys()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) \
        == REF_PARAMS


# ----------------------------------------------------------------------------- forward
def test_forward_backward_shapes():
    model = small_model()
    mix, emb = inputs()
    out = model(mix, emb, return_intermediate=True)
    assert out.estimate.shape == mix.shape and out.intermediate == []
    assert out.aux["speaker_logits"].shape == (2, 5)
    inter = out.aux["speaker_logits_intermediate"]
    assert len(inter) == 2 and all(t.shape == (2, 5) for t in inter)
    label = torch.tensor([1, 4])
    loss = -si_sdr(out.estimate, mix).mean() + 0.1 * losses.aux_loss(
        "cross_entropy", [out.aux["speaker_logits"], *inter], label)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("repeats", [1, 2, 4])
def test_speaker_logits_per_repeat(repeats):
    model = small_model(num_repeats=repeats)
    mix, emb = inputs(batch=3, seconds=0.4)
    with torch.no_grad():
        out = model(mix, emb, return_intermediate=True)
        final_only = model(mix, emb)  # training mode: the final logits only
    assert len(out.aux["speaker_logits_intermediate"]) == repeats - 1
    assert out.aux["speaker_logits"].shape == (3, 5)
    assert sorted(final_only.aux) == ["speaker_logits"]
    assert len(model.separator(model.audio_encoder(mix), model.visual_encoder(emb),
                               return_intermediate=True).masks) == 1


def test_eval_skips_the_classifiers():
    model = small_model().eval()
    mix, emb = inputs()
    calls = []
    for clf in model.separator.classifiers:
        clf.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        plain = model(mix, emb)
    assert plain.aux == {} and calls == []
    model.separator.classify_in_eval = True
    with torch.no_grad():
        assert sorted(model(mix, emb).aux) == ["speaker_logits"]


def test_final_estimate_does_not_depend_on_intermediates():
    """Eval mode: identical with and without the intermediate outputs. MuSE has BatchNorm
    (visual front, speaker branch), so a train-mode estimate differs from the eval-mode one
    by design (batch statistics); in train mode the two calls agree with each other too."""
    model = randomise(small_model()).eval()
    mix, emb = inputs(batch=3)
    with torch.no_grad():
        final = model(mix, emb).estimate
        both = model(mix, emb, return_intermediate=True).estimate
        assert torch.equal(final, both)
        model.train()
        train_final = model(mix, emb).estimate
        train_both = model(mix, emb, return_intermediate=True).estimate
    torch.testing.assert_close(train_final, train_both, rtol=0, atol=0)


def test_short_and_odd_inputs():
    model = small_model().eval()
    for samples, frames in ((401, 1), (16001, 25), (12345, 19), (64000, 101)):
        mix = torch.randn(2, samples)
        with torch.no_grad():
            out = model(mix, torch.randn(2, frames, 512))
        assert out.estimate.shape == mix.shape and torch.isfinite(out.estimate).all()


def test_upsample_visual_is_the_reference_alignment():
    """Linear interpolation to 32 x Tv frames, then zero-pad / crop to the L audio frames."""
    v = torch.randn(2, 3, 100)
    for length in (3199, 3200, 3215, 3000):
        expect = F.pad(F.interpolate(v, 32 * 100, mode="linear"), (0, length - 3200))
        assert torch.equal(upsample_visual(v, length, 32), expect)
    sep = small_model().separator
    assert sep.visual_upsample is None  # derived: round(L / Tv) = 32 for 4 s at hop 20


def test_visual_and_speaker_branch_matter():
    model = randomise(small_model()).eval()
    mix, emb = inputs()
    with torch.no_grad():
        a = model(mix, emb).estimate
        b = model(mix, emb + torch.randn_like(emb)).estimate
        sep = model.separator
        saved = [p.detach().clone() for p in sep.speaker_projs.parameters()]
        for p in sep.speaker_projs.parameters():
            p.zero_()
        c = model(mix, emb).estimate
        for p, s in zip(sep.speaker_projs.parameters(), saved):
            p.copy_(s)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("fusion", ["film", "cross_attention"])
def test_other_fusions(fusion):
    align = "fusion" if fusion == "cross_attention" else "reference"
    model = AVSEModel({"type": "conv", "out_channels": 32, "kernel_size": 40},
                      {"type": "embedding", "out_dim": 16, "hidden": None, "num_blocks": 1},
                      {**SMALL_SEP, "visual_align": align}, fusion=fusion).eval()
    mix, emb = inputs(seconds=0.4)
    with torch.no_grad():
        assert model(mix, emb).estimate.shape == mix.shape


# ----------------------------------------------------------------------------- conversion
def test_reference_conversion_round_trip():
    state = reference_state()
    ours = convert_reference_state_dict(state)
    model = default_model()
    model.load_state_dict(ours)  # strict
    back = to_reference_state_dict(model.state_dict())
    assert sorted(back) == sorted(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key
    # spot checks of the reshapes and of the split of the repeat input conv
    sd = model.state_dict()
    w = state["model.separator.tcn.2.0.weight"]
    assert torch.equal(sd["separator.speaker_projs.2.weight"], w[:, :256])
    assert torch.equal(sd["separator.fusions.2.audio_proj.weight"], w[:, 256:512])
    assert torch.equal(sd["separator.fusions.2.visual_proj.weight"], w[:, 512:])
    assert torch.equal(sd["separator.repeats.1.0.norm_in.weight"],
                       state["model.separator.tcn.1.1.net.2.gamma"].flatten())
    assert torch.equal(sd["decoder.deconv.weight"][:, 0, :],
                       state["model.decoder.basis_signals.weight"].t())
    assert torch.equal(sd["separator.in_norm.bias"][:, 0],
                       state["model.separator.layer_norm.bias"])


def test_small_config_round_trip_via_inverse_map():
    torch.manual_seed(0)
    model = randomise(AVSEModel({"type": "conv", "out_channels": 32, "kernel_size": 40},
                                {"type": "embedding", "out_dim": 512, "hidden": None,
                                 "num_blocks": 1, "norm": "bn"}, SMALL_SEP))
    ref = to_reference_state_dict(model.state_dict())
    assert all(k.startswith("model.") for k in ref)
    back = convert_reference_state_dict(ref, model=model)
    assert sorted(back) == sorted(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_reference_conversion_failures():
    state = reference_state()
    with pytest.raises(ValueError, match="unexpected keys.*model.separator.extra.weight"):
        convert_reference_state_dict({**state, "model.separator.extra.weight": torch.zeros(1)})
    missing = dict(state)
    del missing["model.separator.se_net.3.conv.bias"]
    with pytest.raises(ValueError, match=r"missing keys: separator\.speaker_nets\.3\.out\.bias"):
        convert_reference_state_dict(missing)
    wrong = {**state, "model.separator.audio_linear.1.weight": torch.zeros(700, 256)}
    with pytest.raises(ValueError, match=r"wrong shapes: separator\.classifiers\.1\.weight"):
        convert_reference_state_dict(wrong)
    extra_block = {**state, "model.separator.tcn.0.9.net.1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected keys: separator\.repeats\.0\.8\.act_in"):
        convert_reference_state_dict(extra_block)
    with pytest.raises(ValueError, match="tcn.1.0.weight"):
        convert_reference_state_dict({**state,
                                      "model.separator.tcn.1.0.weight": torch.zeros(256, 700, 1)})
    # a checkpoint saved without the trainer's `model.` prefix converts the same
    bare = {k[len("model."):]: v for k, v in state.items()}
    assert convert_reference_state_dict(bare).keys() == convert_reference_state_dict(state).keys()
    film = AVSEModel({"type": "conv", "out_channels": 32, "kernel_size": 40},
                     {"type": "embedding", "out_dim": 16, "hidden": None, "num_blocks": 1},
                     SMALL_SEP, fusion="film")
    with pytest.raises(ValueError, match="no reference MuSE counterpart.*fusions.0.beta"):
        to_reference_state_dict(film.state_dict())


# ----------------------------------------------------------------------------- yaml / loss
def _yaml_hparams(tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    with open(YAML) as f:
        return load_hyperpyyaml(f, {"data_folder": str(tmp_path / "data"),
                                    "output_folder": str(tmp_path / "exp")})


def test_yaml_model_and_loss_are_the_reference(tmp_path):
    """The yaml builds the reference-size model, and AVSEBrain's loss with its aux_losses
    equals the reference trainer's MuSE loss (trainer.py: SI-SDR summed over the batch, plus
    0.1 x the 4 batch-mean cross entropies) divided by the reference batch size (10)."""
    hp = _yaml_hparams(tmp_path)
    model = hp["model"]
    assert sum(p.numel() for p in model.parameters()) == REF_PARAMS
    assert hp["alpha"] == 0.0 and hp["lr"] == 1.5e-4
    spec = hp["aux_losses"]["speaker"]
    assert spec["output"] == "speaker_logits" and spec["target"] == "speaker"
    assert spec["kind"] == "cross_entropy" and spec["intermediate"] is True
    b_ref, r, m = 10, 4, 800
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(b_ref, 4000, generator=gen)
    estimate = target + 0.5 * torch.randn(b_ref, 4000, generator=gen)
    logits = [torch.randn(b_ref, m, generator=gen) for _ in range(r)]  # repeats 1..4
    label = torch.randint(0, m, (b_ref,), generator=gen)
    output = ModelOutput(estimate, [], {"speaker_logits": logits[-1],
                                        "speaker_logits_intermediate": logits[:-1]})
    batch = {"mixture": estimate, "target": target, "speaker": label}
    brain = object.__new__(AVSEBrain)
    brain.hparams = SimpleNamespace(alpha=hp["alpha"], aux_losses=hp["aux_losses"])
    ours = brain.compute_objectives((output, batch), batch, sb.Stage.TRAIN)
    assert brain._wants_intermediate()
    reference = -si_sdr(estimate, target).sum() + 0.1 * sum(
        F.cross_entropy(x, label) for x in logits)
    torch.testing.assert_close(ours, reference / b_ref)
