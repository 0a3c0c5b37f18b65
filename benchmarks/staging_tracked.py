"""Staging speed of the face-tracked extract (``--crop face``) on GRID and TCD-TIMIT trees.

Writes a small GRID-layout tree (360x288, 25 fps MPEG-1 + 25 kHz wav + .align) and a
TCD-TIMIT-layout tree (1920x1080, 29.97 fps H.264 + AAC) of the astronaut's face
(``skimage.data.astronaut()``) drifting, then runs each recipe's manifest and extract
stages (``grid.stage_manifest`` / ``tcdtimit.stage_manifest`` + ``stages.stage_extract``,
as ``run.sh`` does) for every ``--nj`` and every ``--detector_device`` (the extract
stage's option: one detector per worker process on that device), each run in a fresh
process. Prints clips/s, the real-time factor (seconds of video per second of wall) and the
detector's load time. The detector part is also timed directly
(:func:`avse.video.faces.clip_mouths` with one ``FaceDetector(device=...)`` reused over the
clips), on CPU and, where ``torch.cuda.is_available()``, on CUDA.

    python benchmarks/staging_tracked.py --grid_clips 6 --grid_s 3 --tcd_clips 3 --tcd_s 2
    python benchmarks/staging_tracked.py --detector_device cpu cuda   # on a GPU machine
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import grid_fixture, tcdtimit_fixture  # noqa: E402 (the corpora's test trees)

WORDS = ("bin lay place set", "blue green red white", "at by in with", "a b c d f g h",
         "one two three four five six", "again now please soon")


def write_grid_clip(root: str, index: int, seconds: float) -> None:
    """``s<k>/<utt>.mpg``, ``audio_25k/s<k>/<utt>.wav``, ``alignments/s<k>/<utt>.align``
    (the GRID test fixture's writers, :mod:`tests.grid_fixture`)."""
    spk, utt = f"s{index % 3 + 1}", f"bb{chr(97 + index // 3 % 26)}{index % 10}n"
    n = int(round(seconds * grid_fixture.FPS))
    for d in (spk, f"audio_25k/{spk}", f"alignments/{spk}"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    grid_fixture.write_mpg(os.path.join(root, spk, utt + ".mpg"), seed=index, n_frames=n)
    grid_fixture.write_wav(os.path.join(root, "audio_25k", spk, utt + ".wav"), 25000,
                           seed=index, n_frames=n)
    words = " ".join(w.split()[index % len(w.split())] for w in WORDS)
    with open(os.path.join(root, "alignments", spk, utt + ".align"), "w") as f:
        f.write(grid_fixture.align_text(words, n_frames=n))


def write_tcd_clip(root: str, index: int, seconds: float) -> None:
    """``volunteers/<NN>M/Clips/straightcam/<sentence>.mp4`` (H.264 + AAC, audio in the mp4;
    the TCD-TIMIT test fixture's writer, :mod:`tests.tcdtimit_fixture`)."""
    clips = os.path.join(root, "volunteers", f"{index % 3 + 1:02d}M", "Clips", "straightcam")
    os.makedirs(clips, exist_ok=True)
    tcdtimit_fixture.write_clip(os.path.join(clips, f"sx{index + 10}.mp4"), seconds, seed=index)


def _write(task):
    corpus, root, index, seconds = task
    (write_grid_clip if corpus == "grid" else write_tcd_clip)(root, index, seconds)


def _stage_run(corpus: str, root: str, out: str, nj: int, device: str = "cpu") -> dict:
    """Manifest + extract (the detector on ``device``) in this (fresh) process; the wall
    times and the kept infos."""
    from avse.recipes import grid, stages, tcdtimit

    recipe = grid if corpus == "grid" else tcdtimit
    t0 = time.perf_counter()
    recipe.stage_manifest(root, out, nj=nj)
    t1, c1 = time.perf_counter(), _cpu_seconds()
    infos = stages.stage_extract(out, nj=nj, crop=recipe.DEFAULT_CROP, detector_device=device)
    t2, c2 = time.perf_counter(), _cpu_seconds()
    return {"manifest": t1 - t0, "extract": t2 - t1, "cpu": c2 - c1, "clips": len(infos),
            "seconds": sum(i["duration"] for i in infos)}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished (joined) workers."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _detector_run(videos: list, device: str) -> dict:
    """Load one FaceDetector on ``device`` and run ``clip_mouths`` over ``videos`` with it."""
    t0 = time.perf_counter()
    import torch  # noqa: F401  (the import is part of a cold start)

    from avse.video.detect import FaceDetector
    from avse.video.faces import clip_mouths
    t1 = time.perf_counter()
    det = FaceDetector(device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    FaceDetector(device=device)
    t3 = time.perf_counter()
    frames = 0
    for video in videos:
        frames += len(clip_mouths(video, "landmarks", detector=det))
    return {"import": t1 - t0, "load": t2 - t1, "load_again": t3 - t2,
            "run": time.perf_counter() - t3, "clips": len(videos), "seconds": frames / 25.0}


def _call(queue, fn, args):
    queue.put(fn(*args))


def _in_fresh_process(fn, *args):
    """``fn(*args)`` in a new (spawned, non-daemonic: it may start workers) process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_call, args=(queue, fn, args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _videos(root: str, ext: str) -> list:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                  if f.endswith(ext))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--grid_clips", type=int, default=6)
    parser.add_argument("--grid_s", type=float, default=3.0, help="seconds per GRID clip")
    parser.add_argument("--tcd_clips", type=int, default=3)
    parser.add_argument("--tcd_s", type=float, default=2.0, help="seconds per TCD-TIMIT clip")
    parser.add_argument("--nj", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores", type=int, default=2,
                        help="pin this process and its workers to this many cores (0: all)")
    parser.add_argument("--detector_device", nargs="+", default=["cpu"],
                        help="the extract stage's --detector_device values to stage with "
                             "(cpu, cuda, cuda:N); auto: cpu, and cuda where available")
    parser.add_argument("--device", default="auto",
                        help="detector device of the direct detector timing "
                             "(auto: cuda when torch.cuda.is_available(), and cpu)")
    parser.add_argument("--work_dir", help="default: a temporary folder")
    args = parser.parse_args(argv)
    import torch

    from avse.video.detect import check_device

    stage_devices = args.detector_device
    if stage_devices == ["auto"]:
        stage_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in stage_devices:
        try:
            check_device(device)
        except ValueError as err:
            parser.error(f"--detector_device {device}: {err}")
    if args.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    work = args.work_dir or tempfile.mkdtemp(prefix="avse-bench-tracked-")
    corpora = {"grid": (args.grid_clips, args.grid_s, ".mpg", "360x288 25 fps MPEG-1"),
               "tcdtimit": (args.tcd_clips, args.tcd_s, ".mp4", "1920x1080 29.97 fps H.264")}
    print(f"cores: {cores} (of {os.cpu_count()}), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
          f"{os.getloadavg()[0]:.1f} (other work on these cores slows every number), "
          f"work dir {work}")
    from avse.recipes.common import parallel_map

    for corpus, (n, seconds, _, what) in corpora.items():
        root = os.path.join(work, corpus, "corpus")
        t0 = time.perf_counter()
        list(parallel_map(_write, [(corpus, root, i, seconds) for i in range(n)], cores,
                          desc=f"write {corpus}"))
        print(f"{corpus}: wrote {n} x {seconds:g} s clips ({what}) in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print("\nstaging (manifest + extract, --crop face; one detector per worker process on "
          "--detector_device)")
    for corpus, (n, seconds, ext, what) in corpora.items():
        root = os.path.join(work, corpus, "corpus")
        for nj in args.nj:
            for device in stage_devices:
                out = os.path.join(work, corpus, f"out{nj}-{device.replace(':', '')}")
                r = _in_fresh_process(_stage_run, corpus, root, out, nj, device)
                print(f"  {corpus:8s} nj={nj} {device}: extract "
                      f"{r['clips'] / r['extract']:.2f} clips/s, "
                      f"{r['seconds'] / r['extract']:.2f}x real time ({r['clips']}/{n} clips, "
                      f"{r['seconds']:.1f} s of video in {r['extract']:.1f} s; "
                      f"{r['cpu'] / max(r['clips'], 1):.2f} cpu s/clip; "
                      f"manifest {r['manifest']:.1f} s)")
    devices = ["cpu"]
    if args.device == "auto":
        devices += ["cuda"] if torch.cuda.is_available() else []
    elif args.device != "cpu":
        devices = [args.device]
    if not torch.cuda.is_available():
        print("\ncuda: torch.cuda.is_available() is False here; GPU detector not measured")
    print("\ndetector alone (clip_mouths with one FaceDetector reused, 1 process)")
    for device in devices:
        for corpus, (n, seconds, ext, what) in corpora.items():
            videos = _videos(os.path.join(work, corpus, "corpus"), ext)
            r = _in_fresh_process(_detector_run, videos, device)
            print(f"  {corpus:8s} {device}: {r['clips'] / r['run']:.2f} clips/s, "
                  f"{r['seconds'] / r['run']:.2f}x real time; detector load "
                  f"{r['load']:.2f} s cold ({r['import']:.1f} s torch + avse import), "
                  f"{r['load_again']:.2f} s again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
