"""Dynamic mixing: endless training examples mixed on the fly from shards, as a WebDataset pipeline.

Per DDP rank and DataLoader worker, a ``wds.DataPipeline`` of these stages::

    shard URLs (local paths, http(s)://, pipe: commands; avse.data.remote)
      -> node split by rank, then worker split (explicit splitters, avse.data.partition)
      -> each pass over this reader's shards in a new random order, endlessly
         (resampled=True instead: wds.ResampledShards, shards drawn with replacement,
          no split, every reader draws from all shards)
      -> tar_samples: raw samples (bytes per field; wds url_opener + group_by_keys; a tar
         cut short loses the sample being read and the rest of that shard for this pass)
      -> decode a random aligned crop (crop_seconds, starting on a video frame); a bad
         sample (FLAC, npy, a missing field) is skipped, logged and counted
         (:mod:`avse.data.loaders.bad_samples`: ``loader.faults``, per rank)
      -> mix: shuffle buffer of ``shuffle_buffer`` utterances; target = a random buffer
         item; 1 or 2 interferers = buffer items of OTHER speakers, at SNRs relative to
         the target -> (noise) -> (a silent target: conditions absent / sparse) -> peak
         normalise -> (lips moved by a random offset, ``MixtureConfig.av_shift_frames``)

Face shards (a recipe's ``--crop face``: ``face.npy`` face-centred frames + ``facelm.npy``
landmarks) need ``mouth_crop``, the model's crop preset: the decode stage reads the whole
utterance and cuts the preset from all its frames with their landmarks
(:func:`avse.data.loaders.face_crops.cut_mouths`) before the random crop and the lips at
rest, so the examples hold mouth crops as with shards of mouth crops.

With silent-target conditions the decode stage reads the whole utterance (not only the
crop) and keeps its lips at rest (:func:`avse.data.activity.rest_frames`, at most 25
frames, from its longest pause), which stand for the target's face while it is silent.
      -> wds.batched -> AVBatch (+ the worker's skipped samples since its last batch, in
         ``faults``); ``with_epoch``: this worker's share of ``epoch_steps``

The SNR holds on the cropped span the model sees. An example gets fewer interferers
when the buffer holds fewer other speakers than drawn; with none, up to 4 x
``shuffle_buffer`` more utterances are read before a clear error. Every rank yields
exactly ``epoch_steps`` batches per epoch (its workers share them), so no rank waits on
another. Shards are split ``urls[rank::world][worker::workers]``: each is read once per
pass over the split when the count divides by ranks x workers (else a
:class:`~avse.data.partition.ShardSplitWarning`).

Speaker labels: the index of the target's speaker in the sorted speakers of the split,
read from ``speakers.txt`` beside meta.json when it exists and agrees with meta.json's
speaker count (:func:`avse.data.shards.write_speakers_file`), else found by reading only
the ``*.json`` members of the shards. Unknown speakers get -1.

Randomness: one numpy Generator per worker and epoch, seeded by ``(seed, rank, worker,
epoch)``, drives shard order, crops and mixing: reproducible for a fixed number of workers.

Example
-------
>>> import tempfile
>>> from avse.data.shards import write_split
>>> d, rng = tempfile.mkdtemp(), np.random.default_rng(0)
>>> utts = [{"__key__": f"id{s}/vid{u}/00001", "flac": 0.1 * rng.standard_normal(640 * 30),
...          "lips.npy": np.zeros((30, 88, 88), np.uint8), "json": {"spk": f"id{s}"}}
...         for s in range(3) for u in range(2)]
>>> meta = write_split(utts, d, shard_size=3)
>>> loader = make_train_loader(d, MixtureConfig(crop_seconds=1.0), batch_size=2, shuffle_buffer=4)
>>> batch = next(iter(loader))
>>> len(loader), tuple(batch.mixture.shape), tuple(batch.visual.shape), batch.lengths.tolist()
(3, (2, 16000), (2, 25, 88, 88), [1.0, 1.0])
"""
from __future__ import annotations

import json
from functools import partial

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avse.data.activity import rest_frames
from avse.data.loaders.bad_samples import (DATA_ERRORS, BadSample, FaultCounter, FaultLog,
                                           attach, diagnose)
