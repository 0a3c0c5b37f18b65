"""Export a causal model's streaming step (``avse-export --stream_block N``).

Writes three files for an ``--out FILE`` such as ``step.onnx``:

* ``step.onnx``: :class:`~avse.streaming.step.StreamStep`, one block of ``n`` samples:
  ``(audio [B, n] float32, vfeat [B, Dv] float32, *states) -> (out [B, n], *states)``;
* ``step.visual.onnx``: :class:`~avse.streaming.step.VisualStep`, one video frame:
  ``(frame [B, 1, 88, 88] uint8 or [B, 1, D] float32, *states) -> (vfeat [B, Dv], *states)``;
* ``step.json``: what a caller needs to run them: ``block``, the hop ``S``, the encoder
  window ``K``, ``delay_samples`` (``K - S``), the sample and frame rates, the input, output
  and state names of both graphs with the states' shapes and dtypes (batch 1; the batch
  axis of every input and state is dynamic), and the two rules of the loop below.

The loop (states start as zeros of the listed shapes; a state output feeds the input of the
same name at the next call)::

    for b, block in enumerate(blocks):                 # block [1, n] float32
        if b * n % 640 == 0:                           # video frame b n / 640 starts here
            vfeat, *v_states = visual(frame_of(b * n // 640), *v_states)
        out, *a_states = step(block, vfeat, *a_states)

``out`` of block b are the output samples ``[b n - delay, (b + 1) n - delay)``: drop the
first ``delay_samples`` of a stream. The result equals the offline causal model's estimate
(``tests/unit/test_export_stream.py``: onnxruntime within 1e-4).
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from avse.export_rnn import ROI_SIZE, ExportError, _parent, _quiet, _reason
from avse.models.base import SAMPLES_PER_VIDEO_FRAME as SAMPLES_PER_FRAME

STATE_SUFFIX = ".next"
"""A state output's name: the input state's name with this suffix."""


def stream_paths(out: str) -> dict:
    """``{"step": out, "visual": out with .visual before the suffix, "json": out as .json}``."""
    stem, ext = os.path.splitext(out)
    return {"step": out, "visual": f"{stem}.visual{ext}", "json": f"{stem}.json"}


def _example_frame(model: nn.Module, batch: int) -> torch.Tensor:
    if model.visual_input == "emb":
        dim = getattr(model.visual_encoder, "in_dim", None) or 512
        return torch.randn(batch, 1, dim, generator=torch.Generator().manual_seed(0))
    return torch.randint(0, 256, (batch, 1, ROI_SIZE, ROI_SIZE), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def _export(module: nn.Module, args: tuple, leading: int, inputs: list, outputs: list,
            out: str, fmt: str) -> None:
    """``torch.export`` of ``module`` at ``args`` (``leading`` named arguments, then the
    ``*states``; axis 0 of each, the batch, dynamic), then ONNX (``inputs`` and ``outputs``:
    the graph's names) or ``.pt2``."""
    from torch.export import Dim

    batch = Dim("b", min=1, max=1024)
    try:
        with torch.no_grad():
            program = _quiet(torch.export.export, module, args, strict=False,
                             dynamic_shapes=(*({0: batch} for _ in args[:leading]),
                                             tuple({0: batch} for _ in args[leading:])))
    except Exception as err:  # noqa: BLE001 - exporter errors have many types
        raise ExportError(f"torch.export of the {type(module).__name__} failed: "
                          f"{_reason(err)}") from err
    _parent(out)
    if fmt == "pt2":
        torch.export.save(program, out)
        return
    try:
        with torch.no_grad():
            onnx_program = _quiet(torch.onnx.export, program, dynamo=True, optimize=False,
                                  input_names=inputs, output_names=outputs)
            _quiet(onnx_program.save, out)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"ONNX conversion of the {type(module).__name__} failed: "
                          f"{_reason(err)}") from err


