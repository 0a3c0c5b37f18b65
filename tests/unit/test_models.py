"""Model slot tests, generated from the registry: a plugin registered later is tested too.

Small per-plugin kwargs keep them fast on CPU; a plugin without an entry is tried with
its defaults.
"""
import pytest
import torch
from torch import nn

from avse.models import registry
from avse.models import AVSEModel
from avse.models.base import Separator, VisualEncoder, build_fusion
from avse.models.separators.dual_path import to_chunks

SMALL_AUDIO = {"conv": {"out_channels": 32, "kernel_size": 40},
               "stft": {"n_fft": 128, "hop": 32, "win": 128}}
SMALL_SEP = {"dprnn": {"bottleneck": 16, "hidden": 16, "chunk_size": 20, "num_layers": 3},
             "tcn": {"bottleneck": 16, "hidden": 32, "num_blocks": 3, "num_repeats": 2,
                     "intermediate_heads": True},
             "seanet": {"bottleneck": 16, "hidden": 16, "chunk_size": 20, "num_layers": 3},
             "avsep": {"d_model": 16, "num_heads": 2, "d_ffn": 32, "intra_layers": 1,
                       "inter_layers": 2, "num_blocks": 2, "chunk_size": 20, "max_len": 40},
             "muse": {"bottleneck": 16, "hidden": 32, "num_blocks": 2, "num_repeats": 2,
                      "num_speakers": 10, "speaker_hidden": 16},
             "tfgridnet": {"emb_dim": 8, "hidden": 8, "num_blocks": 2, "num_heads": 2,
                           "qk_dim": 16, "intermediate_heads": True}}
# estimates with return_intermediate=True and SMALL_SEP
N_ESTIMATES = {"dprnn": 3, "tcn": 2, "seanet": 3, "avsep": 1, "tfgridnet": 2}
LENGTHS = (16000, 16001, 15997, 12345, 401, 23)
VISUAL_DIM = 12


class TinyVisual(VisualEncoder):
    """Embedding ``[B, Tv, 512]`` -> ``[B, Dv, Tv]`` by one linear map (keeps tests fast)."""

    input_kind = "emb"

    def __init__(self, out_dim=VISUAL_DIM):
        super().__init__()
        self.out_dim = out_dim
        self.proj = nn.Linear(512, out_dim)

    def forward(self, emb):
        return self.proj(emb).transpose(1, 2)


def small_model(separator, fusion="concat", **sep_kwargs):
    spec = {"type": separator, **SMALL_SEP.get(separator, {}), **sep_kwargs}
    torch.manual_seed(0)
    return AVSEModel({"type": "conv", **SMALL_AUDIO["conv"]}, TinyVisual(), spec, fusion=fusion)


def inputs(batch=2, seconds=1.0):
    gen = torch.Generator().manual_seed(1)
    mix = torch.randn(batch, int(16000 * seconds), generator=gen)
    emb = torch.randn(batch, int(25 * seconds), 512, generator=gen)
    return mix, emb


def assert_all_grads_finite(module):
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def aux_tensors(out):
    """Every floating tensor of ``out.aux`` (tensors and lists of tensors)."""
    found = []
    for value in out.aux.values():
        found.extend(value if isinstance(value, (list, tuple)) else [value])
    return [t for t in found if torch.is_tensor(t) and t.is_floating_point()]


def waveforms(out):
    """Every waveform of a ModelOutput: estimate, intermediates, waveform-shaped aux outputs."""
    return [out.estimate, *out.intermediate,
            *[t for t in aux_tensors(out) if t.shape == out.estimate.shape]]


def test_every_slot_has_plugins():
    for kind in ("audio_encoder", "decoder", "fusion", "separator"):
        assert registry.known(kind), kind
    for name in registry.known("audio_encoder"):
        assert name in registry.known("decoder"), f"audio encoder {name!r} has no decoder"


# ---------------------------------------------------------------- audio encoders / decoders
@pytest.mark.parametrize("name", registry.known("audio_encoder"))
def test_audio_encoder_decoder_shapes(name):
    enc = registry.build("audio_encoder", name, **SMALL_AUDIO.get(name, {}))
    dec = registry.build("decoder", name, **enc.decoder_kwargs())
    for length in LENGTHS:
        wav = torch.randn(2, length)
        feats = enc(wav)
        assert feats.dim() == 3 and feats.shape[:2] == (2, enc.out_dim), feats.shape
        assert 1 <= feats.shape[-1] <= length // enc.stride + 2
        out = dec(feats, length)
        assert out.shape == (2, length)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", registry.known("audio_encoder"))
def test_audio_encoder_backward(name):
    enc = registry.build("audio_encoder", name, **SMALL_AUDIO.get(name, {}))
    dec = registry.build("decoder", name, **enc.decoder_kwargs())
    wav = torch.randn(2, 3001, requires_grad=True)
    dec(enc(wav), 3001).square().mean().backward()
    assert torch.isfinite(wav.grad).all()
    assert_all_grads_finite(enc)
    assert_all_grads_finite(dec)


