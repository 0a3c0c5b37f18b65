"""Inference: ``AVSEExtractor.from_hparams(source=DIR).extract(mixture, video)``.

``DIR`` is an experiment folder (``model.yaml`` + ``save/CKPT+*/model.ckpt``; the checkpoint
with the best validation SI-SDR is used) or an exported folder (``model.yaml`` +
``model.ckpt``). The CLI::

    avse-extract --model DIR --video face.mp4 [--mixture mix.wav] --out target.wav

takes the mp4's own audio as the mixture when ``--mixture`` is left out.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np
import torch

from avse.data.align import FPS, SAMPLE_RATE, AlignmentError, fit_visual_to_audio
from avse.video.media import MOUTH_CROPS, MediaError, decode_media, read_audio, resample

logger = logging.getLogger(__name__)


class AVSEExtractor:
    """Extract a target speaker with a trained :class:`~avse.models.AVSEModel`.

    Arguments
    ---------
    model : AVSEModel
    device : str
    crop : str
        mouth-crop preset (``avse.video.media.MOUTH_CROPS``) applied to face-centred videos;
        use the one of the corpus the model was trained on.
    precision : str
        ``"fp32"`` (default; what the reference-exactness tests check), ``"bf16"``
        (``torch.autocast`` with bfloat16: CPUs with AMX/AVX512-BF16 and GPUs; about 2-3x
        faster on such CPUs, outputs within about 1e-2 of fp32, see
        ``benchmarks/models.py --precision bf16``) or ``"fp16"`` (CUDA only). Weights stay
        fp32 and the estimate is returned in fp32.
    """

    PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, model, device: str = "cpu", crop: str = "voxceleb2",
                 precision: str = "fp32"):
        if crop not in MOUTH_CROPS:
            raise ValueError(f"unknown crop {crop!r}; known: {sorted(MOUTH_CROPS)}")
        if precision not in self.PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; known: {sorted(self.PRECISIONS)}")
        if precision == "fp16" and not str(device).startswith("cuda"):
            raise ValueError("precision 'fp16' needs a CUDA device; on CPU use 'bf16' or 'fp32'")
        self.model = model.to(device).eval()
        self.device = device
        self.crop = crop
        self.precision = precision

    @classmethod
    def from_hparams(cls, source: str, device: str = "cpu", crop: str = "voxceleb2",
                     key: str = "si_sdr", precision: str = "fp32"):
        """Load from an experiment or exported folder (SpeechBrain ``Pretrained`` style)."""
        from avse.models.io import load_model

        return cls(load_model(source, key=key), device=device, crop=crop, precision=precision)

    @property
    def visual_input(self) -> str:
        return self.model.visual_input

    # -------------------------------------------------------------- batch API
    @torch.no_grad()
    def extract_batch(self, mixture: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """mixture ``[B, T]`` @16 kHz, visual ``[B, Tv, 88, 88]`` or ``[B, Tv, 512]`` -> ``[B, T]``.

        Each mixture is peak-normalised as in training and the estimate is scaled back.
        """
        mixture = torch.as_tensor(mixture, dtype=torch.float32, device=self.device)
        visual = torch.as_tensor(visual, device=self.device)
        if visual.dtype not in (torch.uint8, torch.float32):
            visual = visual.float()
        peak = mixture.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8)
        dtype = self.PRECISIONS[self.precision]
        with torch.autocast(torch.device(self.device).type, dtype=dtype, enabled=dtype is not None):
            estimate = self.model(mixture / peak, visual).estimate
        return estimate.float() * peak

    # -------------------------------------------------------------- file API
    def load_visual(self, video) -> np.ndarray:
        """``video``: a face-centred mp4 (cropped as the recipe does) or a ``.npy`` embedding."""
        if isinstance(video, np.ndarray):
            return video
        path = str(video)
        if path.endswith(".npy"):
            if self.visual_input != "emb":
                raise ValueError(f"{path}: this model reads mouth ROI frames from a video, not "
                                 "lip embeddings; give the mp4")
            emb = np.load(path, allow_pickle=False)
            if emb.ndim != 2 or emb.shape[1] != 512:
                raise ValueError(f"{path}: lip embedding must be [T, 512], got {list(emb.shape)}")
            return emb.astype(np.float32)
        if self.visual_input == "emb":
            raise ValueError(f"{path}: this model takes precomputed 512-d lip embeddings (.npy at "
                             "25 fps), not a video")
        _, lips = decode_media(path, want_audio=False, crop=MOUTH_CROPS[self.crop])
        return lips

    def extract(self, mixture=None, video=None, sample_rate: int | None = None) -> torch.Tensor:
        """Extract the target of ``video`` from ``mixture``; returns ``wav [T]`` @16 kHz.

        ``mixture``: a path (wav/flac/m4a/mp4), an array ``[T]``, or None to use the mp4's own
        audio. ``sample_rate``: the array's rate (resampled to 16 kHz). An audio/video length
        mismatch up to 1 s is padded or trimmed with a warning; beyond that, AlignmentError.
        """
        if video is None:
            raise ValueError("extract() needs the target's video (mp4) or lip embedding (.npy)")
        if mixture is None:
            if str(video).endswith(".npy"):
                raise ValueError("no mixture given: only an mp4 carries its own audio")
            mixture = read_audio(str(video))
        elif isinstance(mixture, (str, os.PathLike)):
            mixture = read_audio(str(mixture))
        else:
            mixture = np.asarray(mixture, dtype=np.float32).reshape(-1)
            if sample_rate and sample_rate != SAMPLE_RATE:
                mixture = resample(mixture, sample_rate, SAMPLE_RATE)
        visual = self.load_visual(video)
        visual, diff = fit_visual_to_audio(visual, len(mixture))
        if diff:
            logger.warning("audio and video lengths differ by %d frame(s) (%.2f s): the video was "
                           "%s", abs(diff), abs(diff) / FPS, "padded" if diff > 0 else "trimmed")
        wav = torch.from_numpy(np.ascontiguousarray(mixture))[None]
        vis = torch.from_numpy(np.ascontiguousarray(visual))[None]
        return self.extract_batch(wav, vis)[0].cpu()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="avse-extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="experiment or exported model folder")
    parser.add_argument("--video", required=True, help="face-centred mp4, or .npy lip embedding")
    parser.add_argument("--mixture", help="mixture audio (default: the mp4's own audio)")
    parser.add_argument("--out", required=True, help="output wav (16 kHz)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crop", default="voxceleb2", choices=sorted(MOUTH_CROPS))
    parser.add_argument("--precision", default="fp32", choices=sorted(AVSEExtractor.PRECISIONS),
                        help="bf16: faster on CPUs with AMX/AVX512-BF16, outputs differ slightly")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    import soundfile as sf

    try:
        extractor = AVSEExtractor.from_hparams(args.model, device=args.device, crop=args.crop,
                                               precision=args.precision)
        wav = extractor.extract(args.mixture, args.video)
    except (MediaError, AlignmentError, ValueError, OSError, RuntimeError) as err:
        print(f"avse-extract: error: {err}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    sf.write(args.out, np.clip(wav.numpy(), -1, 1), SAMPLE_RATE, subtype="PCM_16")
    print(f"wrote {args.out} ({len(wav) / SAMPLE_RATE:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
