"""Silent target (issue 12), training side: lips at rest, absent / sparse examples, the
per-example loss, masked auxiliary losses, the activity head."""
import tempfile

import numpy as np
import pytest
import torch

from avse import losses
from avse.data.activity import rest_frames, sample_gain, silent_frames
from avse.data.conditions import CONDITIONS
from avse.data.loaders.batch import collate_examples, finish_example
from avse.data.mixing import MixtureConfig, power, snr_db
from avse.data.synthetic.speech import speaker_voice, synthesize_utterance
from avse.models import AVSEModel


def _utterance(seed=0, seconds=4.0):
    utt = synthesize_utterance(speaker_voice(7, seed), np.random.default_rng(seed), seconds)
    return utt.wav.astype(np.float32), utt.opening


def test_rest_frames_of_a_synthetic_utterance_are_a_closed_mouth():
    for seed in range(4):
        wav, opening = _utterance(seed)
        rest = rest_frames(wav, opening[:, None])
        assert 1 <= len(rest) <= 25
        assert float(np.abs(rest).max()) == 0.0  # the generator's closed neutral mouth
        assert opening.max() > 0.3  # while the utterance itself opens the mouth


def test_rest_frames_without_a_pause_fall_back_to_the_quietest_frame():
    rng = np.random.default_rng(0)
    n = 30
    level = np.linspace(1.0, 0.5, n)
    level[15:20] = 0.2  # the quietest frames (17 in their middle), well above -35 dB
    wav = np.repeat(level, 640) * rng.standard_normal(n * 640)
    visual = np.arange(n)[:, None]
    assert not silent_frames(wav, n, margin=0).any()
    assert rest_frames(wav, visual)[:, 0].tolist() == [17]


def _mix(activity, seed=0, rest=None):
    wav, opening = _utterance(seed, 3.0)
    other, _ = _utterance(seed + 10, 3.0)
    visual = np.repeat(opening[:, None], 4, axis=1).astype(np.float32)
    cfg = MixtureConfig(crop_seconds=None, normalise=None)
    ex = finish_example(cfg, "t", 0, wav, visual, [other], [3.0], np.random.default_rng(0),
                        ["o"], "t", activity=activity, rest=rest)
    return ex, wav, other


def test_absent_example_is_the_interference_alone_at_the_level_the_target_would_give():
    ex, wav, other = _mix(("absent", 0, 0))
    present, _, _ = _mix(None)
    assert ex["silent_kind"] == "absent" and float(np.abs(ex["target"]).max()) == 0.0
    np.testing.assert_allclose(ex["mixture"], ex["interference"], atol=1e-7)
    # the interferer keeps the SNR relative to the target it would have had
    np.testing.assert_allclose(ex["interference"], present["interference"], atol=1e-7)
    assert snr_db(present["target"], ex["interference"]) == pytest.approx(3.0, abs=1e-4)
    assert ex["activity"].tolist() == [0.0] * len(ex["visual"])
    assert float(np.abs(ex["visual"]).max()) == 0.0  # lips at rest: the closed mouth
    assert float(np.abs(present["visual"]).max()) > 0.3


def test_sparse_example_speaks_in_its_span_only():
    ex, wav, _ = _mix(("sparse", 20, 50))
    present, _, _ = _mix(None)
    act = ex["activity"]
    assert act[20:50].all() and not act[:20].any() and not act[50:].any()
    tgt = ex["target"]
    assert float(np.abs(tgt[:20 * 640]).max()) == 0.0 and float(np.abs(tgt[50 * 640:]).max()) == 0.0
    inner = slice(20 * 640 + 80, 50 * 640 - 80)  # inside the 5 ms ramps: untouched
    np.testing.assert_array_equal(tgt[inner], present["target"][inner])
    np.testing.assert_allclose(ex["mixture"], tgt + ex["interference"], atol=1e-6)
    np.testing.assert_array_equal(ex["visual"][20:50], present["visual"][20:50])
    assert float(np.abs(ex["visual"][:20]).max()) == 0.0


