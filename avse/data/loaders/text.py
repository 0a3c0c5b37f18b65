"""Lips + transcripts for lip reading: ``(lips, tokens, text, key)`` batches from LRS-layout shards.

Per DDP rank and DataLoader worker, a ``wds.DataPipeline`` of these stages::

    shard URLs of one or more splits (local, http(s)://, pipe:; avse.data.remote)
      -> node split by rank, then worker split (avse.data.partition)
      -> train: each pass in a new random order, endlessly; eval: one pass in order
      -> tar_samples: only the ``lips.npy`` (face shards: ``face.npy`` + ``facelm.npy``, the
         model's ``mouth_crop`` cut from each whole clip, :mod:`avse.data.loaders.face_crops`)
         and ``json`` members are read (a tar cut short loses the sample being read and the
         rest of that shard: ``bad_tar``)
      -> clips: a clip longer than the current maximum (``curriculum``) is cut at word
         boundaries (the json's ``words`` timings) into segments, each with its words'
         tokens re-encoded by the split's sentencepiece model; bad samples are skipped
         and counted (:data:`SKIP_REASONS`; ``loader.faults``, per rank), never raised
      -> train: shuffle buffer of ``shuffle_buffer`` clips
      -> batches: lips padded by repeating the last frame, tokens padded with 0,
         relative lengths (SpeechBrain's convention) -> :class:`TextBatch`

Training yields exactly ``epoch_steps`` batches per rank and epoch (its workers share them;
:class:`avse.data.loaders.dynamic.EpochLoader`), so no rank waits on another; evaluation
reads each shard of the split once, on one (rank, worker), and keeps the last short batch.

Curriculum (the lip-reading literature's "short clips first"): ``[[1, 2.0], [3, 4.0],
[6, null]]`` allows clips up to 2 s from epoch 1, 4 s from epoch 3 and any length from
epoch 6 (before the first named epoch, the first maximum holds). A clip over the maximum
is cut into consecutive segments of whole words (:func:`cut_at_words`); a single word
longer than the maximum makes a segment of its own. This is how the LRS2 ``pretrain``
split (long clips with word timings) is used.

Example
-------
>>> import tempfile
>>> from avse.data.shards import write_split
>>> d = tempfile.mkdtemp()
>>> utts = [{"__key__": f"v{i}/main/00001", "lips.npy": np.zeros((30 + i, 88, 88), np.uint8),
...          "json": {"spk": f"v{i}", "duration": 1.2, "text": "A B", "tokens": [3, 4, 5]}}
...         for i in range(4)]
>>> meta = write_split(utts, d, shard_size=2)
>>> batch = next(iter(make_text_loader(d, batch_size=2, stage="test")))
>>> tuple(batch.lips.shape), batch.lengths.tolist(), batch.tokens.tolist(), batch.texts
((2, 31, 88, 88), [0.967741..., 1.0], [[3, 4, 5], [3, 4, 5]], ['A B', 'A B'])
"""
from __future__ import annotations

import json
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field, fields
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from avse.data.align import FPS
from avse.data.curriculum import check_curriculum, ctc_frames_needed, cut_at_words, max_seconds_at
from avse.data.loaders.bad_samples import FaultLog
from avse.data.loaders.dynamic import EpochLoader, count, shuffled_passes
from avse.data.loaders.face_crops import face_crop, mouth_fields, mouths_field, read_mouths
from avse.data.mixing import pad_to
from avse.data.partition import (check_shard_split, dist_info, node_splitter, split_shards,
                                 worker_splitter)
from avse.data.remote import check_shards, is_url_spec, read_url, resolve_split, tar_samples
from avse.data.shards import ShardError

logger = logging.getLogger(__name__)

SKIP_REASONS = {
    "bad_json": "no json member, or one that is not a JSON object",
    "no_text": "an empty or missing transcript",
    "no_lips": "no lips.npy member (face shards: face.npy + facelm.npy), or not [Tv, H, W]",
    "no_tokens": "no token ids (and no tokenizer to make them)",
    "no_words": "longer than the curriculum's maximum, without word timings (or a tokenizer) "
                "to cut it",
    "ctc_too_short": "fewer frames than CTC needs for its tokens (training only)",
}