from avse.data.loaders.batch import collate_examples, decode_utterance, finish_example
from avse.data.loaders.face_crops import cut_mouths, face_crop
from avse.data.mixing import MixtureConfig, random_crop
from avse.data.partition import (check_shard_split, dist_info, node_splitter, split_shards,
                                 worker_splitter)
from avse.data.remote import check_shards, resolve_split, tar_samples
from avse.data.shards import (FACE_LANDMARKS_FIELD, ShardError, decode_npy,
                               resolve_visual_field)


def shuffled_passes(src, rng):
    """Stage: the shards of ``src`` (``{"url": ...}`` items), each pass in a new order, endlessly."""
    shards = list(src)
    while True:
        for i in rng.permutation(len(shards)):
            yield dict(shards[i])


def count(src, read: list):
    """Stage: pass items on, counting them in ``read[0]``."""
    for item in src:
        read[0] += 1
        yield item


def check_progress(src, read: list, every: int, where: str, log: FaultLog | None = None):
    """Stage: pass shards on; raise when ``every`` of them gave no sample (``read[0]``, counted
    after reading, stays; with a ``log``: no usable sample)."""
    last, n = read[0], 0
    for shard in src:
        yield shard
        n += 1
        if n % every == 0:
            if read[0] == last:
                bad = (f"; {log.total} bad sample(s) skipped, the last: {log.last}"
                       if log is not None and log.total else "; are the shards empty?")
                raise ShardError(f"{where}: {every} shard(s) read and no sample, e.g. "
                                 f"{shard['url']}{bad}")
            last = read[0]


