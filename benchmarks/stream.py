"""Streaming compute time per block and real-time factor of the causal models, one thread.

Each model (untrained weights: the compute does not depend on them) streams ``--seconds`` of
audio in blocks of ``--block`` samples through :class:`avse.streaming.StreamingModel`, with
each lip frame pushed with the block in which it starts; per block, the wall time of
``push`` (the visual encoder's step included when a frame arrives) gives mean, p95 and max
in ms, and RTF = total compute / audio duration (wall time; "CPU RTF" counts the thread's CPU
time only, which a machine shared with other jobs inflates less: both are printed, with the
load average). Latency columns: the model's algorithmic
latency (``model.latency_ms()``, one encoder window) and the stream's (block + K - S: the
output of a sample comes out with the block after it has completed a hop). A model whose
parts have no streaming form is listed with the reason.

    python benchmarks/stream.py                          # demo, AV-ConvTasNet, AV-DPRNN causal
    python benchmarks/stream.py --block 320 --seconds 20
    python benchmarks/stream.py --yaml egs/voxceleb2/hparams/avsep_causal.yaml

Prints numbers; asserts nothing.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SR, SPF = 16000, 640
DEFAULT = [("demo_causal", "egs/synthetic/hparams/demo_causal.yaml"),
           ("convtasnet_causal", "egs/voxceleb2/hparams/convtasnet_causal.yaml"),
           ("dprnn_causal", "egs/voxceleb2/hparams/dprnn_causal.yaml"),
           ("avsep_causal", "egs/voxceleb2/hparams/avsep_causal.yaml")]
# without its own yaml, a causal model derived from the offline one (causal=True, cLN V-TCN)
DERIVED = {"dprnn_causal": "egs/voxceleb2/hparams/dprnn.yaml"}


def load_model(path: str):
    """The ``model`` of an experiment yaml (placeholders filled with a temporary folder)."""
    from hyperpyyaml import load_hyperpyyaml

    with tempfile.TemporaryDirectory() as tmp, open(path) as f:
        hp = load_hyperpyyaml(f, {"data_folder": tmp, "output_folder": tmp})
    return hp["model"].eval()


def derive_causal(path: str):
    """The model of an offline yaml rebuilt with ``causal=True`` and a cLN V-TCN."""
    from avse.models import AVSEModel

    config = dict(load_model(path).config)
    visual = config["visual_encoder"]
    config["visual_encoder"] = {**(visual if isinstance(visual, dict) else {"type": visual}),
                                "norm": "cln"}
    config.pop("causal", None)
    return AVSEModel(**config, causal=True).eval()


def run(model, block: int, seconds: float, seed: int = 0) -> dict:
    """Stream ``seconds`` of random audio (and frames) in ``block``-sample pushes; timings."""
    from avse.streaming import StreamingModel

    g = torch.Generator().manual_seed(seed)
    length = int(seconds * SR)
    frames = -(-length // SPF)
    audio = torch.randn(1, length, generator=g)
    if model.visual_input == "emb":
        visual = torch.randn(1, frames, 512, generator=g)
    else:
        visual = torch.randint(0, 256, (1, frames, 88, 88), dtype=torch.uint8, generator=g)
    stream = StreamingModel(model, batch=1)

    def one_pass(limit):
        times, cpu, sent = [], 0.0, 0
        for start in range(0, limit, block):
            end = min(start + block, limit)
            upto = min(-(-end // SPF), frames)
            new = visual[:, sent:upto] if upto > sent else None
            sent = upto
            c0, t0 = time.thread_time(), time.perf_counter()
            stream.push(audio[:, start:end], new)
            times.append(time.perf_counter() - t0)
            cpu += time.thread_time() - c0
        stream.flush()
        stream.reset()
        return np.array(times), cpu

    with torch.inference_mode():
        one_pass(min(length, SR))  # warm-up: one second
        times, cpu = one_pass(length)
    hop = model.audio_encoder.stride
    return {"mean": 1e3 * times.mean(), "p95": 1e3 * np.percentile(times, 95),
            "max": 1e3 * times.max(), "rtf": times.sum() / (length / SR),
            "cpu_rtf": cpu / (length / SR),
            "latency": model.latency_ms(),
            "stream_latency": 1e3 * (block + model.audio_encoder.kernel_size - hop) / SR,
            "params": sum(p.numel() for p in model.parameters()) / 1e6}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", type=int, default=160, help="samples per push (160 = 10 ms)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--yaml", action="append", default=None,
                        help="experiment yamls instead of the default causal models")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = DEFAULT if not args.yaml else [
        (os.path.splitext(os.path.basename(p))[0], p) for p in args.yaml]
    print(f"block {args.block} samples ({1e3 * args.block / SR:g} ms), {args.seconds:g} s of "
          f"audio, {args.threads} thread(s), torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    head = (f"{'model':20s} {'params M':>8s} {'latency ms':>10s} {'stream lat. ms':>14s} "
            f"{'mean ms':>8s} {'p95 ms':>7s} {'max ms':>7s} {'RTF':>6s} {'CPU RTF':>7s}")
    print(head)
    print("-" * len(head))
    for name, path in models:
        full = path if os.path.isabs(path) else os.path.join(REPO, path)
        try:
            if os.path.isfile(full):
                model = load_model(full)
            elif name in DERIVED:
                model = derive_causal(os.path.join(REPO, DERIVED[name]))
                name += "*"
            else:
                print(f"{name:20s} (no yaml: {path})")
                continue
            r = run(model, args.block, args.seconds)
        except ValueError as err:
            print(f"{name:20s} no streaming form: {err}")
            continue
        print(f"{name:20s} {r['params']:8.2f} {r['latency']:10.2f} {r['stream_latency']:14.2f} "
              f"{r['mean']:8.2f} {r['p95']:7.2f} {r['max']:7.2f} {r['rtf']:6.3f} {r['cpu_rtf']:7.3f}")
    if any(name in DERIVED and not os.path.isfile(os.path.join(REPO, path))
           for name, path in models):
        print("* no causal yaml yet: the offline yaml's model with causal=True and a cLN V-TCN")


if __name__ == "__main__":
    main()
