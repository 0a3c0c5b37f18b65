"""Training-data throughput: dynamic mixing from shards vs. per-file wav + npy loading.

Generates ``--utts`` random 6 s utterances (88x88 uint8 lips at 25 fps, 16 kHz audio) of
``--speakers`` speakers, writes them once as shards and once as ``<key>.wav`` +
``<key>.npy`` files, then prints mixed 4 s training examples per second for each
``--workers`` count:

- shards: :func:`avse.data.loaders.make_train_loader` (one read per utterance; the
  interferers come from the shuffle buffer);
- files: a map-style Dataset that, per example, reads the target's wav + npy and one
  interferer's wav of another speaker (as SEANet's loader does), then crops, mixes at
  a random SNR and peak-normalises the same way.

The files were just written, so both read from the page cache: this compares decoding
and mixing cost, not disk speed. Default run < 1 minute on 2 cores.

    python benchmarks/pipeline.py --utts 200 --speakers 20 --workers 1 2
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

from avse.data.align import SAMPLES_PER_FRAME
from avse.data.mixing import MixtureConfig, fit_length, mix_sources, random_crop
from avse.data.loaders import collate_examples, make_train_loader
from avse.data.shards import write_split


def make_data(work, n_utts, n_spk, seconds, seed=0):
    """Write the same utterances as shards (``work/shards``) and wav + npy (``work/files``)."""
    rng = np.random.default_rng(seed)
    n_frames = int(seconds * 25)
    samples = []
    for i in range(n_utts):
        spk = f"id{i % n_spk:05d}"
        key = f"{spk}/benchVid{i:05d}/00001"
        wav = (0.1 * rng.standard_normal(n_frames * SAMPLES_PER_FRAME)).astype(np.float32)
        lips = rng.integers(0, 256, (n_frames, 88, 88), dtype=np.uint8)
        samples.append({"__key__": key, "flac": wav, "lips.npy": lips,
                        "json": {"key": key, "spk": spk, "duration": seconds,
                                 "num_frames": n_frames}})
        base = os.path.join(work, "files", key)
        os.makedirs(os.path.dirname(base), exist_ok=True)
        sf.write(base + ".wav", wav, 16000, subtype="PCM_16")
        np.save(base + ".npy", lips)
    write_split(samples, os.path.join(work, "shards"), shard_size=25, multiple=2)
    return [(s["__key__"], s["json"]["spk"]) for s in samples]


class FileMixDataset(torch.utils.data.Dataset):
    """Per-file loading: target wav + npy and an interferer wav read for every example."""

    def __init__(self, root, utts, config: MixtureConfig, seed=0):
        self.root, self.utts, self.config, self.seed = root, utts, config, seed
        self.speakers = sorted({spk for _, spk in utts})

    def __len__(self):
        return len(self.utts)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        key, spk = self.utts[i]
        others = [u for u in self.utts if u[1] != spk]
        inter_key = others[int(rng.integers(len(others)))][0]
        wav, _ = sf.read(os.path.join(self.root, key + ".wav"), dtype="float32")
        lips = np.load(os.path.join(self.root, key + ".npy"))
        inter, _ = sf.read(os.path.join(self.root, inter_key + ".wav"), dtype="float32")
        wav, lips = random_crop(wav, lips, self.config.crop_frames, rng)
        snr = self.config.sample_snrs(1, rng)
        mixture, target, interference = mix_sources(wav, [fit_length(inter, len(wav), rng)], snr)
        mixture, target, interference = self.config.normalise_signals(mixture, target, interference)
        return {"mixture": mixture, "target": target, "interference": interference,
                "visual": lips, "n_frames": len(lips), "pad_frames": self.config.crop_frames,
                "key": key, "speaker": self.speakers.index(spk), "snrs": snr,
                "interferer_keys": [inter_key], "lips_key": key}


def timed(loader, n_batches):
    """(examples/s after the first batch, seconds to the first batch) over ``n_batches``."""
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t1 = time.perf_counter()
    n = 0
    for _ in range(n_batches - 1):
        n += len(next(it))
    t2 = time.perf_counter()
    del it
    return n / (t2 - t1), t1 - t0, len(first)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--utts", type=int, default=200)
    parser.add_argument("--speakers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=6.0, help="utterance length")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="timed batches per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shuffle_buffer", type=int, default=64)
    parser.add_argument("--work_dir", help="default: a temporary folder (removed afterwards)")
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="avse-bench-pipeline-")
    try:
        t0 = time.time()
        utts = make_data(work, args.utts, args.speakers, args.seconds)
        print(f"wrote {args.utts} x {args.seconds:.0f} s utterances of {args.speakers} speakers "
              f"as shards and wav+npy in {time.time() - t0:.1f} s", file=sys.stderr)
        config = MixtureConfig(crop_seconds=4.0)
        print(f"cpu cores: {os.cpu_count()}; torch threads: {torch.get_num_threads()}; "
              f"batch {args.batch_size} x 4 s, 2-speaker mixtures")
        for nw in args.workers:
            loader = make_train_loader(os.path.join(work, "shards"), config, args.batch_size,
                                       num_workers=nw, epoch_steps=args.batches,
                                       shuffle_buffer=args.shuffle_buffer)
            rate, startup, _ = timed(loader, args.batches)
            print(f"shards   workers={nw}: {rate:6.1f} examples/s "
                  f"(first batch after {startup:.2f} s, buffer {args.shuffle_buffer})")
            files = torch.utils.data.DataLoader(
                FileMixDataset(os.path.join(work, "files"), utts, config),
                batch_size=args.batch_size, shuffle=True, num_workers=nw,
                collate_fn=collate_examples, generator=torch.Generator().manual_seed(0))
            rate, startup, _ = timed(files, min(args.batches, len(files)))
            print(f"wav+npy  workers={nw}: {rate:6.1f} examples/s "
                  f"(first batch after {startup:.2f} s)")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
