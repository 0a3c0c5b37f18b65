"""Causal AV-DPRNN (issue 14): the separator's masks before frame t do not depend on the inputs
after t, also through ``AVSEModel(causal=True)``; ``causal=False`` is the reference model."""
import os

import pytest
import torch

from avse.models import AVSEModel
from avse.models.separators.dprnn import DPRNNSeparator

SPF = 640  # samples per video frame (16 kHz, 25 fps)
N, DV = 12, 6


def small(causal: bool = True, seed: int = 0, **kw) -> DPRNNSeparator:
    torch.manual_seed(seed)
    spec = dict(in_dim=N, visual_dim=DV, bottleneck=8, hidden=8, chunk_size=6, num_layers=2)
    return DPRNNSeparator(**{**spec, **kw}, causal=causal).eval()


def feats_vis(length: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, N, length, generator=g), torch.randn(2, DV, length, generator=g)


def test_causal_parts():
    sep = small()
    block = sep.blocks[0]
    assert not block.intra_rnn.bidirectional and not block.inter_rnn.bidirectional
    assert isinstance(block.intra_norm, torch.nn.LayerNorm)
    assert type(sep.norm).__name__ == "ChannelNorm" and sep.fusion.align == "hold"
    ref = small(causal=False)
    assert ref.blocks[0].intra_rnn.bidirectional and type(ref.norm).__name__ == "GroupNorm"
    assert "causal" not in repr(ref) and not ref.causal


@torch.no_grad()
@pytest.mark.parametrize("padding", ["reference", "minimal"])
def test_separator_masks_before_t_ignore_later_inputs(padding):
    sep = small(padding=padding, fusion="film")
    feats, vis = feats_vis(41)
    ref = sep(feats, vis, return_intermediate=True).masks
    g = torch.Generator().manual_seed(3)
    for t in (0, 1, 5, 6, 17, 40):
        f2, v2 = feats.clone(), vis.clone()
        f2[..., t:] = torch.rand(f2[..., t:].shape, generator=g)
        v2[..., t:] = torch.randn(v2[..., t:].shape, generator=g)
        out = sep(f2, v2, return_intermediate=True).masks
        for a, b in zip(ref, out):
            assert torch.equal(a[..., :t], b[..., :t]), t
        assert (out[-1][..., t:] - ref[-1][..., t:]).abs().max() > 1e-4


@torch.no_grad()
def test_non_causal_separator_looks_ahead():
    sep = small(causal=False)
    feats, vis = feats_vis(41)
    f2 = feats.clone()
    f2[..., 30:] += 1.0
    diff = sep(f2, vis).masks[-1][..., :20] - sep(feats, vis).masks[-1][..., :20]
    assert diff.abs().max() > 1e-5


def test_built_fusion_must_be_causal():
    from avse.models.fusion import ConcatFusion

    with pytest.raises(ValueError, match="not causal"):
        small(fusion=ConcatFusion(audio_dim=8, visual_dim=DV))
    assert small(fusion=ConcatFusion(audio_dim=8, visual_dim=DV, align="hold")).causal


def causal_model(seed: int = 0, layers: int = 2) -> AVSEModel:
    torch.manual_seed(seed)
    return AVSEModel({"type": "conv", "out_channels": N, "kernel_size": 16},
                     {"type": "embedding", "out_dim": 8, "hidden": 8, "num_blocks": 1,
                      "norm": "cln"},
                     {"type": "dprnn", "bottleneck": 8, "hidden": 8, "chunk_size": 8,
                      "num_layers": layers},
                     fusion={"type": "concat", "align": "linear"}, causal=True).eval()