class DynamicMixDataset(IterableDataset):
    """Endless dynamic mixing over shards; one iteration = this worker's share of an epoch.

    Yields :class:`AVBatch`; use it through :func:`make_train_loader`. ``resampled``:
    draw shards with replacement (``wds.ResampledShards``) instead of splitting them.
    ``mouth_crop``: the preset cut from face shards' frames (required by them, else ignored).
    """

    def __init__(self, urls, config: MixtureConfig, batch_size: int, epoch_steps: int,
                 speakers, visual_field: str, shuffle_buffer: int = 100, seed: int = 0,
                 rank: int = 0, world_size: int = 1, resampled: bool = False,
                 skip_bad_shards: bool = False, mouth_crop: str | None = None):
        super().__init__()
        self.urls, self.config, self.batch_size = list(urls), config, int(batch_size)
        self.epoch_steps, self.visual_field = int(epoch_steps), visual_field
        self.labels = {s: i for i, s in enumerate(speakers or [])}
        self.shuffle_buffer, self.seed = max(1, int(shuffle_buffer)), int(seed)
        self.rank, self.world_size, self.epoch, self.skip = rank, world_size, 0, 0
        self.resampled, self.skip_bad_shards = bool(resampled), bool(skip_bad_shards)
        self.mouth_crop = face_crop(visual_field, mouth_crop, "the shards")  # None: not face

    def __len__(self):
        return self.epoch_steps

    def decode(self, raw, rng):
        """Map stage: a raw sample -> ``{key, spk, wav [640 n], visual [n, ...]}``, a random crop."""
        key, needed = raw["__key__"], ("flac", self.visual_field)
        if self.mouth_crop is not None:  # face frames: their landmarks too
            needed += (FACE_LANDMARKS_FIELD,)
        if any(name not in raw for name in needed):
            raise diagnose(raw.get("__url__"), key, raw, needed)
        try:
            return self._decode(raw, key, rng)
        except DATA_ERRORS as err:
            raise diagnose(raw.get("__url__"), key, raw, needed, err) from err

    def _decode(self, raw, key, rng):
        rest = None
        if self.config.silent_targets or self.mouth_crop is not None:  # the whole utterance
            wav, vis = decode_utterance(key, raw["flac"], raw[self.visual_field])
            if self.mouth_crop is not None:  # face frames -> mouth crops, before any crop
                vis = cut_mouths(vis, decode_npy(raw[FACE_LANDMARKS_FIELD]), self.mouth_crop)
            if self.config.silent_targets:  # lips at rest from the whole utterance's pauses
                rest = rest_frames(wav, vis).copy()  # copies: the buffer keeps crops only
            if self.config.crop_frames is not None:
                wav, vis = (x.copy() for x in random_crop(wav, vis, self.config.crop_frames, rng))
        else:
            wav, vis = decode_utterance(key, raw["flac"], raw[self.visual_field],
                                        self.config.crop_frames, rng)
        spk = json.loads(raw["json"]).get("spk") if "json" in raw else None
        return {"key": key, "spk": spk or key.split("/")[0], "wav": wav, "visual": vis,
                "rest": rest}

    @staticmethod
    def _pick(buf, spk, n, rng):
        used, out = {spk}, []
        for j in rng.permutation(len(buf)):
            if len(out) == n:
                break
            if buf[j]["spk"] not in used:
                out.append(buf[j])
                used.add(buf[j]["spk"])
        return out

    def mix(self, src, rng, where):
        """Stage: decoded utterances -> mixed examples (shuffle buffer, target, interferers)."""
        buf, cfg, cap = [], self.config, 5 * self.shuffle_buffer
        while True:
            while len(buf) < self.shuffle_buffer:
                buf.append(next(src))
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            tgt = buf.pop()
            k, noise, target = cfg.sample_condition(rng)  # k = 0: target + noise
            chosen = self._pick(buf, tgt["spk"], k, rng)
            while k and not chosen and len(buf) < cap:  # only the target's speaker: read on
                buf.append(next(src))
                chosen = self._pick(buf, tgt["spk"], 1, rng)
            if k and not chosen:
                raise ShardError(f"{where}: no utterance of a speaker other than {tgt['spk']} among "
                                 f"{len(buf)} read: the shards seem to hold one speaker each; "
                                 "write shards in shuffled order")
            yield finish_example(
                cfg, tgt["key"], self.labels.get(tgt["spk"], -1), tgt["wav"], tgt["visual"],
                [u["wav"] for u in chosen], cfg.sample_snrs(len(chosen), rng), rng,
                [u["key"] for u in chosen], tgt["key"], crop=True, noise=noise,
                activity=cfg.sample_activity(target, len(tgt["visual"]), rng), rest=tgt["rest"])

    def decoded(self, src, rng, log: FaultLog, read: list):
        """Stage: raw samples -> decoded (:meth:`decode`); a bad one is skipped and logged."""
        for raw in src:
            try:
                item = self.decode(raw, rng)
            except BadSample as bad:
                log.skip(bad)
                continue
            read[0] += 1
            yield item

    def fault_log(self, worker_id: int = 0) -> FaultLog:
        return FaultLog(f"rank {self.rank} worker {worker_id}", self.skip_bad_shards)

    def samples(self, rng, worker_id: int = 0, num_workers: int = 1, log: FaultLog | None = None,
                read: list | None = None) -> wds.DataPipeline:
        """The endless raw samples (``__key__``, ``__url__``, bytes per field) that one
        (rank, worker) reads: a ``wds.DataPipeline`` of the shard stages + tar reading.
        ``log``: where a truncated tar (and, with ``skip_bad_shards``, a shard that cannot be
        read) goes; ``read``: the usable samples, counted by the caller (default: all)."""
        where, counted = f"rank {self.rank} worker {worker_id}", read is None
        read, log = [0] if read is None else read, log or self.fault_log(worker_id)
        if self.resampled:
            shards = [wds.ResampledShards(self.urls, seed=int(rng.integers(2 ** 31)),
                                          worker_seed=lambda: 0, deterministic=True),
                      partial(check_progress, read=read, every=4 * len(self.urls), where=where,
                              log=log)]
        else:
            mine = split_shards(self.urls, self.rank, self.world_size, worker_id, num_workers)
            if not mine:
                raise ShardError(f"{where}: no shard (see check_shard_split)")
            shards = [wds.SimpleShardList(self.urls), node_splitter(self.rank, self.world_size),
                      worker_splitter(worker_id, num_workers), partial(shuffled_passes, rng=rng),
                      partial(check_progress, read=read, every=len(mine), where=where, log=log)]
        reading = partial(tar_samples, on_error=log.tar_error, skip_unopened=self.skip_bad_shards)
        return wds.DataPipeline(*shards, reading, *([partial(count, read=read)] if counted else []))

    def examples(self, rng, worker_id: int = 0, num_workers: int = 1,
                 log: FaultLog | None = None) -> wds.DataPipeline:
        """The endless mixed examples (dicts, before batching) of one (rank, worker):
        :meth:`samples` -> decode (bad samples skipped into ``log``) -> mix."""
        log, read = log or self.fault_log(worker_id), [0]
        return self.samples(rng, worker_id, num_workers, log, read).compose(
            partial(self.decoded, rng=rng, log=log, read=read),
            partial(self.mix, rng=rng, where=f"rank {self.rank} worker {worker_id}"))

    def pipeline(self, rng, worker_id: int = 0, num_workers: int = 1) -> wds.DataPipeline:
        """The endless batches of one (rank, worker): :meth:`examples` -> ``wds.batched``;
        each batch carries the bad samples skipped since the previous one (``faults``)."""
        log = self.fault_log(worker_id)
        return self.examples(rng, worker_id, num_workers, log).compose(
            wds.batched(self.batch_size, collation_fn=collate_examples, partial=False),
            partial(attach, log=log))

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        left = max(0, self.epoch_steps - self.skip)  # after an intra-epoch resume
        steps = left // nw + (1 if wid < left % nw else 0)
        rng = np.random.default_rng([self.seed, self.rank, wid, self.epoch]
                                    + ([self.skip] if self.skip else []))
        pipeline = self.pipeline(rng, wid, nw)
        return iter(pipeline.with_epoch(nbatches=steps)) if steps else iter(())


