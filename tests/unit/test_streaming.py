"""Streaming (issue 14, section 2): a causal model run block by block (any block size, lip
frames as they come) gives the offline output; the fixed-block export step too; non-causal
models are refused; the end of a stream (flush) is defined."""
import pytest
import torch

from avse.models import AVSEModel
from avse.streaming import StreamingModel, StreamStep, VisualStep, stepper_for

SPF = 640  # samples per video frame


def build(visual="cnn", causal=True, seed=0, **sep):
    torch.manual_seed(seed)
    fusion = sep.pop("fusion", "concat")
    norm = {"norm": "cln"} if causal else {}
    if visual == "cnn":
        vis = {"type": "cnn", "out_dim": 8, "hidden": 8, "channels": [4, 8], "num_blocks": 2,
               **norm}
    else:
        vis = {"type": "embedding", "in_dim": 512, "out_dim": 8, "hidden": 16, "num_blocks": 2,
               **norm}
    separator = {"type": "tcn", "bottleneck": 8, "hidden": 16, "num_blocks": 3,
                 "num_repeats": 2, "mask_act": "sigmoid", **norm, **sep}
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32}, vis, separator,
                      fusion=fusion, causal=causal)
    return model.eval()


def inputs(model, length, seed=1):
    g = torch.Generator().manual_seed(seed)
    frames = -(-length // SPF)
    mixture = torch.randn(2, length, generator=g)
    if model.visual_input == "emb":
        return mixture, torch.randn(2, frames, 512, generator=g)
    return mixture, torch.randint(0, 256, (2, frames, 88, 88), generator=g, dtype=torch.uint8)


def stream(model, mixture, visual, block, early=0):
    """Push ``block`` samples at a time with the video frames that start in each block
    (``early``: that many frames ahead of time); flush; the concatenated outputs."""
    s = StreamingModel(model, batch=mixture.shape[0])
    outs, sent, length = [], 0, mixture.shape[-1]
    for start in range(0, length, block):
        end = min(start + block, length)
        upto = min(-(-end // SPF) + early, visual.shape[1])  # frames started before `end`
        outs.append(s.push(mixture[:, start:end], visual[:, sent:upto] if upto > sent else None))
        sent = upto
    outs.append(s.flush())
    return torch.cat(outs, -1)


@torch.no_grad()
@pytest.mark.parametrize("block", [160, 1, 37, 640, 999])
def test_stream_equals_offline_demo_type_model(block):
    model = build("cnn")
    mixture, visual = inputs(model, 5 * SPF + 123)  # not a multiple of 640, nor of the hop
    ref = model(mixture, visual).estimate
    out = stream(model, mixture, visual, block)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5
    assert ref.abs().max() > 1e-2


@torch.no_grad()
@pytest.mark.parametrize("sep", [
    {},
    {"skip": True, "fuse_each_repeat": True, "fusion": "film", "kernel_size": 5},
    {"norm": "bn", "mask_act": "relu"},
])
def test_stream_equals_offline_embedding_model_variants(sep):
    model = build("embedding", **sep)
    for m in model.modules():  # eval BatchNorm with non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    for m in model.modules():  # FiLM starts as the identity: make it act
        if hasattr(m, "gamma") and isinstance(m.gamma, torch.nn.Conv1d):
            torch.nn.init.normal_(m.gamma.weight, std=0.3)
            torch.nn.init.normal_(m.beta.weight, std=0.3)
    mixture, visual = inputs(model, 4 * SPF + 7)
    ref = model(mixture, visual).estimate
    for block, early in ((160, 0), (333, 0), (160, 100)):  # video in time, or all at once
        out = stream(model, mixture, visual, block, early)
        assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5, (block, early)


@torch.no_grad()
def test_audio_before_the_first_video_frame_waits_for_it_and_hold_applies():
    model = build("embedding")
    mixture, visual = inputs(model, 3 * SPF)
    ref = model(mixture, visual).estimate
    s = StreamingModel(model, batch=2)
    first = s.push(mixture[:, :1000])  # no lips yet: nothing comes out
    assert first.shape == (2, 0) and s.video_frames == 0
    rest = s.push(mixture[:, 1000:], visual)
    out = torch.cat([first, rest, s.flush()], -1)
    assert (out - ref).abs().max() < 1e-5
    # a frame pushed late: the audio frames that need it hold the previous one meanwhile
    s.reset()
    late = torch.cat([s.push(mixture[:, :SPF + 320], visual[:, :1]),
                      s.push(mixture[:, SPF + 320:], visual[:, 1:]), s.flush()], -1)

    def hold_first(module, args, vfeats):  # offline with feature column 1 := column 0
        return torch.cat([vfeats[..., :1], vfeats[..., :1], vfeats[..., 2:]], -1)

    hook = model.visual_encoder.register_forward_hook(hold_first)
    held = model(mixture, visual).estimate
    hook.remove()
    # the first push made audio frames 0..59 (those of samples < 928 on output) with frame 0
    cut = SPF + 320 - s.delay_samples - model.audio_encoder.stride
    assert (late[:, :cut] - held[:, :cut]).abs().max() < 1e-5
    assert (late[:, cut:] - held[:, cut:]).abs().max() > 1e-3
    assert (late[:, :SPF - 32] - ref[:, :SPF - 32]).abs().max() < 1e-5


@torch.no_grad()
def test_flush_twice_push_after_flush_reset_and_errors():
    model = build("embedding")
    mixture, visual = inputs(model, SPF + 50)
    ref = model(mixture, visual).estimate
    s = StreamingModel(model, batch=2)
    assert s.hop == 16 and s.delay_samples == 16
    assert s.flush().shape == (2, 0)  # nothing pushed: nothing out
    with pytest.raises(RuntimeError, match="reset"):
        s.push(mixture[:, :10])
    s.reset()
    out = torch.cat([s.push(mixture, visual), s.flush()], -1)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5
    assert s.flush().shape == (2, 0)  # a second flush: nothing more
    with pytest.raises(RuntimeError, match="flushed"):
        s.push(mixture[:, :10], visual[:, :1])
    s.reset()
    short = mixture[:, :5]  # shorter than a hop and than the window
    s.push(short, visual[:, :1])
    assert s.flush().shape == (2, 5)
    s.reset()
    s.push(mixture[:, :100])
    with pytest.raises(ValueError, match="no video frame"):
        s.flush()
    with pytest.raises(ValueError, match=r"\[2, n\]"):
        StreamingModel(model, batch=2).push(mixture[:1])


def test_non_causal_models_and_parts_are_refused():
    plain = build("cnn", causal=False)
    for make in (StreamingModel, StreamStep, VisualStep):
        with pytest.raises(ValueError, match=r"not causal.*AVSEModel\(\.\.\., causal=True\)"):
            make(plain)
    with pytest.raises(ValueError, match="look ahead"):
        stepper_for(plain.separator)
    with pytest.raises(ValueError, match="causal=False"):
        stepper_for(plain.audio_encoder)
    with pytest.raises(ValueError, match="no streaming form"):
        stepper_for(torch.nn.Linear(2, 2))
    causal = build("cnn")
    sep = causal.separator
    sep.repeats[0][0].norm_in = torch.nn.GroupNorm(1, 16)
    with pytest.raises(ValueError, match="gln"):
        stepper_for(sep)


@torch.no_grad()
@pytest.mark.parametrize("visual,block", [("cnn", 160), ("embedding", 320)])
def test_stream_step_loop_equals_offline(visual, block):
    """The export steps, looped: out of block b are samples [b n - (K - S), (b + 1) n - (K - S))."""
    model = build(visual)
    length = 3 * SPF
    mixture, frames = inputs(model, length)
    ref = model(mixture, frames).estimate
    audio_step, visual_step = StreamStep(model, block), VisualStep(model)
    assert audio_step.state_names[0] == "enc.buf" and audio_step.state_names[-1] == "dec.tail"
    a_states, v_states = audio_step.initial_states(2), visual_step.initial_states(2)
    assert all(s.shape[0] == 2 for s in a_states + v_states)
    outs = []
    for b in range(length // block):
        if b * block % SPF == 0:
            k = b * block // SPF
            vfeat, *v_states = visual_step(frames[:, k:k + 1], *v_states)
        out, *a_states = audio_step(mixture[:, b * block:(b + 1) * block], vfeat, *a_states)
        outs.append(out)
    out = torch.cat(outs, -1)[:, audio_step.delay_samples:]
    assert out.shape[-1] == length - 16 and (out - ref[:, :out.shape[-1]]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="multiple of the hop"):
        StreamStep(model, 100)


def test_registry_walks_the_mro_and_names_failed_stepper_modules(monkeypatch):
    from avse.streaming import registry

    class Part(torch.nn.Module):
        pass

    class SubPart(Part):
        pass

    @registry.register_stepper(Part)
    class PartStepper:
        def __init__(self, module, scale=1):
            self.module, self.scale = module, scale

    try:
        stepper = stepper_for(SubPart(), scale=3)  # found through the base class
        assert isinstance(stepper, PartStepper) and stepper.scale == 3
    finally:
        registry._STEPPERS.pop(Part)
    monkeypatch.setitem(registry._IMPORT_ERRORS, "avse.streaming.broken", ImportError("boom"))
    with pytest.raises(ValueError, match=r"SubPart has no streaming form.*broken \(ImportError: boom"):
        stepper_for(SubPart())


@torch.no_grad()
def test_stream_follows_weights_loaded_after_it_was_made():
    """The TCN stepper gathers its parameters once; new weights (load_state_dict) count."""
    model = build("embedding")
    mixture, visual = inputs(model, SPF + 77)
    s = StreamingModel(model, batch=2)
    torch.cat([s.push(mixture, visual), s.flush()], -1)
    model.load_state_dict(build("embedding", seed=5).state_dict())
    s.reset()
    out = torch.cat([s.push(mixture, visual), s.flush()], -1)
    assert (out - model(mixture, visual).estimate).abs().max() < 1e-5


@torch.no_grad()
def test_tcn_stepper_follows_the_model_moved_to_another_dtype():
    """Its gathered parameters are made again when their storage changes (``.to()``)."""
    model = build("cnn")
    stepper = stepper_for(model.separator)
    feats, vis = torch.rand(2, 16, 5), torch.randn(2, 8, 5)
    state = stepper.init_state(2)
    stepper.step(state, feats, vis)
    model.double()  # new storage for every parameter
    state = stepper.init_state(2, dtype=torch.float64)
    mask, _ = stepper.step(state, feats.double(), vis.double())
    assert mask.dtype == torch.float64
    assert (mask - model.separator(feats.double(), vis.double()).masks[-1]).abs().max() < 1e-9
