#!/usr/bin/env python
"""Write a test video from a real photograph: two talking faces (scikit-image's public-domain
astronaut portrait, one mirrored and tinted, entering late), the synthetic corpus' mouths
drawn in sync with two synthetic voices; the soundtrack is their mixture.

Usage::

    python tools/make_scene_video.py --out two_faces.mp4 [--seconds 8] [--size 360x640]
        [--fps 25] [--late_start 3] [--seed 0] [--truth_dir DIR]

``--truth_dir`` also writes each face's clean speech (``source0.wav``, ``source1.wav``) and
the mixture, 16 kHz, to score an extraction. See :mod:`avse.video.scenes`.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--size", default="360x640", help="HxW, even numbers")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--late_start", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth_dir")
    args = p.parse_args(argv)
    import soundfile as sf

    from avse.video.scenes import two_face_scene

    h, w = (int(v) for v in args.size.lower().split("x"))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    truth = two_face_scene(args.out, duration_s=args.seconds, size=(h, w), seed=args.seed,
                           late_start=args.late_start, fps=args.fps)
    if args.truth_dir:
        os.makedirs(args.truth_dir, exist_ok=True)
        for k, src in enumerate(truth.sources):
            sf.write(os.path.join(args.truth_dir, f"source{k}.wav"), src, truth.sample_rate)
        sf.write(os.path.join(args.truth_dir, "mixture.wav"), truth.mixture, truth.sample_rate)
    print(f"wrote {args.out} ({truth.duration:.1f} s, {w}x{h}, {args.fps:g} fps, 2 faces; "
          f"face 1 from {args.late_start:g} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
