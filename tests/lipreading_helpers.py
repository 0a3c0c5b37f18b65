"""Tiny LRS2-layout shards for the lip-reading tests (generated, with a sentencepiece model)."""
import os

import numpy as np

from avse.data.shards import write_split

SYLLABLES = ["KA", "TO", "MI", "SU", "PE", "LO", "NA", "RI"]


def _clip(rng, seconds):
    """Words of 1-2 syllables with timings: ``(n_frames, [[word, start, end]], [(syl, a, b)])``."""
    dur = float(rng.uniform(*seconds))
    t, words, syls = 0.1, [], []
    while True:
        w_len = float(rng.uniform(0.2, 0.45))
        if t + w_len > dur - 0.05:
            break
        parts = list(rng.choice(len(SYLLABLES), int(rng.integers(1, 3))))
        words.append(["".join(SYLLABLES[p] for p in parts), round(t, 2), round(t + w_len, 2)])
        syls += [(p, t + k * w_len / len(parts), t + (k + 1) * w_len / len(parts))
                 for k, p in enumerate(parts)]
        t += w_len + float(rng.uniform(0.03, 0.15))
    return int(round(dur * 25)), words, syls


def _lips(n, syls, kind):
    """``"index"``: frame t is uniformly t (a cut can be traced back); ``"syllables"``: the
    frames of syllable s are uniformly 40 + 25 s (readable lips), 0 between words."""
    if kind == "index":
        values = np.arange(n, dtype=np.uint8)
    else:
        values = np.zeros(n, np.uint8)
        for s, a, b in syls:
            values[int(round(a * 25)):int(round(b * 25))] = 40 + 25 * s
    return np.broadcast_to(values[:, None, None], (n, 88, 88)).copy()


def _bad_sample(key, kind, sp):
    lips = np.zeros((40, 88, 88), np.uint8)
    info = {"spk": key.split("/")[0], "duration": 1.6, "text": "KA TO",
            "tokens": sp.encode("KA TO")}
    if kind == "no_text":
        info["text"] = " "
    elif kind == "no_lips":
        lips = np.zeros((40, 88), np.uint8)
    elif kind == "ctc_too_short":
        lips = lips[:1]
    sample = {"__key__": key, "lips.npy": lips, "json": info}
    if kind == "bad_json":  # no json member at all
        del sample["json"]
    return sample


def make_corpus(root, rng, n_clips=8, seconds=(2.0, 3.2), bad=(), splits=None, lips="index"):
    """An LRS2-like ``root/{tokenizer/spm.model, shards/<split>}`` (``splits``: ``{split:
    clips}``, default ``{"train": n_clips}``) plus ``bad`` samples in the first split (kinds:
    no_text, no_lips, bad_json, ctc_too_short). Returns ``(first split folder, sentencepiece
    processor, {key: sample} of the first split)``."""
    import sentencepiece as spm

    splits = splits or {"train": n_clips}
    clips = {name: [_clip(rng, seconds) for _ in range(n)] for name, n in splits.items()}
    texts = [" ".join(w[0] for w in c[1]) for cs in clips.values() for c in cs]
    os.makedirs(root / "tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 4), model_prefix=str(root / "tokenizer" / "spm"),
        vocab_size=30, hard_vocab_limit=False, character_coverage=1.0, unk_id=0, bos_id=-1,
        eos_id=-1, pad_id=-1, num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizer" / "spm.model"))
    meta = {"tokenizer": "../../tokenizer/spm.model", "vocab_size": sp.get_piece_size(),
            "crop": "lrs2"}
    first = None
    for s, (name, cs) in enumerate(clips.items()):
        samples = []
        for i, (n, words, syls) in enumerate(cs):
            key = f"{1000 * (s + 1) + i}/main/00001"
            text = " ".join(w[0] for w in words)
            info = {"spk": key.split("/")[0], "duration": n / 25, "text": text, "words": words,
                    "tokens": sp.encode(text)}
            samples.append({"__key__": key, "lips.npy": _lips(n, syls, lips), "json": info})
        if first is None:
            samples += [_bad_sample(f"9{i:03d}/main/00001", kind, sp) for i, kind in enumerate(bad)]
            first = (str(root / "shards" / name), {x["__key__"]: x for x in samples})
        write_split(samples, str(root / "shards" / name), shard_size=3, multiple=2,
                    extra_meta={**meta, "split": name})
    return first[0], sp, first[1]
