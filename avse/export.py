"""Export a saved AVSE model's offline forward to ONNX or ``.pt2`` (``avse-export``).

The exported graph is exactly ``AVSEModel(...)(mixture, visual).estimate``: mixture ``[B, T]``
float32 and visual ``[B, Tv, H, W]`` uint8 (ROI models) or ``[B, Tv, D]`` float32 (embedding
models) in, the estimate ``[B, T]`` out, with no normalisation inside (the extractor's peak
normalisation stays the caller's job). The batch and length axes are dynamic; the audio
length is tied to the video length, ``T = 640 * Tv`` (16 kHz audio, 25 fps video).

ONNX goes through ``torch.onnx.export(..., dynamo=True)`` (needs ``onnxscript``), ``.pt2``
through :func:`torch.export.export` and :func:`torch.export.save`. An architecture that does
not export gives :class:`ExportError` (the CLI: exit 2, one line naming the reason).

For a causal model, ``--stream_block N`` exports the streaming step instead (state in, state
out; :mod:`avse.export_stream`).

Example
-------
    avse-export --model exp/model --format onnx --out model.onnx
    avse-export --model exp/model_causal --format onnx --out step.onnx --stream_block 160
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
from torch import nn

from avse.export_rnn import (ROI_SIZE, ExportError, OverlapAddISTFT, _parent, _quiet,  # noqa: F401
                             _reason, onnx_session, swap_istft, swap_rnns)

SAMPLES_PER_FRAME = 640
"""Audio samples per video frame: 16 kHz audio, 25 fps video."""
FORMATS = ("onnx", "pt2")


KNOWN_LIMITS: dict = {}
"""Why an architecture's length axis does not export (this torch; see the report of issue 14),
by registry name, added to the exporter's own reason. Empty: every registered separator
exports (the dual-path chunking and AV-Sepformer's visual chunks without branches on the
lengths, MuSE's default upsampling in integer arithmetic, TF-GridNet's decoder as
:class:`OverlapAddISTFT`, every RNN as a scan)."""


ONNX_LIMITS = {}
"""Why an architecture's ONNX graph computes something else than the model (this torch and
onnxscript), by registry name; named when the check after the ONNX export finds it."""


class EstimateOnly(nn.Module):
    """``model(mixture, visual).estimate``: the tensor the exported graph returns."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, mixture: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        return self.model(mixture, visual).estimate


def example_inputs(model: nn.Module, seconds: float = 2.0, batch: int = 2, seed: int = 0):
    """``(mixture [B, T] float32, visual [B, Tv, ...])`` for ``model``, ``T = 640 * Tv``,
    ``Tv = round(25 * seconds)``: uint8 ROIs ``[B, Tv, 88, 88]`` or float embeddings
    ``[B, Tv, in_dim]`` (the visual encoder's ``in_dim``, 512 by default)."""
    frames = max(2, int(round(25 * seconds)))
    gen = torch.Generator().manual_seed(seed)
    mixture = torch.randn(batch, frames * SAMPLES_PER_FRAME, generator=gen)
    if model.visual_input == "emb":
        dim = getattr(model.visual_encoder, "in_dim", None) or 512
        visual = torch.randn(batch, frames, dim, generator=gen)
    else:
        visual = torch.randint(0, 256, (batch, frames, ROI_SIZE, ROI_SIZE), generator=gen,
                               dtype=torch.uint8)
    return mixture, visual


def dynamic_shapes():
    """The export's dynamic axes: batch ``b`` and video frames ``tv``; ``T = 640 * tv``."""
    from torch.export import Dim

    batch, frames = Dim("b", min=1, max=1024), Dim("tv", min=3, max=100_000)
    return {"mixture": {0: batch, 1: SAMPLES_PER_FRAME * frames},
            "visual": {0: batch, 1: frames}}


def export_program(model: nn.Module, seconds: float = 2.0):
    """:func:`torch.export.export` of :class:`EstimateOnly` of ``model`` (eval mode) with
    :func:`dynamic_shapes`; ExportError names the reason when it fails. Recurrent layers are
    exported as scans (:func:`avse.export_rnn.swap_rnns`: ``nn.LSTM`` would freeze the time
    axis at the example length), the STFT decoder as :class:`OverlapAddISTFT` (``torch.istft``
    would); an activity head is left out (the estimate does not depend on it)."""
    args = example_inputs(model, seconds)
    model = model.eval()
    if getattr(model, "activity_head", None) is not None:
        # its output is not the estimate's (nor an input of it); left out of the graph, it
        # does not hold back the export (its adaptive pooling fixes the length)
        model = copy.deepcopy(model)
        model.activity_head = None
    wrapped = EstimateOnly(swap_istft(swap_rnns(model)[0])[0]).eval()
    try:
        with torch.no_grad():
            return _quiet(torch.export.export, wrapped, args, dynamic_shapes=dynamic_shapes(),
                          strict=False)
    except Exception as err:  # noqa: BLE001 - exporter errors have many types
        arch = getattr(model.separator, "registry_name", None)
        known = f"{arch}: {KNOWN_LIMITS[arch]}; " if arch in KNOWN_LIMITS else ""
        raise ExportError(f"torch.export failed: {known}{_reason(err)}") from err