def test_sample_gain_ramps_inside_the_span():
    g = sample_gain(np.array([0, 1, 1, 0], np.float32))
    assert g[:640].max() == 0 and g[3 * 640:].max() == 0
    assert g[640] < 0.01 and g[640 + 80] == 1.0 and g[3 * 640 - 1] < 0.01
    assert np.all(np.diff(g[640:640 + 80]) > 0)


def test_collate_pads_activity_with_zeros():
    a, _, _ = _mix(("sparse", 5, 10))
    b, _, _ = _mix(None)
    b = {**b, "n_frames": 40, "pad_frames": 40}
    for k in ("mixture", "target", "interference"):
        b[k] = b[k][:40 * 640]
    b["visual"], b["activity"] = b["visual"][:40], b["activity"][:40]
    batch = collate_examples([a, b])
    assert batch.activity.shape == (2, 75)
    assert batch.activity[0].sum() == 5 and batch.activity[1].sum() == 40


def test_dynamic_mixing_draws_absent_and_sparse_with_their_probabilities():
    from avse.data.loaders import make_train_loader
    from avse.data.shards import write_split

    d, rng = tempfile.mkdtemp(), np.random.default_rng(0)
    utts = []
    for s in range(4):
        for u in range(3):
            wav, opening = _utterance(10 * s + u, 3.0)
            utts.append({"__key__": f"id{s}/vid{u}/00001", "flac": wav,
                         "lips.npy": (255 * opening[:, None, None]
                                      * np.ones((1, 88, 88))).astype(np.uint8),
                         "json": {"spk": f"id{s}"}})
    write_split(utts, d, shard_size=6)
    cfg = MixtureConfig(crop_seconds=1.0, conditions={"2mix": 0.5, "absent": 0.25, "sparse": 0.25},
                        sparse_fraction=(0.4, 0.6))
    loader = make_train_loader(d, cfg, batch_size=16, shuffle_buffer=8, epoch_steps=8, seed=3)
    kinds = {"present": 0, "absent": 0, "sparse": 0}
    for batch in loader:
        for i in range(len(batch)):
            act = batch.activity[i]
            target_power = float(batch.target[i].pow(2).mean())
            if act.sum() == 0:
                kinds["absent"] += 1
                assert target_power == 0.0 and float(batch.visual[i].float().max()) == 0.0
            elif act.sum() < 25:
                kinds["sparse"] += 1
                assert 10 <= int(act.sum()) <= 15  # 40-60 % of 25 frames, one span
                assert int(torch.diff(act).abs().sum()) <= 2
            else:
                kinds["present"] += 1
    total = sum(kinds.values())
    assert total == 128
    assert 0.35 < kinds["present"] / total < 0.65
    assert 0.12 < kinds["absent"] / total < 0.38 and 0.12 < kinds["sparse"] / total < 0.38


def test_silent_conditions_are_named_and_validated():
    assert CONDITIONS["absent"].target == "absent" and CONDITIONS["sparse"].num_interferers == 1
    assert MixtureConfig(conditions={"2mix": 1.0, "absent": 0.0}).silent_targets is False
    assert MixtureConfig(conditions={"2mix": 1.0, "absent": 0.1}).silent_targets is True
    with pytest.raises(ValueError, match="sparse_fraction"):
        MixtureConfig(sparse_fraction=(0.0, 0.5))


# ----------------------------------------------------------------------------- the loss
def _signals(b=4, t=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, generator=g), torch.randn(b, t, generator=g)


def test_loss_without_silent_examples_is_todays_loss():
    t, i = _signals()
    est, mids = t + 0.3 * i, [t + i, t + 0.5 * i]
    new = losses.extraction_loss(est, mids, t, t + i, alpha=0.1)
    old = losses.si_sdr_loss_with_intermediate(est, mids, t, alpha=0.1)
    assert torch.equal(new, old)