@dataclass(eq=False)
class TextBatch:
    """A batch of lip clips with transcripts. ``B`` clips, ``Tv`` frames @25 fps, ``L`` tokens.

    Attributes
    ----------
    lips : torch.Tensor
        uint8 ``[B, Tv, H, W]`` mouth ROIs, padded by repeating the last frame.
    lengths : torch.Tensor
        float32 ``[B]`` relative lengths of ``lips`` in (0, 1].
    tokens : torch.Tensor
        int64 ``[B, L]`` sentencepiece ids, padded with 0.
    token_lengths : torch.Tensor
        float32 ``[B]`` relative lengths of ``tokens``.
    texts, keys : list of str
        transcripts and keys (a segment of a cut clip: ``<key>_seg<i>``).
    skipped : dict
        samples this worker skipped since its previous batch, by reason (:data:`SKIP_REASONS`).
    faults : list
        the same as ``(shard, key, reason)`` events (with ``bad_tar``, ``bad_shard``); the
        loader moves them into ``loader.faults`` (:mod:`avse.data.loaders.bad_samples`).
    """

    lips: torch.Tensor
    lengths: torch.Tensor
    tokens: torch.Tensor
    token_lengths: torch.Tensor
    texts: list
    keys: list
    skipped: dict = field(default_factory=dict)
    faults: list | None = None

    def __len__(self):
        return len(self.keys)

    def _map(self, fn):
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return TextBatch(**{k: fn(v) if torch.is_tensor(v) else v for k, v in values.items()})

    def to(self, device, non_blocking: bool = False) -> "TextBatch":
        """A copy with every tensor moved to ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "TextBatch":
        return self._map(lambda t: t.pin_memory())


def collate_clips(clips, skipped: dict | None = None) -> TextBatch:
    """Pad clips (``{"key", "lips", "tokens", "text"}``) to the longest and stack them."""
    n_max = max(len(c["lips"]) for c in clips)
    l_max = max(max(len(c["tokens"]) for c in clips), 1)
    tokens = np.zeros((len(clips), l_max), np.int64)
    for i, c in enumerate(clips):
        tokens[i, :len(c["tokens"])] = c["tokens"]
    return TextBatch(
        lips=torch.from_numpy(np.stack([pad_to(None, c["lips"], n_max)[1] for c in clips])),
        lengths=torch.tensor([len(c["lips"]) / n_max for c in clips], dtype=torch.float32),
        tokens=torch.from_numpy(tokens),
        token_lengths=torch.tensor([len(c["tokens"]) / l_max for c in clips], dtype=torch.float32),
        texts=[c["text"] for c in clips], keys=[c["key"] for c in clips],
        skipped=dict(skipped or {}))


# ----------------------------------------------------------------------------- tokenizer
class Tokenizer:
    """The sentencepiece model of a split (from its bytes: local, http or pipe: alike),
    loaded lazily in each process; picklable for DataLoader workers."""

    def __init__(self, model: bytes, where: str):
        self.model, self.where, self._sp = model, where, None

    def __getstate__(self):
        return {**self.__dict__, "_sp": None}

    def _processor(self):
        if self._sp is None:
            import sentencepiece as spm

            try:
                self._sp = spm.SentencePieceProcessor(model_proto=self.model)
            except (RuntimeError, TypeError) as err:
                raise ShardError(f"{self.where}: not a sentencepiece model ({err})") from None
        return self._sp

    def encode(self, text: str) -> list:
        return list(self._processor().encode(text))

    def decode(self, ids) -> str:
        return self._processor().decode([int(i) for i in ids])

    def __len__(self):
        return self._processor().get_piece_size()


def tokenizer_location(split) -> str | None:
    """Where the sentencepiece model named by a split's meta.json (``tokenizer``, relative to
    the split folder) is: a path or http(s) URL; None when meta.json names none or the split
    is given by ``pipe:`` commands (pass ``tokenizer=`` then)."""
    rel = split.meta.get("tokenizer")
    if not rel:
        return None
    if split.local_dir is not None:
        return posixpath.normpath(posixpath.join(split.local_dir, rel))
    first = split.urls[0]
    if first.startswith("pipe:"):
        return None
    base = first.rsplit("/", 1)[0]
    scheme, _, path = base.partition("://")
    return f"{scheme}://{posixpath.normpath(posixpath.join(path, rel))}" if path else \
        posixpath.normpath(posixpath.join(base, rel))


def load_tokenizer(splits, tokenizer: str | None = None) -> Tokenizer | None:
    """The splits' sentencepiece model (``tokenizer``: a path/URL/``pipe:`` overriding
    meta.json's); the splits must name the same one (meta.json ``tokenizer_sha1``)."""
    sums = {s.meta.get("tokenizer_sha1") for s in splits} - {None}
    if len(sums) > 1:
        raise ShardError(f"{', '.join(s.name for s in splits)}: the splits were tokenized by "
                         "different sentencepiece models (meta.json tokenizer_sha1); re-run the "
                         "recipe's shards stage with one tokenizer")
    where = tokenizer or next((loc for s in splits if (loc := tokenizer_location(s))), None)
    if where is None:
        return None
    data = read_url(where, missing_ok=tokenizer is None)
    if data is None:
        logger.warning("%s: the tokenizer named by meta.json is not there; clips cannot be cut "
                       "and clips without token ids are skipped", where)
        return None
    return Tokenizer(data, where)