def export_pt2(model: nn.Module, out: str, seconds: float = 2.0) -> str:
    """Write ``out`` (``.pt2``, :func:`torch.export.save`); returns ``out``."""
    program = export_program(model, seconds)
    _parent(out)
    torch.export.save(program, out)
    return out


def export_onnx(model: nn.Module, out: str, seconds: float = 2.0) -> str:
    """Write ``out`` (ONNX, ``torch.onnx.export(dynamo=True)``); returns ``out``."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs onnxscript: pip install onnxscript") from None
    program = export_program(model, seconds)
    _parent(out)
    try:
        with torch.no_grad():
            # optimize=False: onnxscript 0.7.2's optimizer drops the ``+ 1e-8`` of
            # ``rsqrt(var + eps)`` (ChannelNorm), which gives NaN on a frame whose encoder
            # channels are all zero; onnxruntime optimises the graph itself when loading it
            onnx_program = _quiet(torch.onnx.export, program, dynamo=True, optimize=False,
                                  input_names=["mixture", "visual"], output_names=["estimate"])
            _quiet(onnx_program.save, out)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"ONNX conversion failed: {_reason(err)}") from err
    _check_onnx_finite(model, out, seconds)
    return out


def _check_onnx_finite(model: nn.Module, out: str, seconds: float) -> None:
    """With onnxruntime installed: run ``out`` on an example input (batch 1); ExportError (and
    ``out`` removed) when its estimate has NaN or inf where the model's has none."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return
    mixture, visual = example_inputs(model, seconds, batch=1, seed=1)
    with torch.no_grad():
        ref = model(mixture, visual).estimate
    got = run_onnx(onnx_session(out), mixture, visual)
    if torch.isfinite(ref).all() and not torch.isfinite(got).all():
        os.remove(out)
        arch = getattr(model.separator, "registry_name", None)
        known = f": {arch}: {ONNX_LIMITS[arch]}" if arch in ONNX_LIMITS else ""
        raise ExportError("the ONNX graph gives NaN / inf where the model does not (an "
                          f"operator translated differently){known}")


def export_model(model: nn.Module, fmt: str, out: str, seconds: float = 2.0) -> str:
    """Export ``model`` in ``fmt`` (``onnx`` or ``pt2``) to ``out``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    return (export_onnx if fmt == "onnx" else export_pt2)(model, out, seconds)


def run_onnx(session, mixture: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """The estimate ``[B, T]`` of an onnxruntime ``session`` (from :func:`onnx_session`)."""
    out = session.run(["estimate"], {"mixture": mixture.numpy(), "visual": visual.numpy()})
    return torch.from_numpy(out[0])


def run_pt2(path_or_program, mixture: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """The estimate of a ``.pt2`` file (:func:`torch.export.load`) or a loaded program."""
    program = torch.export.load(path_or_program) if isinstance(path_or_program, str) \
        else path_or_program
    with torch.no_grad():
        return program.module()(mixture, visual)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avse-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (model.yaml + model.ckpt) or "
                   "experiment folder, as avse-extract --model")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output file (.onnx or .pt2)")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="length of the example input the graph is traced with (default 2); "
                        "the exported length axes are dynamic")
    p.add_argument("--stream_block", type=int, default=None, metavar="N",
                   help="export the streaming step of a causal model instead (blocks of N "
                        "samples, a multiple of the hop dividing 640; 160 = 10 ms): FILE, the "
                        "visual step FILE with .visual before the suffix and FILE as .json "
                        "(block, hop, delay, state names and shapes; see avse.export_stream)")
    p.add_argument("--trust_model_code", action="store_true",
                   help="let model.yaml name classes by import path (as avse-extract: this "
                        "runs their modules; only for folders you trust)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from avse.models.io import ModelLoadError, load_model

    try:
        model = load_model(args.model, trust_code=args.trust_model_code)
        if args.stream_block is not None:
            from avse.export_stream import export_stream, stream_paths

            info = export_stream(model, args.out, args.stream_block, args.format)
        else:
            export_model(model, args.format, args.out, args.seconds)
    except (ExportError, ModelLoadError) as err:
        print(f"avse-export: error: {err}", file=sys.stderr)
        return 2
    if args.stream_block is not None:
        paths = stream_paths(args.out)
        print(f"wrote {paths['step']} (step: audio [B, {info['block']}] float32, vfeat, "
              f"{len(info['step']['states'])} states -> out [B, {info['block']}], states), "
              f"{paths['visual']} (visual step) and {paths['json']}; output delay "
              f"{info['delay_samples']} samples + the block")
        return 0
    print(f"wrote {args.out} ({args.format}; mixture [B, T] float32, visual "
          f"{'[B, Tv, D] float32' if model.visual_input == 'emb' else '[B, Tv, H, W] uint8'}, "
          f"T = {SAMPLES_PER_FRAME} * Tv -> estimate [B, T])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