def export_stream(model: nn.Module, out: str, block: int = 160, fmt: str = "onnx") -> dict:
    """Export ``model``'s :class:`StreamStep` (``block`` samples) and :class:`VisualStep` to
    :func:`stream_paths` of ``out`` (``fmt`` ``onnx`` or ``pt2``) and write the json; returns
    its content. ExportError for a model that does not stream (not causal, a part without a
    streaming form) or does not export."""
    from avse.streaming import StreamStep, VisualStep

    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise ExportError("ONNX export needs onnxscript: pip install onnxscript") from None
    try:
        audio_step, visual_step = StreamStep(model, block), VisualStep(model)
    except ValueError as err:
        raise ExportError(f"no streaming step: {err}") from err
    audio_step.eval()
    visual_step.eval()
    paths = stream_paths(out)
    batch = 2  # not 1: torch.export would fix a size-1 batch axis
    frame = _example_frame(model, batch)
    v_states = visual_step.initial_states(batch)
    with torch.no_grad():
        vfeat = visual_step(frame, *v_states)[0]
    a_states = audio_step.initial_states(batch)
    audio = torch.randn(batch, audio_step.block, generator=torch.Generator().manual_seed(1))
    step_names = ["audio", "vfeat", *audio_step.state_names]
    visual_names = ["frame", *visual_step.state_names]
    _export(audio_step, (audio, vfeat, *a_states), 2, step_names,
            ["out"] + [n + STATE_SUFFIX for n in audio_step.state_names], paths["step"], fmt)
    _export(visual_step, (frame, *v_states), 1, visual_names,
            ["vfeat"] + [n + STATE_SUFFIX for n in visual_step.state_names], paths["visual"], fmt)
    hop = int(model.audio_encoder.stride)
    info = {
        "format": fmt,
        "sample_rate": 16000,
        "samples_per_video_frame": SAMPLES_PER_FRAME,
        "block": audio_step.block,
        "hop": hop,
        "kernel": int(model.audio_encoder.kernel_size),
        "delay_samples": audio_step.delay_samples,
        "latency_ms": 1000 * (audio_step.delay_samples + audio_step.block) / 16000,
        "visual_rule": f"block b gets vfeat of video frame floor(b * {audio_step.block} / "
                       f"{SAMPLES_PER_FRAME}): run the visual step when b * {audio_step.block}"
                       f" % {SAMPLES_PER_FRAME} == 0, with that frame",
        "output_rule": f"out of block b are the output samples [b * {audio_step.block} - "
                       f"{audio_step.delay_samples}, (b + 1) * {audio_step.block} - "
                       f"{audio_step.delay_samples}): drop the first "
                       f"{audio_step.delay_samples} of a stream",
        "state_rule": f"states start as zeros of the shapes below (batch axis 0 dynamic); "
                      f"the output <name>{STATE_SUFFIX} is the next call's input <name>",
        "step": _graph_info(paths["step"], step_names, ["out"], (audio, vfeat),
                            audio_step.state_names, audio_step.initial_states(1)),
        "visual": _graph_info(paths["visual"], visual_names, ["vfeat"], (frame,),
                              visual_step.state_names, visual_step.initial_states(1)),
    }
    with open(paths["json"], "w") as f:
        json.dump(info, f, indent=1)
    return info


def _graph_info(path, names, outputs, inputs, state_names, states) -> dict:
    return {
        "file": os.path.basename(path),
        "inputs": [{"name": n, "shape": ["B", *t.shape[1:]], "dtype": str(t.dtype)[6:]}
                   for n, t in zip(names, inputs)],
        "outputs": outputs + [n + STATE_SUFFIX for n in state_names],
        "states": [{"name": n, "shape": list(s.shape), "dtype": str(s.dtype)[6:]}
                   for n, s in zip(state_names, states)],
    }


class OnnxStream:
    """Run an exported stream (:func:`export_stream`'s ONNX files, from the json's path or
    the step's) with onnxruntime: ``push(block [B, n] float32, frame [B, 1, ...] or None)
    -> out [B, n]`` (pass the frame when the json's visual rule says so)."""

    def __init__(self, out: str, batch: int = 1, threads: int = 1):
        import numpy as np

        from avse.export_rnn import onnx_session

        paths = stream_paths(out)
        with open(paths["json"]) as f:
            self.info = json.load(f)
        self.step = onnx_session(paths["step"], threads)
        self.visual = onnx_session(paths["visual"], threads)
        self.batch, self._np = batch, np
        self.reset()

    def _zeros(self, graph: str) -> dict:
        np = self._np
        return {s["name"]: np.zeros([self.batch, *s["shape"][1:]], dtype=s["dtype"])
                for s in self.info[graph]["states"]}

    def reset(self) -> None:
        """A new stream: zero states."""
        self.a_states, self.v_states, self.vfeat = self._zeros("step"), self._zeros("visual"), None

    @staticmethod
    def _run(session, feeds: dict, states: dict):
        names = [o.name for o in session.get_outputs()]
        outs = session.run(names, {**feeds, **states})
        new = {n[:-len(STATE_SUFFIX)]: v for n, v in zip(names[1:], outs[1:])}
        return outs[0], new

    def see(self, frame) -> None:
        """A new video frame ``[B, 1, ...]`` (numpy or tensor) through the visual step; its
        feature is held for the blocks that follow."""
        frame = frame.numpy() if isinstance(frame, torch.Tensor) else frame
        self.vfeat, self.v_states = self._run(self.visual, {"frame": frame}, self.v_states)

    def push(self, block, frame=None):
        """One block (numpy or tensor) -> its output; ``frame``: the new video frame (see
        :meth:`see`), or None to hold the latest."""
        block = block.numpy() if isinstance(block, torch.Tensor) else block
        if frame is not None:
            self.see(frame)
        if self.vfeat is None:
            raise ValueError("the first block needs a video frame")
        out, self.a_states = self._run(self.step, {"audio": block, "vfeat": self.vfeat},
                                       self.a_states)
        return torch.from_numpy(out)