@torch.no_grad()
def test_causal_model_output_before_t_minus_latency_is_unchanged():
    model = causal_model()
    assert model.separator.causal and model.latency_samples() == 16
    g = torch.Generator().manual_seed(5)
    mixture, visual = torch.randn(2, 6 * SPF, generator=g), torch.randn(2, 6, 512, generator=g)
    ref = model(mixture, visual).estimate
    for t in (SPF, 3 * SPF + 77, 5 * SPF + 3):
        mix2, vis2 = mixture.clone(), visual.clone()
        mix2[:, t:] += torch.randn(mix2[:, t:].shape, generator=g)
        vis2[:, -(-t // SPF):] = torch.randn(vis2[:, -(-t // SPF):].shape, generator=g)
        out = model(mix2, vis2).estimate
        cut = t - model.latency_samples()
        assert torch.allclose(out[:, :cut], ref[:, :cut], atol=1e-6, rtol=0), t
        assert (out[:, t:] - ref[:, t:]).abs().max() > 1e-3


@torch.no_grad()
def test_dual_path_chunking_exports_with_a_dynamic_length():
    """torch.export keeps the chunk count symbolic: the program of the causal model (reference
    chunking) runs at other lengths and batch sizes and gives the model's output."""
    from avse.export import example_inputs, export_program

    model = causal_model(layers=1)
    program = export_program(model, seconds=0.2).module()
    for seconds, batch in ((0.12, 1), (0.6, 2)):
        mixture, visual = example_inputs(model, seconds, batch=batch, seed=4)
        ref = model(mixture, visual).estimate
        assert (program(mixture, visual) - ref).abs().max() < 1e-5


def test_chunk_counts_in_closed_form():
    """The one-floor forms of S (export-friendly) are the reference's and ceil(L / hop) + 1."""
    from avse.models.separators.dual_path import num_chunks, reference_gap

    for k in (2, 10, 100):
        for length in range(0, 400):
            assert num_chunks(length, k) == (length + reference_gap(length, k) + k // 2) // (k // 2)
            assert num_chunks(length, k, "minimal") == -(-length // (k // 2)) + 1


def stream(stepper, feats, vis, sizes, batch=2):
    """The stepper's masks over the frames, in blocks of ``sizes`` (cycled)."""
    state, out, pos, i = stepper.init_state(batch), [], 0, 0
    while pos < feats.shape[-1]:
        n = sizes[i % len(sizes)]
        i += 1
        mask, state = stepper.step(state, feats[..., pos:pos + n], vis[..., pos:pos + n])
        out.append(mask)
        pos += n
    assert state["frames"].tolist() == [feats.shape[-1]] * feats.shape[0]
    return torch.cat(out, dim=-1)


@torch.no_grad()
@pytest.mark.parametrize("rnn_type,fusion,chunk", [("LSTM", "concat", 16), ("GRU", "film", 6),
                                                   ("LSTM", {"type": "concat", "out_dim": 6}, 8)])
def test_stepper_masks_equal_the_offline_causal_masks(rnn_type, fusion, chunk):
    from avse.streaming.registry import stepper_for

    sep = small(rnn_type=rnn_type, fusion=fusion, chunk_size=chunk, num_layers=3)
    stepper = stepper_for(sep)
    feats, vis = feats_vis(123)
    ref = sep(feats, vis).masks[-1]
    for sizes in ([1], [7], [8], [50], [123], [3, 1, 20, 2, 9]):  # h = 8, 3, 4: runs cut
        out = stream(stepper, feats, vis, sizes)
        assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5, sizes
    stepper.fixed_graph = True  # the form torch.export traces: frame by frame, no branching
    for sizes in ([1], [8], [3, 1, 20, 2, 9]):
        assert (stream(stepper, feats, vis, sizes) - ref).abs().max() < 1e-5, sizes


@torch.no_grad()
def test_stepper_leaves_its_inputs_and_state_unchanged():
    from avse.streaming.dprnn import DPRNNStepper

    stepper = DPRNNStepper(small())
    state = stepper.init_state(2)
    assert set(state) == {"frames", "intra_h", "intra_c", "inter_h", "inter_c"}
    assert all(not v.any() for v in state.values())  # zeros at start (the protocol's rule)
    # batch first: [B, R, 2, h, H] and [B, R, 2, H]
    assert state["inter_h"].shape == (2, 2, 2, 3, 8) and state["intra_h"].shape == (2, 2, 2, 8)
    assert state["frames"].shape == (2,)
    copies = {k: v.clone() for k, v in state.items()}
    feats, vis = feats_vis(5)
    f0, v0 = feats.clone(), vis.clone()
    _, new = stepper.step(state, feats, vis)
    assert all(torch.equal(state[k], copies[k]) for k in state)
    assert torch.equal(feats, f0) and torch.equal(vis, v0)
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in state.items()}


def test_stepper_refuses_a_non_causal_separator():
    from avse.streaming.registry import stepper_for

    with pytest.raises(ValueError, match="causal=False"):
        stepper_for(small(causal=False))


@torch.no_grad()
def test_causal_model_streams_as_offline():
    """Through StreamingModel: the encoder, the held visual stream, this stepper, the decoder."""
    from avse.streaming import StreamingModel

    model = causal_model()
    g = torch.Generator().manual_seed(9)
    mixture, visual = torch.randn(1, 3 * SPF, generator=g), torch.randn(1, 3, 512, generator=g)
    ref = model(mixture, visual).estimate
    stream_ = StreamingModel(model)
    outs = [stream_.push(mixture[:, :700], visual[:, :2]), stream_.push(mixture[:, 700:1280]),
            stream_.push(mixture[:, 1280:1290], visual[:, 2:]), stream_.push(mixture[:, 1290:]),
            stream_.flush()]  # each video frame pushed by its first sample
    out = torch.cat(outs, dim=-1)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5


EGS = os.path.join(os.path.dirname(__file__), "..", "..", "egs")


def _diff(a: str, b: str):
    """(removed, added) lines of egs/``b`` against egs/``a`` (stripped, comments kept)."""
    import difflib

    def lines(name):
        with open(os.path.join(EGS, name)) as f:
            text = f.read().splitlines()
        return text[next(i for i, x in enumerate(text) if not x.startswith("#")):]

    diff = [d for d in difflib.ndiff(lines(a), lines(b)) if d[:2] in ("- ", "+ ")]
    return ([d[2:].strip() for d in diff if d[0] == "-"],
            [d[2:].strip() for d in diff if d[0] == "+"])


@pytest.mark.parametrize("corpus", ["voxceleb2", "lrs2"])
def test_causal_yamls_are_the_dprnn_ones_with_causal_lines(corpus, tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    removed, added = _diff("models/dprnn.yaml", "models/dprnn_causal.yaml")
    assert removed == [] and added == ["norm: cln  # causal", "causal: True  # causal"]
    removed, added = _diff(f"{corpus}/hparams/dprnn.yaml", f"{corpus}/hparams/dprnn_causal.yaml")
    assert all(line.startswith(("experiment_name:", "# The architecture", "arch: !include"))
               for line in removed), removed
    assert all("causal" in line for line in added), added
    with open(os.path.join(EGS, corpus, "hparams", "dprnn_causal.yaml")) as f:
        hp = load_hyperpyyaml(f, {"data_folder": str(tmp_path), "output_folder": str(tmp_path)})
    model = hp["model"]
    assert model.causal and model.separator.causal and model.latency_ms() == 2.5
    assert hp["mixture_config"].normalise is None and hp["eval_mixture_config"].normalise is None
    if corpus == "voxceleb2":  # one training step of the full-size model on 0.2 s
        assert sum(p.numel() for p in model.parameters()) == 2_829_062
        torch.manual_seed(0)
        out = model.train()(torch.randn(2, 3200), torch.randn(2, 5, 512), return_intermediate=True)
        assert len(out.intermediate) == 5
        loss = sum(e.pow(2).mean() for e in [out.estimate, *out.intermediate])
        loss.backward()
        opt = hp["opt_class"](model.parameters())
        before = model.separator.blocks[0].intra_rnn.weight_hh_l0.detach().clone()
        opt.step()
        assert not torch.equal(before, model.separator.blocks[0].intra_rnn.weight_hh_l0)
