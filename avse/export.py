"""Export a saved AVSE model's offline forward to ONNX or ``.pt2`` (``avse-export``).

The exported graph is exactly ``AVSEModel(...)(mixture, visual).estimate``: mixture ``[B, T]``
float32 and visual ``[B, Tv, H, W]`` uint8 (ROI models) or ``[B, Tv, D]`` float32 (embedding
models) in, the estimate ``[B, T]`` out, with no normalisation inside (the extractor's peak
normalisation stays the caller's job). The batch and length axes are dynamic; the audio
length is tied to the video length, ``T = 640 * Tv`` (16 kHz audio, 25 fps video).

ONNX goes through ``torch.onnx.export(..., dynamo=True)`` (needs ``onnxscript``), ``.pt2``
through :func:`torch.export.export` and :func:`torch.export.save`. An architecture that does
not export gives :class:`ExportError` (the CLI: exit 2, one line naming the reason).

Example
-------
    avse-export --model exp/model --format onnx --out model.onnx
"""
from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout

import torch
import torch.nn.functional as F
from torch import nn

SAMPLES_PER_FRAME = 640
"""Audio samples per video frame: 16 kHz audio, 25 fps video."""
ROI_SIZE = 88
"""Height and width of the mouth ROIs of the example input (the crops' size)."""
FORMATS = ("onnx", "pt2")


KNOWN_LIMITS = {
    "dprnn": "the dual-path chunking (avse/models/separators/dual_path.py segment / "
             "overlap_add) ties the chunk count to the example length",
    "seanet": "the dual-path chunking (avse/models/separators/dual_path.py segment / "
              "overlap_add) ties the chunk count to the example length",
    "avsep": "the dual-path chunking (avse/models/separators/dual_path.py segment) ties the "
             "chunk count to the example length",
}
"""Why an architecture's length axis does not export (this torch; see the report of issue 14):
added to the exporter's own reason."""


class OverlapAddISTFT(nn.Module):
    """The inverse STFT of :class:`~avse.models.decoders.STFTDecoder` without ``torch.istft``
    (which ``torch.export`` cannot keep dynamic): feats ``[B, 2F, L]`` (real; imag) ->
    wav ``[B, length]``.

    Each frame's inverse real DFT is one matrix product (the ``irfft`` basis: the imaginary
    parts of the DC and Nyquist bins are ignored, as ``irfft``), times the window (zero-padded
    to ``n_fft``, centred); the frames are overlap-added by a transposed convolution with the
    identity kernel (stride ``hop``), divided by the overlap-added squared window, and the
    ``n_fft // 2`` samples of the centring padding dropped; trimmed or zero-padded to
    ``length``. Equal to ``torch.istft(..., center=True, length=length)`` to float rounding.
    """

    def __init__(self, n_fft: int, hop: int, win: int):
        super().__init__()
        self.n_fft, self.hop, self.n_freq = int(n_fft), int(hop), int(n_fft) // 2 + 1
        n = torch.arange(self.n_fft, dtype=torch.float64)
        k = torch.arange(self.n_freq, dtype=torch.float64)
        angle = 2 * torch.pi * torch.outer(n, k) / self.n_fft  # [n_fft, F]
        weight = torch.full((self.n_freq,), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if self.n_fft % 2 == 0:
            weight[-1] = 1.0
        left = (self.n_fft - int(win)) // 2
        window = torch.zeros(self.n_fft, dtype=torch.float64)
        window[left:left + int(win)] = torch.hann_window(int(win), dtype=torch.float64)
        basis = torch.cat((torch.cos(angle) * weight, -torch.sin(angle) * weight), dim=1)
        basis = basis / self.n_fft * window[:, None]  # irfft, then the window
        self.register_buffer("basis", basis.float(), persistent=False)  # [n_fft, 2F]
        self.register_buffer("window_sq", window.square().float()[None, :, None],
                             persistent=False)  # [1, n_fft, 1]
        self.register_buffer("eye", torch.eye(self.n_fft)[:, None, :], persistent=False)

    def forward(self, feats: torch.Tensor, length) -> torch.Tensor:
        frames = torch.matmul(self.basis, feats.float())  # [B, n_fft, L], windowed
        wav = F.conv_transpose1d(frames, self.eye, stride=self.hop)  # [B, 1, n_fft + hop (L-1)]
        envelope = F.conv_transpose1d(self.window_sq.expand(1, -1, feats.shape[-1]), self.eye,
                                      stride=self.hop)
        start = self.n_fft // 2
        wav = (wav / envelope)[:, 0, start:]
        # zero-pad by `length` then crop: the same trim or pad, with no branch on the length
        return F.pad(wav, (0, length))[:, :length].to(feats.dtype)


def swap_istft(model: nn.Module) -> tuple[nn.Module, int]:
    """``(copy of model with its STFTDecoder replaced by OverlapAddISTFT, how many)``; the
    model itself when it has none."""
    from avse.models.decoders import STFTDecoder

    if not isinstance(getattr(model, "decoder", None), STFTDecoder):
        return model, 0
    model = copy.deepcopy(model)
    dec = model.decoder
    model.decoder = OverlapAddISTFT(dec.n_fft, dec.hop, dec.win).to(dec.window.device)
    return model, 1


class ExportError(RuntimeError):
    """The model cannot be exported in the asked format; the message names the reason."""


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


def _reason(err: BaseException) -> str:
    """The first informative line of an exporter error, with its first listed cause (the
    guard that ties a length to the example's, for a length axis that is not dynamic)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    head = next((line for line in lines
                 if not line.startswith(("Traceback", "File ", "The above"))), "")
    head = head.split(" For more information")[0]
    cause = next((line[2:] for line in lines if line.startswith("- ")), "")
    text = f"{type(err).__name__}: {head}" + (f" {cause}" if cause else "")
    return text if len(text) <= 400 else text[:397] + "..."


def _quiet(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the exporters' progress prints and warnings held back."""
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def export_program(model: nn.Module, seconds: float = 2.0):
    """:func:`torch.export.export` of :class:`EstimateOnly` of ``model`` (eval mode) with
    :func:`dynamic_shapes`; ExportError names the reason when it fails. Recurrent layers are
    exported as scans (:func:`avse.export_rnn.swap_rnns`: ``nn.LSTM`` would freeze the time
    axis at the example length), the STFT decoder as :class:`OverlapAddISTFT` (``torch.istft``
    would); an activity head is left out (the estimate does not depend on it)."""
    from avse.export_rnn import swap_rnns

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
    return out


def _parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def export_model(model: nn.Module, fmt: str, out: str, seconds: float = 2.0) -> str:
    """Export ``model`` in ``fmt`` (``onnx`` or ``pt2``) to ``out``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    return (export_onnx if fmt == "onnx" else export_pt2)(model, out, seconds)


def onnx_session(path: str, threads: int = 1):
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


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
    p.add_argument("--trust_model_code", action="store_true",
                   help="let model.yaml name classes by import path (as avse-extract: this "
                        "runs their modules; only for folders you trust)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from avse.models.io import ModelLoadError, load_model

    try:
        model = load_model(args.model, trust_code=args.trust_model_code)
        export_model(model, args.format, args.out, args.seconds)
    except (ExportError, ModelLoadError) as err:
        print(f"avse-export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.format}; mixture [B, T] float32, visual "
          f"{'[B, Tv, D] float32' if model.visual_input == 'emb' else '[B, Tv, H, W] uint8'}, "
          f"T = {SAMPLES_PER_FRAME} * Tv -> estimate [B, T])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
