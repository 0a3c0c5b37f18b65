"""SEANet separator: size, shapes, estimates per repeat, train/eval, reference chunking,
reference checkpoint conversion, and the yaml's loss against the reference trainer's."""
import hashlib
import os
from types import SimpleNamespace

import pytest
import speechbrain as sb
import torch
from torch import nn

from avse.brain import AVSEBrain
from tests.model_helpers import av_inputs as inputs, randomise
from avse.metrics import si_sdr
from avse.models import AVSEModel, ModelOutput
from avse.models.reference.seanet import convert_reference_state_dict, to_reference_state_dict
from avse.models.separators.seanet import CrossBlock, SEANetSeparator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YAML = os.path.join(REPO, "egs", "voxceleb2", "hparams", "seanet.yaml")
FUSION = {"type": "concat", "align": "linear"}
SMALL_SEP = {"type": "seanet", "bottleneck": 8, "hidden": 8, "chunk_size": 10, "num_layers": 3,
             "num_heads": 2}
# the reference trainer's state dict at the published size (TaoRuijie/SEANet, model/seanet.py,
# seanet(256, 40, 64, 128, 100, 6) under `model.`): number of keys and sha256 of the sorted
# "key:shape" lines, recorded from the reference code itself
REF_KEYS, REF_SHA = 755, "d960729ff22b07b7edfd9ffbccaceff8ad4c1c3cbe1e345f4a23f5fdbb2c98b5"
REF_PARAMS = 8_700_422  # what the reference trainer prints as "Model para number = 8.70"


def default_model():
    return AVSEModel({"type": "conv", "out_channels": 256, "kernel_size": 40}, "embedding",
                     "seanet", fusion=FUSION)


def small_model(**sep_kwargs):
    torch.manual_seed(0)
    return AVSEModel({"type": "conv", "out_channels": 32, "kernel_size": 40},
                     {"type": "embedding", "out_dim": 16, "hidden": 32, "num_blocks": 2},
                     {**SMALL_SEP, **sep_kwargs}, fusion=FUSION)


def test_parameter_count():
    model = default_model()
    counts = {slot: sum(p.numel() for p in getattr(model, slot).parameters())
              for slot in ("audio_encoder", "visual_encoder", "separator", "decoder")}
    total = sum(counts.values())
    dead = sum(p.numel() for p in CrossBlock(64).parameters())  # the reference's unused block
    print(f"SEANet: {total / 1e6:.3f} M parameters {counts}; with the reference's unused first "
          f"cross block ({dead}): {(total + dead) / 1e6:.3f} M")
    assert abs(total / 1e6 - 8.367) < 0.005
    assert abs((total + dead) / 1e6 - 8.70) < 0.005 and total + dead == REF_PARAMS
    sep = model.separator
    assert (len(sep.speech_blocks), len(sep.noise_blocks), len(sep.cross)) == (6, 6, 5)
    assert sep.bottleneck_dim == 64 and sep.chunk_size == 100
    assert sep.cross[0].intra_attn.attn_dim == 256 and sep.cross[0].intra_attn.num_heads == 4


