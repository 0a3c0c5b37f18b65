"""The command line of ``avse-extract`` (:func:`avse.inference.main`): options, their
limits, and how errors are reported (one line on stderr naming the file, exit code 2)."""
from __future__ import annotations

import argparse

from avse.data.align import FPS

PRECISION_NAMES = ("bf16", "fp16", "fp32")
EXIT_BAD_INPUT = 2
LIMITS = {"detect_every": 1, "max_side": 64, "chunk_seconds": 1 / FPS, "overlap_seconds": 0,
          "min_track_seconds": 0, "block_ms": 1000 / 16000,
          "threads": 1}  # the smallest value each option takes


def build_parser(description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avse-extract", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="experiment or exported model folder")
    p.add_argument("--video", required=True, help="any video; a face-centred clip with "
                   "--face_centred; or a .npy lip embedding (embedding models)")
    p.add_argument("--mixture", help="mixture audio (default: the video's own audio)")
    p.add_argument("--out_dir", help="one wav + one mp4 per face, faces.json, faces.png")
    p.add_argument("--out", help="one output wav (one face)")
    p.add_argument("--face", default="all", help="all | largest | N (a number from faces.json)")
    p.add_argument("--list_faces", action="store_true",
                   help="detect and track only; print the faces")
    p.add_argument("--face_centred", action="store_true",
                   help="the video is already a face-centred clip (as the corpus'): no tracking")
    p.add_argument("--chunk_seconds", type=float, default=4.0)
    p.add_argument("--overlap_seconds", type=float, default=1.0,
                   help="context on each side of a chunk; chunks are cross-faded over half of it")
    p.add_argument("--detect_every", type=int, default=5, help="detect faces every N frames")
    p.add_argument("--max_side", type=int, default=640, help="long side the detector sees")
    p.add_argument("--min_track_seconds", type=float, default=1.0, help="shorter tracks dropped")
    p.add_argument("--no_merge", action="store_true",
                   help="do not merge one face's tracks across shot cuts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--crop", default=None, help="override the model.yaml crop preset")
    p.add_argument("--precision", default="fp32", choices=PRECISION_NAMES,
                   help="bf16: faster on CPUs with AMX/AVX512-BF16, outputs differ slightly")
    p.add_argument("--gate", action="store_true",
                   help="attenuate frames judged silent (a model with an activity head)")
    p.add_argument("--gate_threshold", type=float, default=0.5,
                   help="speaking probability threshold")
    p.add_argument("--gate_db", type=float, default=30.0, help="attenuation of silent frames (dB)")
    p.add_argument("--trust_model_code", action="store_true",
                   help="let the model folder's model.yaml name classes by import path (this "
                   "imports and runs their modules: only for folders you trust); by default "
                   "only registered plugin names are accepted")
    p.add_argument("--stream", action="store_true",
                   help="a causal model, block by block as a live stream (a face-centred clip "
                   "or .npy, --out): prints per-block compute time, real-time factor, latency")
    p.add_argument("--block_ms", type=float, default=10.0, help="--stream: block length (ms)")
    p.add_argument("--stream_peak", type=float, default=None,
                   help="--stream, a model trained on peak-normalised mixtures: the fixed gain "
                   "(expected peak) used instead of the whole file's peak (default 1.0)")
    p.add_argument("--threads", type=int, default=1, help="--stream: torch threads")
    p.add_argument("--work_dir", help="where the face frames are staged (default: the system temp)")
    p.add_argument("--noprogressbar", action="store_true")
    return p


def parse(argv, description: str = "") -> tuple:
    """``(parser, args)``; options out of range are a usage error (exit 2) before any work."""
    parser = build_parser(description)
    args = parser.parse_args(argv)
    for name, low in LIMITS.items():
        if getattr(args, name) < low:
            parser.error(f"--{name} must be at least {low:g}, got {getattr(args, name)}")
    if not args.list_faces:
        if not args.model:
            parser.error("--model is required (except with --list_faces)")
        if bool(args.out) == bool(args.out_dir):
            parser.error("give exactly one of --out_dir (every face) and --out (one wav)")
        if args.stream and not (args.face_centred or args.video.endswith(".npy")):
            parser.error("--stream takes a face-centred clip (--face_centred) or a .npy")
        if (args.face_centred or args.video.endswith(".npy")) and not args.out:
            parser.error("--face_centred and .npy inputs write one wav: use --out")
    return parser, args


def scan_opts(args) -> dict:
    return {"detect_every": args.detect_every, "max_side": args.max_side,
            "min_track_s": args.min_track_seconds, "merge": not args.no_merge}


def error_line(err: BaseException) -> str:
    """The one line (the first of the message; a table of faces may follow) printed for an
    input, model or output error."""
    text = str(err) or type(err).__name__
    return f"avse-extract: error: {text}"
