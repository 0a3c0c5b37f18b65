"""Causal models (issue 14, section 1): perturbing the inputs after time t leaves the output
before t minus the stated latency unchanged; the default (non-causal) model does change; and
``causal=False`` is exactly the model built without the option."""
import pytest
import torch

from avse.models import AVSEModel
from avse.models.base import align_visual
from avse.models.io import build_from_config, read_config, save_model

SPF = 640  # samples per video frame (16 kHz, 25 fps)


def demo_specs(causal_norm: bool):
    """The demo model's parts (conv / cnn / concat / tcn) at small widths."""
    norm = {"norm": "cln"} if causal_norm else {}
    return dict(
        audio_encoder={"type": "conv", "out_channels": 16, "kernel_size": 32},
        visual_encoder={"type": "cnn", "out_dim": 8, "hidden": 8, "channels": [4, 8],
                        "num_blocks": 2, **norm},
        separator={"type": "tcn", "bottleneck": 8, "hidden": 16, "num_blocks": 3,
                   "num_repeats": 2, **norm},
        fusion="concat")


def build(causal: bool, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return AVSEModel(**demo_specs(causal), causal=causal, **extra).eval()


def inputs(frames: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    mixture = torch.randn(2, frames * SPF, generator=g)
    visual = torch.randint(0, 256, (2, frames, 88, 88), generator=g, dtype=torch.uint8)
    return mixture, visual


def perturbed_after(mixture, visual, t: int):
    """Both inputs changed from sample t on (the video frames that start at or after t)."""
    g = torch.Generator().manual_seed(7)
    mix2, vis2 = mixture.clone(), visual.clone()
    mix2[:, t:] += torch.randn(mix2[:, t:].shape, generator=g)
    first = -(-t // SPF)
    vis2[:, first:] = torch.randint(0, 256, vis2[:, first:].shape, generator=g, dtype=torch.uint8)
    return mix2, vis2


@torch.no_grad()
def test_causal_demo_model_output_before_t_minus_latency_is_unchanged():
    model = build(causal=True)
    assert model.latency_samples() == 32 and model.latency_ms() == 2.0
    mixture, visual = inputs()
    ref = model(mixture, visual).estimate
    for t in (2 * SPF, 4 * SPF + 123, 7 * SPF + 5):
        out = model(*perturbed_after(mixture, visual, t)).estimate
        cut = t - model.latency_samples()
        assert torch.allclose(out[:, :cut], ref[:, :cut], atol=1e-6, rtol=0), t
        assert (out[:, t:] - ref[:, t:]).abs().max() > 1e-3  # the perturbation does reach it


@torch.no_grad()
def test_non_causal_default_model_looks_ahead():
    model = build(causal=False)  # the demo's parts as the demo uses them (gLN, centred convs)
    assert model.latency_ms() is None
    mixture, visual = inputs()
    t = 5 * SPF
    ref = model(mixture, visual).estimate
    out = model(*perturbed_after(mixture, visual, t)).estimate
    assert (out[:, :t - SPF] - ref[:, :t - SPF]).abs().max() > 1e-4


@torch.no_grad()
def test_only_the_visual_stream_after_t_changes_nothing_before_t():
    """The visual path alone (CNN front-end, V-TCN, hold alignment) is causal: a video frame
    starting at t reaches the output from t - latency on (the audio frame whose last sample is
    t holds it, and its window starts K - 1 samples earlier), not before."""
    model = build(causal=True)
    mixture, visual = inputs()
    t = 6 * SPF
    ref = model(mixture, visual).estimate
    _, vis2 = perturbed_after(mixture, visual, t)
    out = model(mixture, vis2).estimate
    cut = t - model.latency_samples()
    assert torch.allclose(out[:, :cut], ref[:, :cut], atol=1e-6, rtol=0)
    assert (out[:, cut:] - ref[:, cut:]).abs().max() > 1e-4


@torch.no_grad()
def test_causal_false_is_the_model_without_the_option():
    specs = demo_specs(causal_norm=False)
    torch.manual_seed(0)
    plain = AVSEModel(**specs, activity_head={"hidden": 8}).eval()
    torch.manual_seed(0)
    flagged = AVSEModel(**specs, activity_head={"hidden": 8}, causal=False).eval()
    assert plain.config == flagged.config and "causal" not in flagged.config
    a, b = plain.state_dict(), flagged.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert repr(plain) == repr(flagged)
    mixture, visual = inputs(frames=4)
    assert torch.equal(plain(mixture, visual).estimate, flagged(mixture, visual).estimate)


def test_causal_option_is_refused_where_a_part_has_no_causal_form():
    specs = demo_specs(causal_norm=True)
    with pytest.raises(ValueError, match="dlr_resnet18"):  # its 3-D stem looks ahead
        AVSEModel(**{**specs, "visual_encoder": {"type": "dlr_resnet18"}}, causal=True)
    with pytest.raises(ValueError, match="activity head"):
        AVSEModel(**specs, activity_head=True, causal=True)
    with pytest.raises(ValueError, match="look-ahead"):
        AVSEModel(**{**specs, "audio_encoder": {"type": "stft", "n_fft": 64, "hop": 16, "win": 64}}, causal=True)
    with pytest.raises(ValueError, match="gln"):  # gLN normalises over the whole utterance
        AVSEModel(**demo_specs(causal_norm=False), causal=True)


def test_hold_alignment_never_looks_ahead():
    v = torch.arange(5.0).view(1, 1, 5)
    for length in (5, 7, 123, 200, 201):
        idx = align_visual(v, length, "hold")[0, 0]
        l = torch.arange(length)
        # audio frame l starts at l / length of the clip; video frame k at k / 5
        assert torch.all(idx * length <= l * 5) and torch.all((idx + 1) * length > l * 5)


def test_causal_framing_of_the_conv_encoder_and_decoder():
    """Causal: K - S zeros on the left, ceil(T / S) frames, frame j covers [jS - (K-S), jS + S);
    the decoder drops the K - S samples before time 0; K % S != 0 is refused."""
    from avse.models.audio_encoders import ConvEncoder
    from avse.models.decoders import ConvDecoder

    torch.manual_seed(0)
    enc = ConvEncoder(out_channels=6, kernel_size=32, stride=8, causal=True)
    dec = ConvDecoder(**enc.decoder_kwargs())
    assert dec.causal and "causal" not in ConvEncoder(6, 32).decoder_kwargs()
    wav = torch.randn(2, 1001)
    feats = enc(wav)
    assert feats.shape[-1] == enc.num_frames(1001) == 126  # ceil(1001 / 8)
    padded = torch.nn.functional.pad(wav, (24, 126 * 8 - 1001))
    for j in (0, 3, 125):  # frame j is the window of samples [8j - 24, 8j + 8)
        window = padded[:, 8 * j:8 * j + 32]
        assert torch.allclose(feats[:, :, j], torch.relu(window @ enc.conv.weight[:, 0].T), atol=1e-5)
    out = dec(feats, 1001)
    full = dec.deconv(feats).squeeze(1)
    assert out.shape == (2, 1001) and torch.equal(out, full[:, 24:24 + 1001])
    for cls, kw in ((ConvEncoder, {"out_channels": 4}), (ConvDecoder, {"in_channels": 4})):
        with pytest.raises(ValueError, match="kernel_size % stride"):
            cls(**kw, kernel_size=30, stride=8, causal=True)
        cls(**kw, kernel_size=30, stride=8)  # non-causal: any stride as before


@torch.no_grad()
def test_causal_model_holds_the_latest_video_frame_per_audio_frame():
    """At a length that is not a multiple of 640, the separator gets one visual column per
    audio frame: video frame min(floor((jS + S - 1) / 640), Tv - 1) for audio frame j."""
    from avse.models.base import hold_index

    model = build(causal=True)
    mixture, visual = inputs(frames=4)
    length = 3 * SPF + 123  # 4 video frames, the last one partly covered
    mixture = mixture[:, :length]
    seen = {}
    forward = model.separator.forward

    def spy(feats, vis, **kw):
        seen["feats"], seen["vis"] = feats, vis
        return forward(feats, vis, **kw)

    model.separator.forward = spy
    model(mixture, visual)
    stride = model.audio_encoder.stride
    frames = seen["feats"].shape[-1]
    assert frames == -(-length // stride) and seen["vis"].shape[-1] == frames
    vfeats = model.visual_encoder(visual)
    idx = hold_index(frames, stride, 4)
    assert torch.equal(seen["vis"], vfeats[..., idx])
    last = torch.arange(frames) * stride + stride - 1  # each audio frame's last sample
    assert torch.all(idx * SPF <= last)  # started at or before it ...
    assert torch.all(((idx + 1) * SPF > last) | (idx == 3))  # ... the latest one (or the last)
    assert idx.tolist().count(0) == SPF // stride and idx[-1] == 3
    assert hold_index(3, 640, 10).tolist() == [0, 1, 2]


def test_resnet18_stem_causal_pads_left_only():
    from avse.models.frontend_nets import ResNet18Frontend

    torch.manual_seed(0)
    fe = ResNet18Frontend(causal=True).eval()
    assert fe.config["causal"] is True and "causal" not in ResNet18Frontend().config
    x = torch.randint(0, 256, (1, 6, 88, 88), dtype=torch.uint8)
    x2 = x.clone()
    x2[:, 3:] = 0
    with torch.no_grad():
        a, b = fe.frontend3D(fe.to_float(x).unsqueeze(1)), fe.frontend3D(fe.to_float(x2).unsqueeze(1))
    assert a.shape[2] == 6 and torch.equal(a[:, :, :3], b[:, :, :3])


def test_model_yaml_states_the_latency_and_rebuilds(tmp_path):
    causal, plain = build(causal=True), build(causal=False)
    save_model(causal, str(tmp_path / "c"))
    save_model(plain, str(tmp_path / "p"))
    assert read_config(str(tmp_path / "c"))["latency_ms"] == 2.0
    assert read_config(str(tmp_path / "p"))["latency_ms"] is None
    rebuilt = build_from_config(str(tmp_path / "c"))
    assert rebuilt.causal and rebuilt.latency_ms() == 2.0
    assert list(rebuilt.state_dict()) == list(causal.state_dict())


def test_demo_causal_yaml_is_the_demo_with_causal_parts(tmp_path):
    """demo_causal.yaml is a copy of demo.yaml: only the causal lines (the mixtures are not
    normalised), the output folder and the activity head (with its loss) differ; its model is
    causal with 2 ms latency."""
    import difflib
    import os

    from hyperpyyaml import load_hyperpyyaml

    folder = os.path.join(os.path.dirname(__file__), "..", "..", "egs", "synthetic", "hparams")

    def body(name):  # the lines after the header comment
        lines = open(os.path.join(folder, name)).read().splitlines()
        return lines[next(i for i, x in enumerate(lines) if not x.startswith("#")):]

    diff = [d for d in difflib.ndiff(body("demo.yaml"), body("demo_causal.yaml"))
            if d[:2] in ("- ", "+ ")]
    removed = [d[2:].strip() for d in diff if d.startswith("- ")]
    added = [d[2:].strip() for d in diff if d.startswith("+ ")]
    assert all("causal" in line for line in added), added
    assert all(line.startswith(("output_folder:", "activity_head:", "hidden: 64", "aux_losses:",
                                "activity: {")) for line in removed), removed
    with open(os.path.join(folder, "demo_causal.yaml")) as f:
        hp = load_hyperpyyaml(f, {"data_folder": str(tmp_path), "output_folder": str(tmp_path)})
    model = hp["model"]
    assert model.causal and model.latency_ms() == 2.0 and not model.has_activity_head
    assert hp["mixture_config"].normalise is None and hp["eval_mixture_config"].normalise is None
