"""Long-form ``avse-extract`` on generated 720p videos: peak memory and real-time factor
against input length, face pipeline (pass 1) and extraction (pass 2) reported separately.

    python benchmarks/long_form.py                         # 1, 5 and 20 minutes, 2 faces
    python benchmarks/long_form.py --minutes 1 5 --model exp/demo/train --threads 2

Each video is written once into ``--work`` (two real-photo faces talking, H.264 + AAC,
``avse.video.scenes``; kept for reruns) and each extraction runs in its own process, so the
peak RSS printed is that run's own. Without ``--model``, a small random ``tcn`` model (the
demo's size) is used: speed and memory, not quality, are measured. Goals on 2 CPU cores:
peak RSS flat in length (within 20 %), face pipeline at least real time at 720p.
Prints numbers; asserts nothing.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = r"""
import json, resource, sys, time
import torch
torch.set_num_threads({threads})
from avse.inference import AVSEExtractor
ex = AVSEExtractor.from_hparams({model!r})
t = time.perf_counter()
res = ex.extract_video({video!r}, out_dir={out!r}, chunk_seconds={chunk})
res.pop("scan")
res["wall"] = time.perf_counter() - t
res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(res))
"""


def small_model(folder):
    import torch

    from avse.models import AVSEModel, save_model

    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 64, "kernel_size": 32},
                      {"type": "cnn", "out_dim": 64},
                      {"type": "tcn", "bottleneck": 64, "hidden": 128, "num_blocks": 6,
                       "num_repeats": 2}, fusion="concat")
    return save_model(model, folder)


def make_video(path, minutes, seed=0):
    from avse.video.scenes import FaceSpec, write_scene

    if os.path.isfile(path):
        return 0.0
    t = time.perf_counter()
    dur = minutes * 60.0
    faces = [FaceSpec(height=200, start_xy=(330, 360), end_xy=(400, 330), speaker=0),
             FaceSpec(height=170, start_xy=(930, 380), end_xy=(880, 400), speaker=1,
                      flip=True, tint=(1.1, 0.95, 0.9))]
    write_scene(path, faces, dur, size=(720, 1280), seed=seed)
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 20])
    p.add_argument("--model", help="model folder (default: a random demo-size tcn)")
    p.add_argument("--work", default="exp/bench_long_form")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk_seconds", type=float, default=4.0)
    args = p.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    model = args.model or small_model(os.path.join(args.work, "model"))
    rows = []
    for minutes in args.minutes:
        video = os.path.join(args.work, f"scene_{minutes:g}min_720p.mp4")
        gen = make_video(video, minutes)
        out = os.path.join(args.work, f"out_{minutes:g}min")
        code = _RUN.format(threads=args.threads, model=model, video=video, out=out,
                           chunk=args.chunk_seconds)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"extraction of {video} failed")
        res = json.loads(line[0][7:])
        rows.append((minutes, gen, res))
        print(f"{minutes:g} min: generated in {gen:.0f} s; {json.dumps(res['rtf'])}; "
              f"peak RSS {res['max_rss_mb']:.0f} MB", flush=True)
    print("\n| video | faces found | face pipeline RTF | extraction RTF (all faces) | "
          "total wall | peak RSS |")
    print("|---|---|---|---|---|---|")
    for minutes, _, res in rows:
        print(f"| {minutes:g} min 720p | {res['tracks']} | {res['rtf']['faces']:.2f} | "
              f"{res['rtf']['extract']:.2f} | {res['wall']:.0f} s | {res['max_rss_mb']:.0f} MB |")
    rss = [r["max_rss_mb"] for _, _, r in rows]
    print(f"\npeak RSS spread: {100 * (max(rss) - min(rss)) / min(rss):.1f} % "
          f"(goal: within 20 %); RTF < 1 is faster than real time")


if __name__ == "__main__":
    main()
