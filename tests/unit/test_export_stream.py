"""avse-export --stream_block: the causal model's streaming step and visual step in ONNX, run
block by block with onnxruntime, equal the PyTorch steps and the offline causal model."""
import json
import os

import pytest
import torch

from avse import export as E
from avse.export_stream import OnnxStream, stream_paths
from avse.models import AVSEModel, load_model, save_model
from avse.streaming import StreamStep, VisualStep

SPF = 640  # samples per video frame
BLOCK = 160  # 10 ms
TOL = 1e-4


def demo_type(causal=True):
    """conv encoder / cnn lip encoder / TCN, causal parts with cLN: the causal demo's kinds."""
    torch.manual_seed(0)
    norm = {"norm": "cln"} if causal else {}
    return AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32},
                     {"type": "cnn", "out_dim": 8, "hidden": 8, "channels": [4, 8],
                      "num_blocks": 2, **norm},
                     {"type": "tcn", "bottleneck": 8, "hidden": 16, "num_blocks": 3,
                      "num_repeats": 2, **norm}, fusion="concat", causal=causal).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    folder = save_model(demo_type(), str(root / "model"))
    out = str(root / "out" / "step.onnx")
    assert E.main(["--model", folder, "--format", "onnx", "--out", out,
                   "--stream_block", str(BLOCK)]) == 0
    return load_model(folder).eval(), out


@torch.no_grad()
def test_onnx_step_loop_equals_torch_steps_and_offline(exported):
    """Batch 1 (the export example had 2), 3 video frames and a half: block b gets video frame
    floor(b n / 640); out of block b are samples [b n - delay, (b + 1) n - delay)."""
    model, out = exported
    paths = stream_paths(out)
    assert paths["visual"].endswith("step.visual.onnx") and paths["json"].endswith("step.json")
    with open(paths["json"]) as f:
        info = json.load(f)
    audio_step, visual_step = StreamStep(model, BLOCK), VisualStep(model)
    assert (info["block"], info["hop"], info["kernel"], info["delay_samples"]) == (160, 16, 32, 16)
    assert [s["name"] for s in info["step"]["states"]] == audio_step.state_names
    assert [s["shape"] for s in info["step"]["states"]] == \
        [list(s.shape) for s in audio_step.initial_states(1)]
    assert [s["name"] for s in info["visual"]["states"]] == visual_step.state_names
    assert info["visual"]["inputs"][0] == {"name": "frame", "shape": ["B", 1, 88, 88],
                                           "dtype": "uint8"}

    gen = torch.Generator().manual_seed(3)
    length = 3 * SPF + SPF // 2
    mixture = torch.randn(1, length, generator=gen)
    frames = torch.randint(0, 256, (1, 4, 88, 88), generator=gen, dtype=torch.uint8)
    offline = model(mixture, frames).estimate
    stream = OnnxStream(out, batch=1)
    a_states, v_states = audio_step.initial_states(1), visual_step.initial_states(1)
    got, ref = [], []
    for b in range(length // BLOCK):
        frame = None
        if b * BLOCK % SPF == 0:
            k = b * BLOCK // SPF
            frame = frames[:, k:k + 1]
            vfeat, *v_states = visual_step(frame, *v_states)
        block = mixture[:, b * BLOCK:(b + 1) * BLOCK]
        y, *a_states = audio_step(block, vfeat, *a_states)
        ref.append(y)
        got.append(stream.push(block, frame))
    got, ref = torch.cat(got, -1), torch.cat(ref, -1)
    assert got.shape == ref.shape == (1, length)
    assert (got - ref).abs().max() < TOL
    delay = info["delay_samples"]
    assert (got[:, delay:] - offline[:, :length - delay]).abs().max() < TOL
    assert offline.abs().max() > 1e-3  # not trivially zero


def test_non_causal_model_is_refused(tmp_path, capsys):
    folder = save_model(demo_type(causal=False), str(tmp_path / "model"))
    out = str(tmp_path / "step.onnx")
    assert E.main(["--model", folder, "--format", "onnx", "--out", out,
                   "--stream_block", str(BLOCK)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not causal" in err and "AVSEModel(..., causal=True)" in err
    assert not any(os.path.exists(p) for p in stream_paths(out).values())