class EpochLoader(DataLoader):
    """A DataLoader over :class:`DynamicMixDataset` whose epochs are exactly ``len(self)`` batches.

    Each ``iter()`` starts epoch ``self.epoch`` (then counts it up); call ``set_epoch(e)``
    when resuming. Workers are started per epoch, so they see the current epoch.
    ``skip_batches(n)`` makes the next epoch yield ``len - n`` batches (an intra-epoch
    resume), from a stream seeded with ``n`` too (not the skipped run's remaining batches).
    ``faults``: the bad samples this rank skipped since the loader was made
    (:mod:`avse.data.loaders.bad_samples`).
    """

    def __init__(self, dataset, num_workers: int = 0, pin_memory: bool = False,
                 skipped_shards: dict | None = None, **kwargs):
        super().__init__(dataset, batch_size=None, num_workers=num_workers,
                         pin_memory=pin_memory, persistent_workers=False, **kwargs)
        self.epoch, self._skip = 0, 0
        self.fault_counter = FaultCounter(skipped_shards)

    @property
    def faults(self) -> dict:
        """``{"skipped", "reasons", "bad_samples", "skipped_shards", "dropped_rows"}`` of this
        rank, since the loader was made (see :mod:`avse.data.loaders.bad_samples`)."""
        return self.fault_counter.as_dict()

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def skip_batches(self, n: int):
        self._skip = max(0, int(n))

    def __iter__(self):
        self.dataset.epoch, self.dataset.skip = self.epoch, self._skip
        self.epoch, self._skip = self.epoch + 1, 0
        return self.fault_counter.counted(super().__iter__())


