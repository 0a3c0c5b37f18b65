"""Causal attention (issue 14): the cross-attention fusion and the AV-Sepformer separator with
``causal=True`` look at no later frame; ``causal=False`` is the module without the option."""
import torch

from avse.models.fusion import CrossAttentionFusion


def _fusion(seed: int = 0, **kw) -> CrossAttentionFusion:
    torch.manual_seed(seed)
    return CrossAttentionFusion(audio_dim=8, visual_dim=6, num_heads=2, **kw).eval()


def _later_changed(x: torch.Tensor, t: int, seed: int = 5) -> torch.Tensor:
    """``x [B, C, T]`` with its frames from ``t`` on replaced."""
    g = torch.Generator().manual_seed(seed)
    y = x.clone()
    y[..., t:] = torch.randn(y[..., t:].shape, generator=g)
    return y


@torch.no_grad()
def test_cross_attention_fusion_causal_with_held_visual():
    """Tv == L (the visual stream held per audio frame): frame j sees video columns <= j."""
    g = torch.Generator().manual_seed(1)
    audio, visual = torch.randn(2, 8, 40, generator=g), torch.randn(2, 6, 40, generator=g)
    for time_bias in (True, False):
        f = _fusion(time_bias=time_bias, causal=True)
        ref = f(audio, visual)
        for t in (1, 17, 39):
            out = f(_later_changed(audio, t), _later_changed(visual, t, seed=6))
            assert torch.allclose(out[..., :t], ref[..., :t], atol=1e-6, rtol=0), (time_bias, t)
            assert (out[..., t:] - ref[..., t:]).abs().max() > 1e-3


