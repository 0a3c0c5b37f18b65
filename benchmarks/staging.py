"""Throughput of the shared extract stage (VoxCeleb2 layout) on synthetic 5 s clips.

Prints clips/s (and real-time factor) for each ``--nj``. Aim: >= 10 clips/s on 2 cores.

    python benchmarks/staging.py --clips 40 --nj 1 2
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

from avse.data.synthetic import render_face, speaker_look, write_mp4
from avse.data.synthetic.speech import speaker_voice, synthesize_utterance
from avse.recipes import stages, voxceleb2
from avse.recipes.common import parallel_map


def _write_clip(args):
    path, index, duration = args
    rng = np.random.default_rng(index)
    utt = synthesize_utterance(speaker_voice(0, index % 8), rng, duration)
    frames = render_face(utt.opening, utt.width, utt.roundness, look=speaker_look(0, index % 8))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_mp4(path, frames, utt.wav)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per clip")
    parser.add_argument("--nj", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work_dir", help="default: a temporary folder")
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="avse-bench-")
    corpus = os.path.join(work, "corpus")
    jobs = [(os.path.join(corpus, "dev", "mp4", f"id{i % 8:05d}", f"benchVideo{i // 8:02d}",
                          f"{i:05d}.mp4"), i, args.duration) for i in range(args.clips)]
    t0 = time.time()
    list(parallel_map(_write_clip, jobs, max(args.nj), desc="synthesize"))
    print(f"synthesized {args.clips} x {args.duration:.0f} s clips in {time.time() - t0:.1f} s",
          file=sys.stderr)
    print(f"cpu cores: {os.cpu_count()}")
    for nj in args.nj:
        out = os.path.join(work, f"out_nj{nj}")
        voxceleb2.stage_manifest(corpus, out, nj=nj)
        t0 = time.time()
        infos = stages.stage_extract(out, nj=nj)
        elapsed = time.time() - t0
        audio_s = sum(i["duration"] for i in infos)
        print(f"extract nj={nj}: {len(infos) / elapsed:.1f} clips/s, "
              f"{audio_s / elapsed:.0f}x real time ({len(infos)} clips in {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