def make_train_loader(shard_dir, config: MixtureConfig | None = None, batch_size: int = 8,
                      num_workers: int = 0, epoch_steps: int | None = None,
                      shuffle_buffer: int = 100, seed: int = 0, visual_field: str = "auto",
                      speakers="auto", rank: int | None = None, world_size: int | None = None,
                      strict_split: bool = False, pin_memory: bool = False,
                      meta: str | None = None, resampled: bool = False,
                      skip_bad_shards: bool = False, mouth_crop: str | None = None
                      ) -> EpochLoader:
    """Dynamic-mixing training loader over one shard split.

    Arguments
    ---------
    shard_dir : str or list of str
        where the split is (:func:`avse.data.remote.resolve_split`): a local split folder
        (``shard-*.tar`` + ``meta.json``), an ``http(s)://host/path/<split>`` prefix, or a
        WebDataset URL spec: brace pattern, list of URLs, ``pipe:`` command (e.g.
        ``pipe:aws s3 cp s3://b/train/shard-{000000..000007}.tar -``).
    config : MixtureConfig
        crop length, interferer count/SNR, noise, normalisation (default: ``MixtureConfig()``).
    batch_size : int
        examples per batch (per rank).
    epoch_steps : int, optional
        batches per epoch on every rank; default ``count // (batch_size * world_size)``.
    shuffle_buffer : int
        utterances held per worker; targets and interferers are drawn from it. Memory:
        about ``crop_seconds * (64 kB + 194 kB)`` per item for lips (0.26 MB/s of crop).
    seed : int
        with rank, worker id and epoch, fixes everything.
    visual_field : str
        ``"auto"`` (from meta.json), ``"lips.npy"``, ``"emb.npy"`` or ``"face.npy"``.
    speakers : "auto" or list of str
        speaker label list (see module docstring); pass the training list to other splits.
    rank, world_size : int, optional
        default: torch.distributed, else env RANK/WORLD_SIZE, else 0/1.
    strict_split : bool
        raise instead of warning when shards do not divide by ranks x workers.
    meta : str, optional
        the split's meta.json (path, http(s) URL or ``pipe:`` command) for a URL spec;
        default: beside a local or http pattern's shards (required for ``pipe:``).
    resampled : bool
        draw shards with replacement on every (rank, worker) instead of splitting them
        (``wds.ResampledShards``): any shard count works, epochs stay ``epoch_steps``
        batches per rank, but an utterance may be read more or less often than once.
    skip_bad_shards : bool
        every local shard must exist and start with a tar header (checked here, before
        training): else a ShardError names them. True: such shards are left out with a
        warning (``loader.faults["skipped_shards"]``), and a shard that cannot be opened
        later (http, ``pipe:``) is skipped and counted instead of stopping the run.
    mouth_crop : str, optional
        the model's crop preset (:data:`avse.video.crops.CROP_PRESETS`), cut from face shards
        (``face.npy`` + ``facelm.npy``, a recipe's ``--crop face``) as each utterance is
        decoded (module docstring); required by them, ignored by shards of mouth crops or
        embeddings. The shuffle buffer then holds the cut crops.

    Bad samples (FLAC or npy that do not decode, a missing field, a truncated tar) are
    always skipped, with a warning line naming shard and key, and counted in
    ``loader.faults``; every rank still yields ``epoch_steps`` batches.

    Returns
    -------
    EpochLoader yielding :class:`AVBatch`, ``len() == epoch_steps``.
    """
    config = config or MixtureConfig()
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(speakers, str) and speakers != "auto":
        raise ValueError(f"speakers must be 'auto' or a list of speaker ids, got {speakers!r}")
    split = resolve_split(shard_dir, meta, missing_ok=True)
    info, where = split.meta, split.name
    urls, bad = check_shards(split.urls, where, skip_bad_shards)
    rank, world_size = dist_info(rank, world_size)
    if not resampled:
        check_shard_split(len(urls), world_size, num_workers, strict_split)
    if info.get("speakers", 2) < 2:
        raise ShardError(f"{where}: {info.get('speakers')} speaker(s); mixing needs >= 2")
    n_utts = info["count"]
    if bad and len(info.get("shard_counts") or ()) == len(split.urls):
        n_utts = sum(n for u, n in zip(split.urls, info["shard_counts"]) if u not in bad)
    if epoch_steps is None:
        epoch_steps = n_utts // (batch_size * world_size)
    if epoch_steps < 1:
        raise ValueError(f"{where}: epoch_steps {epoch_steps} < 1 ({n_utts} utterances, "
                         f"batch_size {batch_size}, {world_size} rank(s)); pass epoch_steps >= 1")
    field = resolve_visual_field(info, visual_field)
    mouth_crop = face_crop(field, mouth_crop, where)
    if isinstance(speakers, str):
        speakers = split.speakers(urls, tolerant=True)
    dataset = DynamicMixDataset(urls, config, batch_size, epoch_steps, speakers, field,
                                shuffle_buffer, seed, rank, world_size, resampled,
                                skip_bad_shards, mouth_crop)
    return EpochLoader(dataset, num_workers=num_workers, pin_memory=pin_memory,
                       skipped_shards=bad)