def resolve_splits(shards, meta: str | None = None, missing_ok: bool = False) -> list:
    """:func:`avse.data.remote.resolve_split` of a split, or of each of a list of split folders
    or http(s) prefixes (e.g. ``[pretrain, train]``); a list of shard URLs is one split."""
    if isinstance(shards, (list, tuple)) and shards and \
            not any(is_url_spec(str(s)) for s in shards):
        if meta is not None:
            raise ShardError("meta= is for one URL spec, not for a list of split folders")
        return [resolve_split(s, missing_ok=missing_ok) for s in shards]
    return [resolve_split(shards, meta, missing_ok)]


def text_vocab_size(shards, meta: str | None = None) -> int:
    """The sentencepiece vocabulary size of a split (meta.json ``vocab_size``), for the yaml."""
    splits = resolve_splits(shards, meta, missing_ok=True)
    sizes = {s.meta.get("vocab_size") for s in splits}
    if None in sizes or len(sizes) != 1:
        raise ShardError(f"{', '.join(s.name for s in splits)}: meta.json vocab_size "
                         f"{sorted(sizes, key=str)}; shards for lip reading need token ids: run "
                         "the recipe's tokens stage, then its shards stage")
    return int(sizes.pop())


# ----------------------------------------------------------------------------- dataset
class TextDataset(IterableDataset):
    """Lip clips with transcripts over shards; use it through :func:`make_text_loader`.

    ``train=True``: endless shuffled passes, ``epoch_steps`` batches an epoch per rank,
    CTC-infeasible clips skipped. ``train=False``: one pass in shard order. ``mouth_crop``:
    the preset cut from face shards' frames (required by ``face.npy`` shards, else ignored).
    """

    def __init__(self, urls, batch_size: int, train: bool, epoch_steps: int = 0,
                 tokenizer: Tokenizer | None = None, curriculum=None, max_seconds=None,
                 shuffle_buffer: int = 100, seed: int = 0, rank: int = 0, world_size: int = 1,
                 n_local: int = 0, skip_bad_shards: bool = False, mouth_crop=None,
                 visual_field: str = "lips.npy"):
        super().__init__()
        self.urls, self.batch_size, self.train = list(urls), int(batch_size), bool(train)
        self.epoch_steps, self.tokenizer = int(epoch_steps), tokenizer
        self.curriculum, self.max_seconds = check_curriculum(curriculum), max_seconds
        self.shuffle_buffer, self.seed = max(1, int(shuffle_buffer)), int(seed)
        self.rank, self.world_size, self.epoch, self.skip = rank, world_size, 0, 0
        self.n_local, self.skipped, self._warned = n_local, Counter(), set()
        self.skip_bad_shards, self.log = skip_bad_shards, FaultLog(f"rank {rank}", skip_bad_shards)
        self.mouth_crop = face_crop(visual_field, mouth_crop, "the shards")  # None: not face

    def __len__(self):
        if self.train:
            return self.epoch_steps
        return -(-self.n_local // self.batch_size)

    def current_max_seconds(self):
        """The longest clip allowed now (s): the curriculum's at ``self.epoch``, or ``max_seconds``."""
        if self.curriculum:
            return max_seconds_at(self.curriculum, self.epoch)
        return self.max_seconds

    def _skip(self, reason: str, key: str, detail: str = "", url: str = "?"):
        self.skipped[reason] += 1
        self.log.pending.append((url, key, reason))
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("skipping %s (%s%s); further such samples are counted in "
                           "TextBatch.skipped", key, SKIP_REASONS[reason], detail)

    def clips(self, src):
        """Stage: raw samples -> clips ``{key, lips [Tv, H, W], tokens, text}`` (cut, checked)."""
        max_s = self.current_max_seconds()
        max_frames = None if max_s is None else int(round(max_s * FPS))
        for raw in src:
            key, url = raw.get("__key__", "?"), raw.get("__url__", "?")
            try:
                info = json.loads(raw["json"])
                if not isinstance(info, dict):
                    raise ValueError
            except (KeyError, ValueError):
                self._skip("bad_json", key, url=url)
                continue
            text = " ".join(str(info.get("text") or "").split())
            if not text:
                self._skip("no_text", key, url=url)
                continue
            try:
                lips = read_mouths(raw, self.mouth_crop)
                if lips.ndim != 3 or len(lips) == 0:
                    raise ValueError
            except (KeyError, ValueError, OSError):
                self._skip("no_lips", key, url=url)
                continue
            if max_frames is None or len(lips) <= max_frames:
                tokens = info.get("tokens")
                if not tokens and self.tokenizer is not None:
                    tokens = self.tokenizer.encode(text)
                pieces = [(key, lips, tokens, text)]
            elif not info.get("words") or self.tokenizer is None:
                self._skip("no_words", key, "; no tokenizer" if info.get("words") else "", url)
                continue
            else:
                pieces = [(f"{key}_seg{i}", lips[a:b], self.tokenizer.encode(" ".join(ws)),
                           " ".join(ws))
                          for i, (a, b, ws) in enumerate(cut_at_words(info["words"], len(lips),
                                                                      max_s))]
            for k, seg, tokens, words in pieces:
                if not tokens:
                    self._skip("no_tokens", k, url=url)
                elif self.train and len(seg) < ctc_frames_needed(tokens):
                    self._skip("ctc_too_short", k, f": {len(seg)} frames, {len(tokens)} tokens",
                               url)
                else:
                    yield {"key": k, "lips": seg, "tokens": [int(t) for t in tokens], "text": words}

    def shuffle(self, src, rng):
        """Stage: a shuffle buffer of ``shuffle_buffer`` clips."""
        buf = []
        for item in src:
            buf.append(item)
            if len(buf) >= self.shuffle_buffer:
                i = int(rng.integers(len(buf)))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def batches(self, src):
        """Stage: clips -> :class:`TextBatch`. Evaluating, the last short batch is kept, and
        batches are held back by one so that the last carries the skips after it."""
        group, ready = [], None
        for clip in src:
            group.append(clip)
            if len(group) == self.batch_size:
                batch, group = self._collate(group), []
                if self.train:
                    yield batch
                    continue
                if ready is not None:
                    yield ready
                ready = batch
        if self.train:
            return
        if group:
            if ready is not None:
                yield ready
            ready = self._collate(group)
        if ready is not None:
            ready.skipped = dict(Counter(ready.skipped) + self.skipped)
            ready.faults = (ready.faults or []) + self.log.take()
            self.skipped.clear()
            yield ready

    def _collate(self, group):
        batch = collate_clips(group, self.skipped)
        batch.faults = self.log.take()
        self.skipped.clear()
        return batch

    def pipeline(self, rng, worker_id: int = 0, num_workers: int = 1) -> wds.DataPipeline:
        """The batches of one (rank, worker); endless when training."""
        where = f"rank {self.rank} worker {worker_id}"
        self.log = FaultLog(where, self.skip_bad_shards)  # a truncated tar: skipped, counted
        mine = split_shards(self.urls, self.rank, self.world_size, worker_id, num_workers)
        if not mine and self.train:
            raise ShardError(f"{where}: no shard (see check_shard_split)")
        stages = [wds.SimpleShardList(self.urls), node_splitter(self.rank, self.world_size),
                  worker_splitter(worker_id, num_workers)]
        if self.train:
            stages.append(partial(shuffled_passes, rng=rng))
        wanted = tuple(f".{f}" for f in mouth_fields(self.mouth_crop)) + (".json",)
        stages += [partial(tar_samples, select=lambda n: n.endswith(wanted),
                           on_error=self.log.tar_error, skip_unopened=self.skip_bad_shards),
                   partial(count, read=[0]), self.clips]
        if self.train:
            stages.append(partial(self.shuffle, rng=rng))
        return wds.DataPipeline(*stages, self.batches)

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.rank, wid, self.epoch]
                                    + ([self.skip] if self.skip else []))
        if not self.train:  # a validation pass skipped by the Brain (skip >= len): empty
            return iter(()) if self.skip >= len(self) > 0 else iter(self.pipeline(rng, wid, nw))
        left = max(0, self.epoch_steps - self.skip)  # after an intra-epoch resume
        steps = left // nw + (1 if wid < left % nw else 0)
        return iter(self.pipeline(rng, wid, nw).with_epoch(nbatches=steps)) if steps else iter(())