def test_forward_backward_shapes():
    model = small_model()
    mix, emb = inputs()
    out = model(mix, emb, return_intermediate=True)
    assert out.estimate.shape == mix.shape
    assert len(out.intermediate) == 2 and len(out.aux["noise_intermediate"]) == 2
    wavs = [out.estimate, *out.intermediate, out.aux["noise"], *out.aux["noise_intermediate"]]
    assert all(w.shape == mix.shape and torch.isfinite(w).all() for w in wavs)
    sum(w.square().mean() for w in wavs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # fused q/k/v projections of both branches of every cross block get gradients
    assert all(p.grad.abs().sum() > 0 for p in model.separator.cross.parameters())


def test_estimates_per_repeat():
    model = small_model(num_layers=4)
    feats = model.audio_encoder(inputs()[0])
    visual = torch.randn(2, 16, 15)
    with torch.no_grad():
        every = model.separator(feats, visual, return_intermediate=True)
        final = model.separator(feats, visual)
    assert len(every.masks) == 4 and len(every.aux_masks["noise"]) == 4
    assert len(final.masks) == 1 and len(final.aux_masks["noise"]) == 1
    for m in every.masks + every.aux_masks["noise"]:
        assert m.shape == feats.shape and (m >= 0).all()
    assert torch.equal(final.masks[0], every.masks[-1])
    assert torch.equal(final.aux_masks["noise"][0], every.aux_masks["noise"][-1])
    assert not torch.equal(every.masks[-1], every.aux_masks["noise"][-1])
    model.separator.noise_output = False  # inference only: no noise branch tail
    with torch.no_grad():
        lean = model.separator(feats, visual)
    assert lean.aux_masks == {} and torch.equal(lean.masks[0], final.masks[0])


def test_eval_equals_train_without_batchnorm_statistics():
    """No dropout or other train-only behaviour: with the cross attention's BatchNorms
    reading their running statistics, train mode gives the eval-mode estimate."""
    model = randomise(small_model()).eval()
    mix, emb = inputs(seconds=0.8)
    with torch.no_grad():
        final = model(mix, emb)
        both = model(mix, emb, return_intermediate=True)
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.eval()
        train = model(mix, emb, return_intermediate=True)
    assert torch.equal(final.estimate, both.estimate) and not final.intermediate
    torch.testing.assert_close(train.estimate, final.estimate)
    torch.testing.assert_close(train.aux["noise"], final.aux["noise"])
    assert len(train.intermediate) == 2


@pytest.mark.parametrize("length", [1, 49, 50, 51, 99, 100, 101, 149, 150, 3199])
def test_reference_chunking(length):
    """S = 2 (floor((L + K/2) / K) + 1) chunks (the reference's padding); overlap-add of the
    chunks gives every frame twice."""
    sep = SEANetSeparator(in_dim=4, visual_dim=4, bottleneck=4, hidden=4, chunk_size=100,
                          num_layers=1, num_heads=1)
    expect = 2 * ((length + 50) // 100 + 1)
    assert sep.num_chunks(length) == expect
    x = torch.randn(2, length, 3)
    chunks = sep._chunk(x)
    assert chunks.shape == (2, expect, 100, 3)
    torch.testing.assert_close(sep._overlap_add(chunks, length), 2 * x)
    assert chunks[:, 0, :50].abs().sum() == 0  # K/2 zero frames first
    if length == 3199:
        assert expect == 66  # 4 s with a 20-sample hop


def _key_hash(state):
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_reference_state_dict_round_trip():
    ours = randomise(default_model()).state_dict()
    ref = to_reference_state_dict(ours)
    assert all(k.startswith("model.") for k in ref)
    assert _key_hash(ref) == (REF_KEYS, REF_SHA)  # exactly the reference's keys and shapes
    assert ref["model.decoder.basis_signals.weight"].shape == (40, 256)
    assert ref["model.separator.v_ds.weight"].shape == (256, 512)
    back = convert_reference_state_dict(ref)
    assert set(back) == set(ours)
    for key, value in ours.items():
        assert back[key].shape == value.shape and torch.equal(back[key], value), key
    model = default_model()
    model.load_state_dict(back, strict=True)
    # small sizes are read from the shapes
    small = small_model()
    randomise(small)
    back = convert_reference_state_dict(to_reference_state_dict(small.state_dict()))
    assert all(torch.equal(back[k], v) for k, v in small.state_dict().items())


def test_reference_state_dict_errors():
    ref = to_reference_state_dict(small_model().state_dict())
    wrong = dict(ref)
    wrong["model.separator.cross.1.inter_cross.linear_q1_slf.weight"] = wrong.pop(
        "model.separator.cross.1.inter_cross.linear_q1_self.weight")
    with pytest.raises(ValueError) as err:
        convert_reference_state_dict(wrong)
    assert "linear_q1_slf.weight" in str(err.value) and "linear_q1_self.weight" in str(err.value)
    missing = {k: v for k, v in ref.items() if "cross.0." not in k}  # even the unused block
    with pytest.raises(ValueError, match=r"missing keys: model\.separator\.cross\.0\."):
        convert_reference_state_dict(missing)
    shaped = dict(ref)
    shaped["model.separator.adder.mask_conv1x1.weight"] = torch.zeros(32, 8)
    with pytest.raises(ValueError, match=r"wrong shapes: model\.separator\.adder\.mask_conv1x1"):
        convert_reference_state_dict(shaped)
    extra = {**ref, "model.separator.rnn_s.9.intra_norm.weight": torch.ones(8)}
    with pytest.raises(ValueError, match=r"rnn_s\.9\.intra_norm"):
        convert_reference_state_dict(extra)
    unprefixed = {k[len("model."):]: v for k, v in ref.items()}
    with pytest.raises(ValueError, match="must start with 'model.'"):
        convert_reference_state_dict(unprefixed)
    film = AVSEModel({"type": "conv", "out_channels": 32, "kernel_size": 40},
                     {"type": "embedding", "out_dim": 16, "hidden": 32, "num_blocks": 1},
                     SMALL_SEP, fusion="film")
    with pytest.raises(ValueError, match="not representable.*fusion.gamma"):
        to_reference_state_dict(film.state_dict())


def _yaml_hparams(tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    with open(YAML) as f:  # the experiment yaml, with its !include of egs/models/seanet.yaml
        return load_hyperpyyaml(f, {"data_folder": str(tmp_path / "data"),
                                    "output_folder": str(tmp_path / "exp")})


def test_yaml_loss_is_the_reference_loss(tmp_path):
    """AVSEBrain's loss with the yaml's alpha / aux_losses equals the reference trainer's
    SEANet loss (trainer.py: sums over the batch) divided by the batch size."""
    hp = _yaml_hparams(tmp_path)
    assert hp["separator_type"] == "seanet" and hp["alpha"] == 0.1
    gen = torch.Generator().manual_seed(0)
    b, t, r = 3, 4000, 6
    target, interference = torch.randn(b, t, generator=gen), torch.randn(b, t, generator=gen)
    speech = [target + (k + 1) * 0.3 * torch.randn(b, t, generator=gen) for k in range(r)]
    noise = [interference + (k + 1) * 0.2 * torch.randn(b, t, generator=gen) for k in range(r)]
    output = ModelOutput(speech[-1], speech[:-1], {"noise": noise[-1],
                                                   "noise_intermediate": noise[:-1]})
    batch = {"mixture": target + interference, "target": target, "interference": interference}
    brain = object.__new__(AVSEBrain)
    brain.hparams = SimpleNamespace(alpha=hp["alpha"], aux_losses=hp["aux_losses"])
    ours = brain.compute_objectives((output, batch), batch, sb.Stage.TRAIN)

    def loss_se(est, ref):  # the reference's loss_speech: minus the SI-SDR summed over rows
        return -si_sdr(est, ref).sum()

    cat = lambda xs: torch.cat(xs, dim=0)  # noqa: E731
    reference = loss_se(speech[-1], target) + 0.1 * (
        loss_se(noise[-1], interference) + loss_se(cat(noise[:-1]), interference.repeat(5, 1))
        + loss_se(cat(speech[:-1]), target.repeat(5, 1)))
    torch.testing.assert_close(ours, reference / b)


def test_reduced_precision_attention_path_matches_fp32():
    """On CPU in bf16 the reverse attention uses explicit matmuls (CPU SDPA is slow in
    bf16); it computes the same thing as the fp32 SDPA path."""
    from avse.models.separators.seanet import ReverseAttention

    g = torch.Generator().manual_seed(0)
    q1, q2, k, v = (torch.randn(3, 2, 7, 8, generator=g) for _ in range(4))
    ref = ReverseAttention._attend(q1, q2, k, v, 8 ** -0.5)
    low = ReverseAttention._attend(*(x.bfloat16() for x in (q1, q2, k, v)), 8 ** -0.5)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), ref, atol=0.05, rtol=0.05)
    exact = ReverseAttention._attend(*(x.double() for x in (q1, q2, k, v)), 8 ** -0.5)
    assert torch.allclose(exact.float(), ref, atol=1e-5)  # fp32 path is the exact formula
    sep = SEANetSeparator(in_dim=16, visual_dim=8, bottleneck=8, hidden=8, chunk_size=10,
                          num_layers=2, num_heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sep(torch.rand(2, 16, 37), torch.randn(2, 8, 3), return_intermediate=True)
    assert all(torch.isfinite(m).all() for m in out.masks)
