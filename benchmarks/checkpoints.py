#!/usr/bin/env python3
"""What complete-or-invisible checkpoints cost: save and verify times against SpeechBrain's.

    python benchmarks/checkpoints.py [--mb 50 200] [--repeats 3] [--dir /tmp/x]

For a model of N MB of float32 parameters (plus AdamW's two moments, like a training
checkpoint), prints the seconds SpeechBrain's ``Checkpointer.save_checkpoint`` takes, the
seconds ``avse.checkpoints.Checkpointer`` takes (temporary folder, sha256 manifest, fsync,
rename), and the seconds to verify the checkpoint when a run starts (sha256 of every file),
best of ``--repeats``.
"""
import argparse
import os
import shutil
import tempfile
import time

import speechbrain as sb
import torch

from avse.checkpoints import Checkpointer, RunState, checkpoint_problem


def _objects(mb: float):
    n = int(mb * 1e6 / 4)
    model = torch.nn.Linear(1024, max(n // 1024, 1), bias=False)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 1024)).sum().backward()
    opt.step()
    return {"model": model, "optimizer": opt, "run_state": RunState()}


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, nargs="+", default=[50, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args(argv)
    print(f"{'model MB':>9} {'ckpt MB':>8} {'speechbrain s':>14} {'avse s':>8} {'verify s':>9}")
    for mb in args.mb:
        objs = _objects(mb)
        root = tempfile.mkdtemp(dir=args.dir)
        try:
            plain = sb.utils.checkpoints.Checkpointer(os.path.join(root, "sb"), recoverables=objs)
            ours = Checkpointer(os.path.join(root, "avse"), recoverables=objs)
            t_sb = _best(lambda: plain.save_and_keep_only(num_to_keep=1), args.repeats)
            t_ours = _best(lambda: ours.save_and_keep_only(num_to_keep=1), args.repeats)
            folder = ours.find_checkpoint().path
            size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            t_verify = _best(lambda: checkpoint_problem(folder), args.repeats)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"{mb:>9.0f} {size:>8.0f} {t_sb:>14.2f} {t_ours:>8.2f} {t_verify:>9.2f}")


if __name__ == "__main__":
    main()