@pytest.mark.parametrize("kwargs", [{}, {"n_fft": 256, "hop": 64, "win": 200}])
def test_stft_perfect_reconstruction(kwargs):
    enc = registry.build("audio_encoder", "stft", **kwargs)
    dec = registry.build("decoder", "stft", **enc.decoder_kwargs())
    assert enc.out_dim == 2 * (enc.n_fft // 2 + 1)
    for length in LENGTHS:
        wav = torch.randn(3, length)
        feats = enc(wav)
        assert feats.shape == (3, enc.out_dim, length // enc.stride + 1)
        assert (dec(feats, length) - wav).abs().max() < 1e-4


def test_conv_encoder_covers_the_last_samples():
    enc = registry.build("audio_encoder", "conv", out_channels=16, kernel_size=40)
    assert enc.stride == 20 and enc.out_dim == 16
    nn.init.uniform_(enc.conv.weight, 0.1, 1.0)  # positive basis: a positive sample shows
    for length in (64000, 64007, 1000, 30):
        wav = torch.zeros(1, length)
        wav[0, -1] = 1.0
        feats = enc(wav)
        assert feats.shape[-1] == enc.num_frames(length)
        assert feats[..., -1].abs().sum() > 0, length
    assert enc.num_frames(64000) == 3199  # as the reference (no padding needed there)


def test_conv_decoder_is_overlap_add_of_a_linear_basis():
    dec = registry.build("decoder", "conv", in_channels=8, kernel_size=8)
    feats = torch.randn(1, 8, 5)
    basis = dec.deconv.weight[:, 0, :]  # [N, L]
    frames = feats[0].t() @ basis  # [5, 8]
    expect = torch.zeros(4 * 5 + 4)
    for k in range(5):
        expect[4 * k:4 * k + 8] += frames[k]
    torch.testing.assert_close(dec(feats, 24)[0], expect)


# ---------------------------------------------------------------- fusion
@pytest.mark.parametrize("name", registry.known("fusion"))
def test_fusion_shapes_and_backward(name):
    fusion = build_fusion(name, audio_dim=24, visual_dim=16)
    audio = torch.randn(2, 24, 97, requires_grad=True)
    visual = torch.randn(2, 16, 10, requires_grad=True)
    out = fusion(audio, visual)
    assert out.shape == (2, fusion.out_dim, 97)
    out.square().mean().backward()
    assert torch.isfinite(audio.grad).all() and torch.isfinite(visual.grad).all()
    assert_all_grads_finite(fusion)


@pytest.mark.parametrize("name", registry.known("fusion"))
def test_fusion_uses_the_visual_stream(name):
    fusion = build_fusion(name, audio_dim=24, visual_dim=16)
    with torch.no_grad():
        for p in fusion.parameters():  # away from identity inits (FiLM starts as identity)
            p.add_(0.2 * torch.randn_like(p))
        audio = torch.randn(2, 24, 60)
        visual = torch.randn(2, 16, 3)
        a = fusion(audio, visual)
        b = fusion(audio, visual + torch.randn_like(visual))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", ["concat", "film"])
def test_nearest_fusion_aligns_video_frames(name):
    """Audio frame l only sees video frame floor(l * Tv / L)."""
    fusion = build_fusion(name, audio_dim=8, visual_dim=4)
    with torch.no_grad():
        for p in fusion.parameters():
            p.add_(0.2 * torch.randn_like(p))
        audio, visual = torch.randn(1, 8, 12), torch.randn(1, 4, 3)
        changed = visual.clone()
        changed[..., 1] += 1.0  # video frame 1 spans audio frames 4..7
        diff = (fusion(audio, visual) - fusion(audio, changed)).abs().sum(1)[0]
    assert (diff[4:8] > 0).all() and (diff[:4] == 0).all() and (diff[8:] == 0).all()


def test_concat_fusion_out_dim():
    fusion = build_fusion({"type": "concat", "out_dim": 7}, audio_dim=24, visual_dim=16)
    assert fusion.out_dim == 7
    assert fusion(torch.randn(2, 24, 30), torch.randn(2, 16, 4)).shape == (2, 7, 30)


def test_unknown_fusion_lists_the_known_ones():
    with pytest.raises(registry.RegistryError) as err:
        build_fusion("nope", audio_dim=4, visual_dim=4)
    for name in registry.known("fusion"):
        assert name in str(err.value)
    with pytest.raises(registry.RegistryError, match="concat"):
        small_model("dprnn", fusion="nope")


# ---------------------------------------------------------------- separators
@pytest.mark.parametrize("name", registry.known("separator"))
def test_separator_forward_backward(name):
    model = small_model(name)
    assert isinstance(model.separator, Separator)
    mix, emb = inputs()
    out = model(mix, emb, return_intermediate=True)
    assert out.estimate.shape == mix.shape
    if name in N_ESTIMATES:
        assert len(out.intermediate) + 1 == N_ESTIMATES[name]
    for wav in waveforms(out):
        assert wav.shape == mix.shape and torch.isfinite(wav).all()
    # every output (waveforms and e.g. speaker logits) takes part, so every head gets a gradient
    sum(t.square().mean() for t in waveforms(out) + [t for t in aux_tensors(out)
                                                      if t.shape != out.estimate.shape]).backward()
    assert_all_grads_finite(model)


@pytest.mark.parametrize("name", registry.known("separator"))
def test_separator_final_estimate_does_not_depend_on_intermediates(name):
    model = small_model(name).eval()
    mix, emb = inputs(seconds=0.6)
    with torch.no_grad():
        final = model(mix, emb).estimate
        both = model(mix, emb, return_intermediate=True)
    assert torch.equal(final, both.estimate)
    assert not model(mix, emb).intermediate
    if not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout))
               for m in model.modules()):
        with torch.no_grad():
            train_final = model.train()(mix, emb, return_intermediate=True).estimate
        torch.testing.assert_close(train_final, final)


