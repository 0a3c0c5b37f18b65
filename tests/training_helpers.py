"""Tiny generated corpora in the recipes' output layout (shards/<split>, lists/), for tests
that train: noise audio, random lips or embeddings, a few utterances per speaker."""
import os

import numpy as np

from avse.data import lists
from avse.data.shards import write_split


def make_split(out, split, speakers, n_per_spk, visual, rng, shard_size=4, multiple=2):
    """Write ``out/shards/<split>``; returns the utterance rows (key, spk, set, duration)."""
    samples = []
    for s in speakers:
        for c in range(n_per_spk):
            frames = int(rng.integers(30, 50))
            key = f"{s}/vid{split}{c:05d}x/{c:05d}"
            sample = {"__key__": key,
                      "flac": (0.3 * rng.standard_normal(frames * 640)).clip(-1, 1)
                      .astype(np.float32),
                      "json": {"key": key, "spk": s, "split": split, "duration": frames / 25,
                               "num_frames": frames}}
            if visual == "lips":
                sample["lips.npy"] = rng.integers(0, 255, (frames, 88, 88), dtype=np.uint8)
            else:
                sample["emb.npy"] = rng.standard_normal((frames, 512)).astype(np.float16)
            samples.append(sample)
    write_split(samples, os.path.join(out, "shards", split), shard_size=shard_size,
                multiple=multiple)
    return [{"key": x["__key__"], "spk": x["json"]["spk"], "set": split,
             "duration": x["json"]["duration"]} for x in samples]


def tiny_corpus(root, train_rows=16, valid_rows=2, test_rows=3, seed=0, visual="lips"):
    """train/val/test shards and the lists ``lists/{train,val,test}_2mix.csv``; returns root."""
    rng = np.random.default_rng(seed)
    splits = (("train", ["id00001", "id00002", "id00003", "id00004"], 3, train_rows),
              ("val", ["id00001", "id00002"], 1, valid_rows),
              ("test", ["id00005", "id00006", "id00007"], 1, test_rows))
    for split, spks, n, count in splits:
        pool = make_split(root, split, spks, n, visual, rng)
        rows = lists.generate_mixtures(pool, count, 2, (-5, 5), seed=1, mix_set=split)
        lists.write_list(rows, os.path.join(root, "lists", f"{split}_2mix.csv"))
    return str(root)
