"""Training-data throughput (local shards / HTTP shards / wav+npy files) and list-mode random access.

Generates ``--utts`` random 6 s utterances (88x88 uint8 lips at 25 fps, 16 kHz audio) of
``--speakers`` speakers, writes them once as shards and once as ``<key>.wav`` +
``<key>.npy`` files, then prints mixed 4 s training examples per second for each
``--workers`` count, side by side:

- shards: :func:`avse.data.loaders.make_train_loader` on the local split folder (the
  WebDataset pipeline; one read per utterance, interferers from the shuffle buffer);
- http: the same split served by a local http server (:func:`avse.data.remote.serve_folder`,
  a thread of this process, 127.0.0.1) and read through its URL prefix;
- files: a map-style Dataset that, per example, reads the target's wav + npy and one
  interferer's wav of another speaker (as SEANet's loader does), then crops, mixes at
  a random SNR and peak-normalises the same way.

Before each run the OS page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``)
when the machine allows it (root, writable /proc/sys); the output says whether it was.

Then list mode's random access by key (reading a sample's flac + lips.npy bytes, keys in
random order): :class:`avse.data.shards.ShardIndex` (a tar-header index) against ``wids``
(``pip install wids``; not an AVSE dependency; mmap'ed shards indexed by integer, so a
key -> (shard, index) map is built here), index build time and microseconds per access.

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
from avse.data.remote import serve_folder
from avse.data.shards import (ShardIndex, read_meta, shard_urls, write_speakers_file,
                              write_split)


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
    write_speakers_file(os.path.join(work, "shards"))
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


def drop_page_cache() -> str:
    """Drop the OS page cache; ``""`` when done, else why it could not be."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return ""
    except OSError as err:
        return f"page cache NOT dropped ({err.strerror}: needs root and a writable /proc/sys)"


def shard_index_reader(split_dir, field):
    """ShardIndex: ``key -> (flac bytes, field bytes)``."""
    index = ShardIndex(split_dir)
    return lambda key: (index.read(key, "flac"), index.read(key, field))


def wids_reader(split_dir, field):
    """wids over the same shards (read in place), with a key -> global index map."""
    import wids

    meta, urls = read_meta(split_dir), shard_urls(split_dir)
    shards = [{"url": u, "nsamples": n} for u, n in zip(urls, meta["shard_counts"])]
    ds = wids.ShardListDataset(shards, localname=lambda url: url, lru_size=len(urls),
                               transformations=[])
    where, start = {}, 0
    for n in meta["shard_counts"]:
        shard = ds.get_shard(start)[0]
        names = list(shard.reader.names())
        for j, files in enumerate(shard.samples):
            where[names[files[0]].split(".", 1)[0]] = start + j
        start += n

    def read(key):
        sample = ds[where[key]]
        return sample[".flac"].getvalue(), sample["." + field].getvalue()  # BytesIO of mmap bytes
    return read


def random_access(split_dir, keys, field="lips.npy"):
    """Per reader: page cache dropped, index built, ``keys`` read twice (cold, then warm)."""
    try:
        import wids  # noqa: F401
        readers = {"ShardIndex": shard_index_reader, "wids": wids_reader}
    except ImportError:
        print("random access wids: not installed (pip install wids) - skipped")
        readers = {"ShardIndex": shard_index_reader}
    for name, make in readers.items():
        cache = drop_page_cache() or "page cache dropped"
        t0 = time.perf_counter()
        read = make(split_dir, field)
        times = [1000 * (time.perf_counter() - t0)]
        for _ in range(2):
            t0 = time.perf_counter()
            n = sum(len(a) + len(b) for a, b in map(read, keys))
            times.append(1e6 * (time.perf_counter() - t0) / len(keys))
        print(f"random access {name:10s}: index {times[0]:7.1f} ms, per key {times[1]:6.1f} us "
              f"cold / {times[2]:6.1f} us warm ({n / len(keys) / 1e6:.2f} MB flac + {field}; "
              f"{cache})")


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
    parser.add_argument("--repeats", type=int, default=3, help="runs per loader (best, median)")
    parser.add_argument("--accesses", type=int, default=2000, help="random reads by key")
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
              f"load average {os.getloadavg()[0]:.1f}; batch {args.batch_size} x 4 s, "
              f"2-speaker mixtures; examples/s after the first batch; shuffle buffer "
              f"{args.shuffle_buffer}")
        with serve_folder(work) as url:
            for nw in args.workers:
                makers = {
                    "shards": lambda: make_train_loader(  # noqa: E731
                        os.path.join(work, "shards"), config, args.batch_size, num_workers=nw,
                        epoch_steps=args.batches, shuffle_buffer=args.shuffle_buffer),
                    "http": lambda: make_train_loader(  # noqa: E731
                        f"{url}/shards", config, args.batch_size, num_workers=nw,
                        epoch_steps=args.batches, shuffle_buffer=args.shuffle_buffer),
                    "wav+npy": lambda: torch.utils.data.DataLoader(  # noqa: E731
                        FileMixDataset(os.path.join(work, "files"), utts, config),
                        batch_size=args.batch_size, shuffle=True, num_workers=nw,
                        collate_fn=collate_examples, generator=torch.Generator().manual_seed(0))}
                for name, make in makers.items():
                    rates, caches = [], set()
                    for _ in range(args.repeats):
                        caches.add(drop_page_cache() or "page cache dropped")
                        loader = make()
                        rates.append(timed(loader, min(args.batches, len(loader)))[0])
                    print(f"{name:8s} workers={nw}: {max(rates):6.1f} examples/s best of "
                          f"{len(rates)} (median {np.median(rates):6.1f}; {'; '.join(caches)})")
        keys = [utts[i][0] for i in np.random.default_rng(0).integers(len(utts), size=args.accesses)]
        random_access(os.path.join(work, "shards"), keys)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