@pytest.mark.parametrize("separator", ["dprnn", "tcn"])
@pytest.mark.parametrize("fusion", registry.known("fusion") + [
    {"type": "concat", "out_dim": 24}, "avse.models.fusion.FiLMFusion"])
def test_fusion_swap_in_separators(separator, fusion):
    model = small_model(separator, fusion=fusion).eval()
    mix, emb = inputs(seconds=0.4)
    with torch.no_grad():
        out = model(mix, emb)
    assert out.estimate.shape == mix.shape and torch.isfinite(out.estimate).all()


def test_dprnn_chunking_round_trip():
    sep = small_model("dprnn").separator
    for length in (1, 9, 10, 11, 95, 100):
        x = torch.randn(2, length, 5)
        chunks = to_chunks(x, sep.chunk_size, padding="minimal")
        assert chunks.shape == (2, -(-length // 10) + 1, 20, 5)
        torch.testing.assert_close(sep._overlap_add(chunks, length), 2 * x)


def test_dprnn_masks_per_layer_and_mask_act():
    model = small_model("dprnn", num_layers=4)
    feats = model.audio_encoder(inputs(seconds=0.3)[0])
    visual = torch.randn(2, VISUAL_DIM, 8)
    with torch.no_grad():
        masks = model.separator(feats, visual, return_intermediate=True).masks
        final = model.separator(feats, visual).masks
    assert len(masks) == 4 and len(final) == 1
    assert all(m.shape == feats.shape and (m >= 0).all() for m in masks)
    sig = small_model("dprnn", mask_act="sigmoid").separator
    with torch.no_grad():
        m = sig(feats, visual).masks[-1]
    assert ((m > 0) & (m < 1)).all()


def test_tcn_intermediate_heads_and_skip():
    feats = torch.rand(2, 32, 150)
    visual = torch.randn(2, VISUAL_DIM, 5)
    with torch.no_grad():
        assert len(small_model("tcn").separator(feats, visual, True).masks) == 2
        plain = small_model("tcn", intermediate_heads=False).separator
        assert len(plain(feats, visual, True).masks) == 1
        skip = small_model("tcn", skip=True, num_repeats=3, fuse_each_repeat=True).separator
        assert len(skip.fusions) == 3
        masks = skip(feats, visual, True).masks
    assert len(masks) == 3 and all(m.shape == feats.shape for m in masks)


def test_tcn_causal():
    with pytest.raises(ValueError, match="causal"):
        small_model("tcn", causal=True)
    sep = small_model("tcn", causal=True, norm="cln", kernel_size=4).separator.eval()
    feats = torch.rand(1, 32, 80)
    visual = torch.randn(1, VISUAL_DIM, 80)  # one video frame per audio frame here
    later = feats.clone()
    later[..., 50:] += torch.rand(1, 32, 30)
    with torch.no_grad():
        a, b = sep(feats, visual).masks[-1], sep(later, visual).masks[-1]
    assert torch.equal(a[..., :50], b[..., :50])
    assert not torch.equal(a[..., 50:], b[..., 50:])


def test_default_av_dprnn_parameter_count():
    """Reference AV-DPRNN: 4.12 M parameters with its 512-d embedding front and V-TCN."""
    visual = "embedding" if "embedding" in registry.known("visual_encoder") else TinyVisual(256)
    model = AVSEModel("conv", visual, "dprnn")
    counts = {slot: sum(p.numel() for p in getattr(model, slot).parameters())
              for slot in ("audio_encoder", "visual_encoder", "separator", "decoder")}
    total = sum(counts.values())
    print(f"default AV-DPRNN ({visual if isinstance(visual, str) else 'tiny visual'}): "
          f"{total / 1e6:.3f} M parameters {counts}")
    assert len(model.separator.blocks) == 6 and model.audio_encoder.stride == 20
    assert counts["separator"] > 2e6