class TextLoader(EpochLoader):
    """An :class:`~avse.data.loaders.dynamic.EpochLoader` over :class:`TextDataset` that adds
    up, in ``skipped`` (a Counter by reason), the samples its workers skipped; ``faults``:
    this rank's totals as the AVSE loaders give them (``skipped``, ``reasons``,
    ``bad_samples``, ``skipped_shards``; :mod:`avse.data.loaders.bad_samples`)."""

    def __init__(self, dataset, num_workers: int = 0, pin_memory: bool = False, **kwargs):
        super().__init__(dataset, num_workers=num_workers, pin_memory=pin_memory, **kwargs)
        self.skipped = Counter()

    def __iter__(self):
        for batch in super().__iter__():
            self.skipped.update(batch.skipped)
            yield batch


def make_text_loader(shards, batch_size: int = 8, stage: str = "train", epoch_steps=None,
                     curriculum=None, max_seconds=None, shuffle_buffer: int = 100, seed: int = 0,
                     num_workers: int = 0, meta: str | None = None, tokenizer: str | None = None,
                     rank: int | None = None, world_size: int | None = None,
                     pin_memory: bool = False, skip_bad_shards: bool = False,
                     mouth_crop: str | None = None) -> TextLoader:
    """A loader of :class:`TextBatch` over the lips and transcripts of LRS-layout shards.

    Arguments
    ---------
    shards : str or list of str
        a split (a local folder, an ``http(s)://`` prefix, or a WebDataset URL spec with
        ``meta``; :func:`avse.data.remote.resolve_split`), or a list of split folders or
        prefixes read together (e.g. ``[.../pretrain, .../train]``).
    batch_size : int
        clips per batch (per rank).
    stage : str
        ``"train"`` (endless, shuffled, ``epoch_steps`` per epoch, CTC-infeasible clips
        skipped) or ``"valid"`` / ``"test"`` (one pass, in order, every clip kept).
    epoch_steps : int, optional
        training batches per epoch on every rank; default ``count // (batch_size * world)``.
    curriculum : list, optional
        ``[[epoch, max_seconds or null], ...]``: the longest clip from each epoch on; longer
        clips are cut at word boundaries (module docstring). The epoch is the one given to
        ``set_epoch`` (the Brain gives SpeechBrain's, from 1).
    max_seconds : float, optional
        a fixed maximum without a curriculum (e.g. to evaluate on cut segments).
    shuffle_buffer, seed, num_workers, pin_memory, rank, world_size :
        as :func:`avse.data.loaders.dynamic.make_train_loader`.
    meta : str, optional
        the split's meta.json location, for a ``pipe:`` URL spec.
    tokenizer : str, optional
        the sentencepiece model (path, URL or ``pipe:``) when meta.json's ``tokenizer``
        cannot be reached from the shards (``pipe:`` specs); needed to cut clips.
    skip_bad_shards : bool
        every local shard of every split must exist and start with a tar header (checked
        here, before training): else one ShardError names the bad ones. True: they are left
        out with a warning (``loader.faults["skipped_shards"]``), and a shard that cannot be
        opened later (http, ``pipe:``) is skipped and counted instead of stopping the run.
    mouth_crop : str, optional
        the model's crop preset (:data:`avse.video.crops.CROP_PRESETS`), cut from face shards
        (``--crop face``; then all the splits): required by them, ignored by mouth crops.

    Bad samples are skipped, never raised: counted by reason in ``loader.skipped`` and in
    ``loader.faults`` (``{"skipped": n, "reasons": {...}, ...}``, per rank).
    """
    if stage not in ("train", "valid", "test"):
        raise ValueError(f"stage must be 'train', 'valid' or 'test', got {stage!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    splits = resolve_splits(shards, meta, missing_ok=True)
    field = mouths_field(splits, mouth_crop)  # lips.npy, or face.npy (needs mouth_crop)
    every = [u for s in splits for u in s.urls]
    counts = [c for s in splits for c in s.meta.get("shard_counts") or
              [s.meta["count"] // max(1, s.meta["num_shards"])] * s.meta["num_shards"]]
    name = ", ".join(s.name for s in splits)
    urls, bad = check_shards(every, name, skip_bad_shards)  # before any step: bad ones named
    counts = [c for u, c in zip(every, counts) if u not in bad]
    rank, world_size = dist_info(rank, world_size)
    train = stage == "train"
    if train:
        check_shard_split(len(urls), world_size, num_workers)
    total = sum(counts) if bad else sum(s.meta["count"] for s in splits)
    if train and epoch_steps is None:
        epoch_steps = total // (batch_size * world_size)
    if train and int(epoch_steps) < 1:
        raise ValueError(f"{name}: epoch_steps {epoch_steps} < 1 ({total} clips, batch_size "
                         f"{batch_size}, {world_size} rank(s)); pass epoch_steps >= 1")
    tok = load_tokenizer(splits, tokenizer)
    if (curriculum or max_seconds) and tok is None:
        raise ShardError(f"{name}: cutting clips (curriculum / max_seconds) re-encodes tokens, "
                         "but no sentencepiece model is named by meta.json or reachable; pass "
                         "tokenizer=")
    n_local = sum(counts[i] for i in range(rank, len(urls), world_size))
    dataset = TextDataset(urls, batch_size, train, epoch_steps or 0, tok, curriculum, max_seconds,
                          shuffle_buffer, seed, rank, world_size, n_local, skip_bad_shards,
                          mouth_crop, field)
    return TextLoader(dataset, num_workers=num_workers, pin_memory=pin_memory,
                      skipped_shards=bad)


__all__ = ["SKIP_REASONS", "TextBatch", "collate_clips", "check_curriculum", "max_seconds_at",
           "cut_at_words", "ctc_frames_needed", "Tokenizer", "tokenizer_location",
           "load_tokenizer", "resolve_splits", "text_vocab_size", "TextDataset", "TextLoader",
           "make_text_loader"]