def test_silent_examples_train_on_their_output_energy():
    t, i = _signals()
    t[1:3] = 0.0
    mix = t + i
    est = (t + 0.3 * i).requires_grad_(True)
    loss = losses.extraction_loss(est, [], t, mix)
    loss.backward()
    assert est.grad[1:3].abs().sum() > 0  # the silent examples get a gradient
    energy = losses.silent_energy_db(est.detach(), mix)
    expected = (-losses.si_sdr(est.detach(), t)[[0, 3]].sum() + energy[1:3].sum()) / 4
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(energy[1]) == pytest.approx(10 * np.log10(0.09 + 1e-4), abs=0.05)
    # silent="none": SI-SDR everywhere, a constant without gradient on the silent rows
    est.grad = None
    losses.extraction_loss(est, [], t, mix, silent="none").backward()
    assert est.grad[1:3].abs().sum() == 0


def test_energy_floor_stops_the_push():
    """d loss / d log(output gain): ~20 dB per decade above the floor, ~0 far below it."""
    t, i = _signals()
    t[:] = 0.0
    slopes = {}
    for gain in (0.1, 1e-4):
        log_gain = torch.tensor(np.log(gain), requires_grad=True)
        loss = losses.extraction_loss(torch.exp(log_gain) * i, [], t, i, energy_floor_db=-40.0)
        loss.backward()
        slopes[gain] = float(log_gain.grad) * np.log(10)  # dB per decade of gain
    assert float(loss.detach()) == pytest.approx(-40.0, abs=0.05)  # output 80 dB down: the floor
    assert slopes[0.1] == pytest.approx(20.0, rel=0.02) and abs(slopes[1e-4]) < 0.01


def test_aux_losses_leave_out_the_masked_examples():
    logits = torch.randn(4, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    mask = torch.tensor([True, False, True, False])
    masked = losses.aux_loss("cross_entropy", logits, labels, mask)
    assert torch.isclose(masked, losses.aux_loss("cross_entropy", logits[[0, 2]], labels[[0, 2]]))
    none = losses.aux_loss("cross_entropy", [logits, logits], labels, torch.zeros(4, dtype=torch.bool))
    assert float(none.detach()) == 0.0
    none.backward()  # the graph is kept
    assert float(losses.aux_loss("bce", torch.zeros(2, 3), torch.ones(2, 3))) == pytest.approx(
        np.log(2), rel=1e-6)


# ----------------------------------------------------------------------------- the head
def _model(**head):
    torch.manual_seed(0)
    return AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 16},
                     {"type": "cnn", "out_dim": 16},
                     {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 2,
                      "num_repeats": 1}, activity_head=head or True)


def test_activity_head_does_not_train_the_separator():
    model = _model(hidden=16)
    mix, vis = torch.randn(2, 6400), torch.randint(0, 255, (2, 10, 88, 88), dtype=torch.uint8)
    out = model(mix, vis)
    assert model.has_activity_head and out.aux["activity"].shape == (2, 10)
    out.aux["activity"].sum().backward()
    head = {n for n, p in model.named_parameters() if n.startswith("activity_head.")}
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and grads <= head


def test_activity_head_learns_where_the_target_speaks():
    """A few hundred steps on random signals: the logits follow the activity (the energy of
    the estimate against the mixture's tells it)."""
    torch.manual_seed(0)
    model = _model(hidden=16)
    opt = torch.optim.Adam(model.activity_head.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(150):
        act = (torch.rand(4, 1, generator=g) < 0.5).float().repeat(1, 10)
        act[:, 5:] = 1 - act[:, 5:]
        mix = torch.randn(4, 6400, generator=g) * (0.1 + act.repeat_interleave(640, 1))
        vis = torch.randint(0, 255, (4, 10, 88, 88), dtype=torch.uint8, generator=g)
        loss = losses.aux_loss("bce", model(mix, vis).aux["activity"], act)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.3