@torch.no_grad()
def test_cross_attention_fusion_causal_at_the_video_rate():
    """Tv < L: audio frame j sees the video frames v <= floor(j Tv / L) (align_visual's hold)."""
    g = torch.Generator().manual_seed(2)
    length, frames = 50, 7
    audio, visual = torch.randn(1, 8, length, generator=g), torch.randn(1, 6, frames, generator=g)
    f = _fusion(causal=True)
    ref = f(audio, visual)
    for v in range(1, frames):
        first = -(-v * length // frames)  # the first audio frame that holds video frame v
        out = f(audio, _later_changed(visual, v))
        assert torch.allclose(out[..., :first], ref[..., :first], atol=1e-6, rtol=0), v
        assert (out[..., first] - ref[..., first]).abs().max() > 1e-4, v
    assert torch.all(f.causal_mask(length, frames, ref)[:, 0] == 0)  # never a row of -inf


@torch.no_grad()
def test_cross_attention_fusion_causal_false_is_unchanged():
    g = torch.Generator().manual_seed(3)
    audio, visual = torch.randn(2, 8, 30, generator=g), torch.randn(2, 6, 5, generator=g)
    plain, flagged = _fusion(), _fusion(causal=False)
    a, b = plain.state_dict(), flagged.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(plain(audio, visual), flagged(audio, visual))
    # and the default looks ahead: the last video frame reaches the first audio frames
    out = plain(audio, _later_changed(visual, 4))
    assert (out[..., :5] - plain(audio, visual)[..., :5]).abs().max() > 1e-6
    assert _fusion(causal=True).state_dict().keys() == a.keys()


# ---------------------------------------------------------------- AV-Sepformer
SEP = dict(in_dim=16, visual_dim=8, d_model=16, num_heads=2, d_ffn=32, intra_layers=1,
           inter_layers=2, num_blocks=2, chunk_size=10)
SPF = 640  # samples per video frame


def _sep(seed: int = 0, **kw):
    from avse.models.separators.avsep import AVSepformerSeparator

    torch.manual_seed(seed)
    return AVSepformerSeparator(**SEP, **kw).eval()


@torch.no_grad()
def test_avsep_causal_separator_mask_before_t_ignores_frames_after_t():
    """Within and across chunks (K = 10, so frames of several chunks), with and without a
    (causal) fusion: features and visual columns from frame t on do not reach masks < t."""
    g = torch.Generator().manual_seed(0)
    feats, visual = torch.rand(2, 16, 57, generator=g), torch.randn(2, 8, 57, generator=g)
    for fusion in (None, "cross_attention"):
        sep = _sep(causal=True, fusion=fusion)
        ref = sep(feats, visual).masks[-1]
        for t in (3, 10, 24, 56):
            out = sep(_later_changed(feats, t), _later_changed(visual, t, seed=6)).masks[-1]
            assert torch.equal(out[..., :t], ref[..., :t]), (fusion, t)
            assert (out[..., t:] - ref[..., t:]).abs().max() > 1e-3
    # a visual stream at the video rate is held: frame l sees video frame floor(l Tv / L)
    vid = torch.randn(2, 8, 4, generator=g)
    ref = sep(feats, vid).masks[-1]
    out = sep(feats, _later_changed(vid, 2)).masks[-1]
    first = -(-2 * 57 // 4)
    assert torch.equal(out[..., :first], ref[..., :first])
    assert (out[..., first:] - ref[..., first:]).abs().max() > 1e-4


@torch.no_grad()
def test_avsep_causal_false_is_unchanged_and_looks_ahead():
    g = torch.Generator().manual_seed(1)
    feats, visual = torch.rand(2, 16, 37, generator=g), torch.randn(2, 8, 3, generator=g)
    plain, flagged, causal = _sep(), _sep(causal=False), _sep(causal=True)
    a, b = plain.state_dict(), flagged.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [(k, v.shape) for k, v in causal.state_dict().items()] == [(k, v.shape) for k, v in a.items()]
    ref = plain(feats, visual).masks[-1]
    assert torch.equal(ref, flagged(feats, visual).masks[-1])
    out = plain(_later_changed(feats, 30), visual).masks[-1]
    assert (out[..., :20] - ref[..., :20]).abs().max() > 1e-5  # gLN and attention look ahead


@torch.no_grad()
def test_avsep_in_a_causal_model_output_before_t_minus_latency_is_unchanged():
    from avse.models import AVSEModel

    g = torch.Generator().manual_seed(2)
    mixture, visual = torch.randn(2, 6 * SPF, generator=g), torch.randn(2, 6, 512, generator=g)
    for fusion in ("concat", "cross_attention"):
        torch.manual_seed(0)
        model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 16},
                          {"type": "embedding", "out_dim": 8, "hidden": 8, "num_blocks": 2,
                           "norm": "bn"},
                          {"type": "avsep", **{k: v for k, v in SEP.items()
                                               if k not in ("in_dim", "visual_dim")},
                           "chunk_size": 20}, fusion=fusion, causal=True).eval()
        assert model.separator.causal and model.latency_samples() == 16
        ref = model(mixture, visual).estimate
        for t in (SPF + 5, 3 * SPF, 4 * SPF + 300):
            mix2, vis2 = mixture.clone(), visual.clone()
            mix2[:, t:] += torch.randn(mix2[:, t:].shape, generator=g)
            vis2[:, -(-t // SPF):] = torch.randn(vis2[:, -(-t // SPF):].shape, generator=g)
            out = model(mix2, vis2).estimate
            cut = t - model.latency_samples()
            assert torch.allclose(out[:, :cut], ref[:, :cut], atol=1e-6, rtol=0), (fusion, t)
            assert (out[:, t:] - ref[:, t:]).abs().max() > 1e-3


def test_avsep_causal_yaml_is_avsep_with_causal_parts(tmp_path):
    """egs/voxceleb2/hparams/avsep_causal.yaml: a copy of avsep.yaml whose only differing lines
    are marked causal; its model is causal (1 ms) with avsep's parameters, names and shapes."""
    import difflib
    import os

    from hyperpyyaml import load_hyperpyyaml

    from tests.conftest import REPO

    def lines(*parts):
        with open(os.path.join(REPO, "egs", *parts)) as f:
            return [l for l in f.read().splitlines() if not l.startswith("#")]

    for parts in (("models", "avsep{}.yaml"), ("voxceleb2", "hparams", "avsep{}.yaml")):
        a, b = lines(*parts[:-1], parts[-1].format("")), lines(*parts[:-1], parts[-1].format("_causal"))
        changed = [l for l in difflib.ndiff(a, b) if l[:2] in ("+ ", "- ")]
        assert changed and all("# causal" in l for l in changed if l[:2] == "+ "), changed
    models = {}
    for name in ("avsep", "avsep_causal"):
        with open(os.path.join(REPO, "egs", "voxceleb2", "hparams", f"{name}.yaml")) as f:
            models[name] = load_hyperpyyaml(f, {"data_folder": str(tmp_path / "data"),
                                                "output_folder": str(tmp_path / "exp")})["model"]
    causal, plain = models["avsep_causal"], models["avsep"]
    assert causal.causal and causal.separator.causal and causal.latency_ms() == 1.0
    assert plain.latency_ms() is None and not plain.separator.causal
    shapes = lambda m: [(k, v.shape) for k, v in m.state_dict().items()]
    assert shapes(causal) == shapes(plain)
