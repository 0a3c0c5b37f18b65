"""Data loaders: dynamic mixing from shards (training) and VoxMix lists (train/valid/test).

Dynamic mixing (:func:`make_train_loader`), per DDP rank and DataLoader worker::

    shards --split by rank, then by worker--> shuffled shard order, repeated endlessly
      -> decode a random aligned crop (crop_seconds, starting on a video frame)
      -> shuffle buffer of ``shuffle_buffer`` utterances
      -> target = a random buffer item; 1 or 2 interferers = buffer items of OTHER speakers
      -> interferers at SNRs relative to the target -> (noise) -> peak normalise
      -> (lips moved by a random offset, ``MixtureConfig.av_shift_frames``) -> batch

The SNR holds on the cropped span the model sees. An example gets fewer interferers
when the buffer holds fewer other speakers than drawn; with none, up to 4 x
``shuffle_buffer`` more utterances are read before a clear error. Every rank yields
exactly ``epoch_steps`` batches per epoch (its workers share them), so no rank waits on
another. Shards are split ``urls[rank::world][worker::workers]`` (as ``wds.split_by_node``
+ ``wds.split_by_worker``): each is read by exactly one (rank, worker) when the shard
count divides by ranks x workers; else a :class:`ShardSplitWarning` (``strict_split``:
an error), and an error with fewer shards than readers.

List mode (:func:`make_list_loader`) reads VoxMix rows; utterances are read by key with
random access into the (uncompressed) tars: a scan of the tar headers records each
member's offset, so only that index is held in memory, whatever the list size. Rows may
carry noise tuples (target + noise rows included), whose pieces are read the same way
from the MUSAN recipe's shards (``noise_dirs``).

Speaker labels: the index of the target's speaker in the sorted speakers of the split,
read from ``<split>/speakers.txt`` when it exists and agrees with meta.json's speaker
count (:func:`write_speakers_file`), else found by reading only the ``*.json`` members
of the shards (:func:`scan_speakers`). List mode: the sorted target speakers of the
selected rows (as SEANet). Unknown speakers get -1.

Randomness: numpy Generators seeded by ``(seed, rank, worker, epoch)`` (dynamic) or
``(seed, epoch, row)`` (lists; no epoch for valid/test): reproducible for a fixed
number of workers.

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
>>> rows = [voxmix.parse_row("test,test,id0,vid0/00001,0,test,id1,vid1/00001,-2.5,1.1")]
>>> batch = next(iter(make_list_loader(d, rows, stage="test")))
>>> tuple(batch.mixture.shape), batch.snr.tolist(), batch.speaker.tolist()  # 27 frames
((1, 17280), [[-2.5]], [0])
"""
from __future__ import annotations

import io
import json
import math
import tarfile
import warnings
from dataclasses import dataclass, fields

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from avse.data import lists as voxmix
from avse.data.align import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, align_av
from avse.data.mixing import (MixtureConfig, crop_start, fit_length, mix_sources, pad_to,
                              random_crop, shift_visual)
from avse.data.noise import read_noise
from avse.data.shards import ShardError, decode_flac, decode_npy, iter_tar, read_meta, shard_urls
from avse.data.sharding import _member_key, check_shard_split, dist_info, split_shards, split_speakers

VISUAL_KEYS = ("lips.npy", "emb.npy")
STAGE_SETS = {"train": "train", "valid": "val", "test": "test"}


# --------------------------------------------------------------------------- batches
@dataclass(eq=False)
class AVBatch:
    """A batch of mixtures. ``B`` examples, ``T = 640 * Tv`` samples @16 kHz, ``Tv`` frames @25 fps.

    Attributes
    ----------
    mixture, target, interference : torch.Tensor
        float32 ``[B, T]``; ``interference`` = the other speakers (+ noise), i.e.
        ``mixture - target`` (exactly, unless ``normalise="peak_separate"``).
    visual : torch.Tensor
        uint8 ``[B, Tv, 88, 88]`` mouth ROI, or float32 ``[B, Tv, 512]`` lip embeddings.
    lengths : torch.Tensor
        float32 ``[B]`` relative lengths in (0, 1] (SpeechBrain convention); padding is
        zeros (audio) or the repeated last frame (visual).
    keys : list of str
        target utterance keys ``spk/video/clip``.
    speaker : torch.Tensor
        int64 ``[B]`` target speaker label (-1: unknown speaker).
    snr : torch.Tensor
        float32 ``[B, K]`` SNR in dB of each interferer relative to the target; ``K`` is
        the most interferers in the batch, NaN where an example has fewer.
    interferer_keys : list of tuple of str
        the interfering utterances of each example.
    visual_keys : list of str
        whose lips ``visual`` shows (the target, or another utterance when mismatched).
    """

    mixture: torch.Tensor
    target: torch.Tensor
    interference: torch.Tensor
    visual: torch.Tensor
    lengths: torch.Tensor
    keys: list
    speaker: torch.Tensor
    snr: torch.Tensor
    interferer_keys: list
    visual_keys: list

    def __len__(self):
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        return len(self.keys)

    def _map(self, fn):
        return AVBatch(**{f.name: fn(getattr(self, f.name)) if torch.is_tensor(getattr(self, f.name))
                          else getattr(self, f.name) for f in fields(self)})

    def to(self, device, non_blocking: bool = False) -> "AVBatch":
        """A copy with every tensor moved to ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "AVBatch":
        """Used by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())


def collate_examples(examples) -> AVBatch:
    """Pad examples (dicts made by the datasets here) to the longest and stack them."""
    n_max = max(e["pad_frames"] for e in examples)
    cols = {k: [] for k in ("mixture", "target", "interference", "visual")}
    for e in examples:
        for k in ("mixture", "target", "interference"):
            cols[k].append(fit_length(e[k], n_max * SAMPLES_PER_FRAME))
        cols["visual"].append(pad_to(None, e["visual"], n_max)[1])
    visual = np.stack(cols["visual"])
    k_max = max([len(e["snrs"]) for e in examples] + [1])
    snr = np.full((len(examples), k_max), np.nan, np.float32)
    for i, e in enumerate(examples):
        snr[i, :len(e["snrs"])] = e["snrs"]
    return AVBatch(
        mixture=torch.from_numpy(np.stack(cols["mixture"])),
        target=torch.from_numpy(np.stack(cols["target"])),
        interference=torch.from_numpy(np.stack(cols["interference"])),
        visual=torch.from_numpy(visual if visual.dtype == np.uint8 else visual.astype(np.float32)),
        lengths=torch.tensor([e["n_frames"] / n_max for e in examples], dtype=torch.float32),
        keys=[e["key"] for e in examples],
        speaker=torch.tensor([e["speaker"] for e in examples], dtype=torch.int64),
        snr=torch.from_numpy(snr),
        interferer_keys=[tuple(e["interferer_keys"]) for e in examples],
        visual_keys=[e["visual_key"] for e in examples])


def _finish_example(config: MixtureConfig, key, speaker, wav_t, visual, interferers, snrs,
                    rng, inter_keys, visual_key, crop=False, row_noise=(), noise=None):
    """Mix one example: ``wav_t [640 n]``, ``visual [n, ...]``, interferer wavs of any length.

    ``row_noise``: ``(wav [640 n], snr)`` pairs of a list row; they replace the config's
    noise. Without interferers (and row noise) the config's noise is forced. ``noise``
    (a drawn condition's): True forces the config's noise, False leaves it out, None lets
    ``noise_prob`` decide.
    """
    n = len(visual)
    inter = [fit_length(w, len(wav_t), rng if crop else None) for w in interferers]
    if row_noise or noise is False:
        noise, noise_snr = None, None
    else:
        noise, noise_snr = config.sample_noise(len(wav_t), rng,
                                               force=bool(noise) or not interferers)
    mixture, target, interference = mix_sources(
        wav_t, inter + [w for w, _ in row_noise], list(snrs) + [s for _, s in row_noise],
        noise, noise_snr)
    pad_frames = n
    if crop and config.crop_frames is not None:
        start = crop_start(n, config.crop_frames, rng)
        parts = [random_crop(x, visual, config.crop_frames, rng, start)
                 for x in (mixture, target, interference)]
        (mixture, visual), (target, _), (interference, _) = parts
        n, pad_frames = len(visual), config.crop_frames
    mixture, target, interference = config.normalise_signals(mixture, target, interference)
    av_shift = config.sample_av_shift(rng) if crop else 0  # training only; drawn last
    visual = shift_visual(visual, av_shift)
    return {"mixture": mixture, "target": target, "interference": interference, "visual": visual,
            "n_frames": n, "pad_frames": pad_frames, "key": key, "speaker": speaker,
            "snrs": list(snrs), "interferer_keys": list(inter_keys), "visual_key": visual_key,
            "av_shift": av_shift}


# --------------------------------------------------------------------------- helpers


def resolve_visual_key(meta: dict, visual_key: str = "auto") -> str:
    """``"lips.npy"`` or ``"emb.npy"`` from meta.json's ``fields`` (``visual_key="auto"``)."""
    present = [k for k in VISUAL_KEYS if k in meta.get("fields", [])]
    if visual_key == "auto":
        if len(present) != 1:
            raise ShardError(f"visual_key='auto' needs exactly one of {VISUAL_KEYS} in meta.json "
                             f"fields {meta.get('fields')}; pass visual_key explicitly")
        return present[0]
    key = visual_key if visual_key.endswith(".npy") else visual_key + ".npy"
    if key not in present:
        raise ShardError(f"visual_key {visual_key!r}: the shards hold {present or 'no visual field'}")
    return key


def decode_utterance(key: str, flac: bytes, visual: bytes | None = None,
                     crop_frames: int | None = None, rng=None):
    """Decode a shard sample's ``flac`` (+ ``*.npy``) bytes: ``(wav [640 Tv], visual [Tv, ...])``.

    With ``crop_frames``, only a random aligned crop (``rng``) is decoded: a FLAC seek and
    a view into the npy bytes, the same result as :func:`~avse.data.mixing.random_crop`
    on the whole utterance. ``visual=None`` decodes the audio only (``visual`` is None).
    """
    if visual is None or crop_frames is None:
        wav, sr = decode_flac(flac)
        if sr != SAMPLE_RATE:
            raise ShardError(f"{key}: audio at {sr} Hz, expected {SAMPLE_RATE}")
        return (wav, None) if visual is None else align_av(wav, decode_npy(visual), 1)
    buf = io.BytesIO(visual)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(buf))
    shape, fortran, dtype = read_header(buf) if read_header else ((), True, None)
    if fortran or dtype.hasobject or len(shape) < 1:
        return random_crop(*decode_utterance(key, flac, visual), crop_frames, rng)
    with sf.SoundFile(io.BytesIO(flac)) as f:
        if f.samplerate != SAMPLE_RATE or abs(f.frames / SAMPLES_PER_FRAME - shape[0]) > 1:
            raise ShardError(f"{key}: {f.frames} samples at {f.samplerate} Hz do not match "
                             f"{shape[0]} video frames at {FPS} fps")
        n = min(shape[0], -(-f.frames // SAMPLES_PER_FRAME))
        start = crop_start(n, crop_frames, rng)
        stop = min(start + crop_frames, n)
        f.seek(start * SAMPLES_PER_FRAME)
        wav = f.read((stop - start) * SAMPLES_PER_FRAME, dtype="float32")
    frames = np.frombuffer(visual, dtype, count=int(np.prod(shape)), offset=buf.tell())
    visual = frames.reshape(shape)[start:stop].copy()  # a copy: the buffer keeps the crop only
    return fit_length(wav, len(visual) * SAMPLES_PER_FRAME), visual


# --------------------------------------------------------------------------- dynamic mixing
class DynamicMixDataset(IterableDataset):
    """Endless dynamic mixing over shards; one iteration = this worker's share of an epoch.

    Yields :class:`AVBatch`; use it through :func:`make_train_loader`.
    """

    def __init__(self, urls, config: MixtureConfig, batch_size: int, epoch_steps: int,
                 speakers, visual_key: str, shuffle_buffer: int = 100, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        self.urls, self.config, self.batch_size = list(urls), config, int(batch_size)
        self.epoch_steps, self.visual_key = int(epoch_steps), visual_key
        self.labels = {s: i for i, s in enumerate(speakers or [])}
        self.shuffle_buffer, self.seed = max(1, int(shuffle_buffer)), int(seed)
        self.rank, self.world_size, self.epoch, self.skip = rank, world_size, 0, 0

    def __len__(self):
        return self.epoch_steps

    def _utterances(self, urls, rng):
        crop = self.config.crop_frames
        while True:  # endless passes over this worker's shards, each in a new order
            n_read = 0
            for i in rng.permutation(len(urls)):
                for raw in iter_tar(urls[i]):
                    n_read += 1
                    key = raw["__key__"]
                    if "flac" not in raw or self.visual_key not in raw:
                        raise ShardError(f"{urls[i]}: sample {key} lacks flac or {self.visual_key}")
                    wav, vis = decode_utterance(key, raw["flac"], raw[self.visual_key], crop, rng)
                    spk = json.loads(raw["json"]).get("spk") if "json" in raw else None
                    yield {"key": key, "spk": spk or key.split("/")[0], "wav": wav, "visual": vis}
            if not n_read:
                raise ShardError(f"shards {urls} hold no sample")

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

    def _examples(self, urls, rng, where):
        src, buf, cfg, cap = self._utterances(urls, rng), [], self.config, 5 * self.shuffle_buffer
        while True:
            while len(buf) < self.shuffle_buffer:
                buf.append(next(src))
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            tgt = buf.pop()
            k, noise = cfg.sample_kind(rng)  # 0: target + noise (the config has noise)
            chosen = self._pick(buf, tgt["spk"], k, rng)
            while k and not chosen and len(buf) < cap:  # only the target's speaker: read on
                buf.append(next(src))
                chosen = self._pick(buf, tgt["spk"], 1, rng)
            if k and not chosen:
                raise ShardError(f"{where}: no utterance of a speaker other than {tgt['spk']} among "
                                 f"{len(buf)} read from {len(urls)} shard(s): the shards seem to "
                                 "hold one speaker each; write shards in shuffled order")
            yield _finish_example(
                cfg, tgt["key"], self.labels.get(tgt["spk"], -1), tgt["wav"], tgt["visual"],
                [u["wav"] for u in chosen], cfg.sample_snrs(len(chosen), rng), rng,
                [u["key"] for u in chosen], tgt["key"], crop=True, noise=noise)

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        urls = split_shards(self.urls, self.rank, self.world_size, wid, nw)
        if not urls:
            raise ShardError(f"rank {self.rank} worker {wid}: no shard (see check_shard_split)")
        left = max(0, self.epoch_steps - self.skip)  # after an intra-epoch resume
        steps = left // nw + (1 if wid < left % nw else 0)
        rng = np.random.default_rng([self.seed, self.rank, wid, self.epoch]
                                    + ([self.skip] if self.skip else []))
        examples = self._examples(urls, rng, f"rank {self.rank} worker {wid}")
        for _ in range(steps):
            yield collate_examples([next(examples) for _ in range(self.batch_size)])


class EpochLoader(DataLoader):
    """A DataLoader over :class:`DynamicMixDataset` whose epochs are exactly ``len(self)`` batches.

    Each ``iter()`` starts epoch ``self.epoch`` (then counts it up); call ``set_epoch(e)``
    when resuming. Workers are started per epoch, so they see the current epoch.
    ``skip_batches(n)`` makes the next epoch yield ``len - n`` batches (an intra-epoch
    resume), from a stream seeded with ``n`` too (not the skipped run's remaining batches).
    """

    def __init__(self, dataset, num_workers: int = 0, pin_memory: bool = False, **kwargs):
        super().__init__(dataset, batch_size=None, num_workers=num_workers,
                         pin_memory=pin_memory, persistent_workers=False, **kwargs)
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def skip_batches(self, n: int):
        self._skip = max(0, int(n))

    def __iter__(self):
        self.dataset.epoch, self.dataset.skip = self.epoch, self._skip
        self.epoch, self._skip = self.epoch + 1, 0
        return super().__iter__()


def make_train_loader(shard_dir: str, config: MixtureConfig | None = None, batch_size: int = 8,
                      num_workers: int = 0, epoch_steps: int | None = None,
                      shuffle_buffer: int = 100, seed: int = 0, visual_key: str = "auto",
                      speakers="auto", rank: int | None = None, world_size: int | None = None,
                      strict_split: bool = False, pin_memory: bool = False) -> EpochLoader:
    """Dynamic-mixing training loader over one shard split.

    Arguments
    ---------
    shard_dir : str
        a split folder (``shard-*.tar`` + ``meta.json``).
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
    visual_key : str
        ``"auto"`` (from meta.json), ``"lips.npy"`` or ``"emb.npy"``.
    speakers : "auto" or list of str
        speaker label list (see module docstring); pass the training list to other splits.
    rank, world_size : int, optional
        default: torch.distributed, else env RANK/WORLD_SIZE, else 0/1.
    strict_split : bool
        raise instead of warning when shards do not divide by ranks x workers.

    Returns
    -------
    EpochLoader yielding :class:`AVBatch`, ``len() == epoch_steps``.
    """
    config = config or MixtureConfig()
    meta = read_meta(shard_dir)
    urls = shard_urls(shard_dir)
    rank, world_size = dist_info(rank, world_size)
    check_shard_split(len(urls), world_size, num_workers, strict_split)
    if meta.get("speakers", 2) < 2:
        raise ShardError(f"{shard_dir}: {meta.get('speakers')} speaker(s); mixing needs >= 2")
    if epoch_steps is None:
        epoch_steps = meta["count"] // (batch_size * world_size)
    if epoch_steps < 1:
        raise ValueError(f"{shard_dir}: epoch_steps {epoch_steps} < 1 ({meta['count']} utterances, "
                         f"batch_size {batch_size}, {world_size} rank(s)); pass epoch_steps >= 1")
    speakers = split_speakers(shard_dir) if isinstance(speakers, str) else speakers
    dataset = DynamicMixDataset(urls, config, batch_size, epoch_steps, speakers,
                                resolve_visual_key(meta, visual_key), shuffle_buffer, seed,
                                rank, world_size)
    return EpochLoader(dataset, num_workers=num_workers, pin_memory=pin_memory)


# --------------------------------------------------------------------------- list mode
class ShardIndex:
    """Random access by key into uncompressed shards: ``key -> {field: (path, offset, size)}``.

    Built from the tar headers only (no sample data is read); ``keys`` limits what is kept.
    """

    def __init__(self, shard_dirs, keys=None):
        wanted = None if keys is None else set(keys)
        self.entries = {}
        for split_dir in ([shard_dirs] if isinstance(shard_dirs, str) else shard_dirs):
            for url in shard_urls(split_dir):
                with tarfile.open(url) as tar:
                    for m in tar:
                        key, ext = _member_key(m.name)
                        if m.isfile() and (wanted is None or key in wanted):
                            fields_ = self.entries.setdefault(key, {"__url__": url})
                            if fields_["__url__"] == url:  # first split holding a key wins
                                fields_[ext] = (m.offset_data, m.size)

    def read(self, key: str, field: str) -> bytes:
        entry = self.entries[key]
        if field not in entry:
            raise ShardError(f"{entry['__url__']}: utterance {key} has no {field}")
        offset, size = entry[field]
        with open(entry["__url__"], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def load(self, key: str, visual_key: str | None = None):
        """``(wav [T] float32, visual [Tv, ...] or None)``, aligned when visual is read."""
        return decode_utterance(key, self.read(key, "flac"),
                                self.read(key, visual_key) if visual_key else None)


class ListMixDataset(Dataset):
    """VoxMix rows -> examples; item ``(row, epoch)`` (or ``row``). See :func:`make_list_loader`."""

    def __init__(self, rows, index: ShardIndex, config: MixtureConfig, crop: bool, visual_key,
                 speakers, mismatched: dict | None = None, seed: int = 0,
                 noise_index: ShardIndex | None = None):
        self.rows, self.index, self.config, self.crop = rows, index, config, crop
        self.visual_key, self.labels = visual_key, {s: i for i, s in enumerate(speakers or [])}
        self.mismatched, self.seed, self.noise_index = mismatched, seed, noise_index

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, item):
        i, epoch = item if isinstance(item, tuple) else (item, 0)
        mix = self.rows[i]
        rng = np.random.default_rng([self.seed, epoch if self.crop else 0, i])
        n = max(1, int(math.floor(mix.length * FPS + 1e-6)))
        tgt = mix.target
        wav_t, visual = pad_to(*self.index.load(tgt.key, self.visual_key), n)
        visual_key = tgt.key
        if self.mismatched is not None:
            visual_key = self.mismatched[i]
            visual = pad_to(None, decode_npy(self.index.read(visual_key, self.visual_key)), n)[1]
        inter = [self.index.load(s.key)[0][:n * SAMPLES_PER_FRAME] for s in mix.interferers]
        if mix.noise and self.noise_index is None:
            raise voxmix.ListError(f"row {i} ({voxmix.format_row(mix)}) adds noise: pass "
                                   "noise_dirs (the MUSAN recipe's noise shards)")
        row_noise = [(read_noise(self.noise_index, nz.keys, len(wav_t), rng if self.crop else None),
                      nz.snr) for nz in mix.noise]  # from sample 0 for valid/test
        return _finish_example(self.config, tgt.key, self.labels.get(tgt.spk, -1), wav_t, visual,
                               inter, [s.snr for s in mix.interferers], rng,
                               [s.key for s in mix.interferers], visual_key, crop=self.crop,
                               row_noise=row_noise)


class EpochSampler(Sampler):
    """Row indices of one rank, as ``(row, epoch)``; shuffled per epoch when ``shuffle``.

    Shuffled: a permutation of all rows by ``(seed, epoch)``, cut to a multiple of
    ``world_size``, then ``[rank::world]`` (equal counts on every rank). Not shuffled:
    ``range(rank, n, world)`` (ranks may differ by one row). Epochs count up per ``iter()``;
    ``skip`` rows are left out of the next one (an intra-epoch resume).
    """

    def __init__(self, n_rows: int, rank: int = 0, world_size: int = 1, shuffle: bool = False,
                 seed: int = 0):
        self.n, self.rank, self.world, self.shuffle, self.seed = n_rows, rank, world_size, shuffle, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def _indices(self, epoch):
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return perm[:self.n // self.world * self.world][self.rank::self.world].tolist()

    def __len__(self):
        return len(self._indices(0))

    def __iter__(self):
        epoch, skip, self.epoch, self.skip = self.epoch, self.skip, self.epoch + 1, 0
        return iter([(i, epoch) for i in self._indices(epoch)[skip:]])


class ListLoader(DataLoader):
    """A DataLoader with ``set_epoch`` and ``skip_batches`` (for its :class:`EpochSampler`)."""

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def skip_batches(self, n: int):
        """The next epoch starts after its first ``n`` batches (the same rows as without skip)."""
        self.sampler.skip = max(0, int(n)) * self.batch_size


def _select_rows(mixtures, set_name, where):
    sets = sorted({m.set for m in mixtures})
    if set_name in sets:
        return [m for m in mixtures if m.set == set_name]
    if len(sets) == 1:
        return list(mixtures)
    raise voxmix.ListError(f"{where}: no rows of set {set_name!r}; the list holds sets {sets}")


def _mismatch_map(rows, seed):
    """For each row, a key of another utterance of the set whose speaker is not in the row."""
    spk_of = {s.key: s.spk for m in rows for s in m.sources}
    keys, out = sorted(spk_of), {}
    for i, m in enumerate(rows):
        own, rng = {s.spk for s in m.sources}, np.random.default_rng([seed, i, 1])
        picks = [keys[j] for j in rng.integers(0, len(keys), 64)]  # rejection sampling, then
        pool = [k for k in picks if spk_of[k] not in own] or [  # an exhaustive search
            k for k in keys if spk_of[k] not in own]
        if not pool:
            raise voxmix.ListError(f"row {i} ({m.target.key}): no utterance of another speaker "
                                   "in this set for mismatched lips")
        out[i] = pool[0]
    return out


def _noise_index(rows, noise_dirs, where, skip_missing):
    """``(rows, ShardIndex of the rows' noise pieces or None)``; clear errors when missing."""
    noisy = [(i, m) for i, m in enumerate(rows) if m.noise]
    if not noisy:
        return rows, None
    if not noise_dirs:
        i, m = noisy[0]
        raise voxmix.ListError(
            f"{where}: {len(noisy)} row(s) add noise, e.g. row {i} ({voxmix.format_row(m)}), "
            "but no noise shards were given: pass noise_dirs=<the MUSAN recipe's "
            "OUT/shards/<split>> to make_list_loader (yaml: train_noise_shards, "
            "valid_noise_shards, or noise_shards in a test set)")
    rows, index = _index_rows(rows, noise_dirs, lambda m: [k for nz in m.noise for k in nz.keys],
                              where, "noise piece(s)", skip_missing)
    if not rows:
        raise voxmix.ListError(f"{where}: no rows left")
    return rows, index


def _index_rows(rows, dirs, keys_of, where, what, skip_missing):
    """``(rows, ShardIndex)`` over the keys ``keys_of(row)`` of every row in shard ``dirs``;
    keys not found: a ListError naming them, or (``skip_missing``) their rows dropped."""
    dirs = [dirs] if isinstance(dirs, str) else list(dirs)
    needed = {k for m in rows for k in keys_of(m)}
    index = ShardIndex(dirs, needed)
    missing = sorted(needed - set(index.entries))
    if missing:
        msg = (f"{where}: {len(missing)} {what} not found in {', '.join(dirs)}: "
               + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        if not skip_missing:
            raise voxmix.ListError(msg + " (skip_missing=True drops their rows)")
        lost = set(missing)
        rows = [m for m in rows if not any(k in lost for k in keys_of(m))]
        warnings.warn(msg + f"; {len(rows)} row(s) kept", stacklevel=3)
    return rows, index


def make_list_loader(shard_dirs, list_path, stage: str = "test",
                     config: MixtureConfig | None = None, batch_size: int = 1,
                     num_workers: int = 0, seed: int = 0, visual_key: str = "auto",
                     visual_from: str = "target", skip_missing: bool = False,
                     set_name: str | None = None, speakers="auto", rank: int | None = None,
                     world_size: int | None = None, pin_memory: bool = False,
                     noise_dirs=None) -> ListLoader:
    """Loader over the rows of a VoxMix list, utterances read from shards by key.

    Arguments
    ---------
    shard_dirs : str or list of str
        split folder(s) holding the rows' utterances (the first one holding a key wins).
    list_path : str or list of Mixture
        a VoxMix csv (:func:`avse.data.lists.read_list`) or parsed rows.
    stage : str
        ``"train"``: shuffled rows, a random ``config.crop_seconds`` crop per row and epoch
        (and lips offset by ``config.av_shift_frames``, see :func:`~avse.data.mixing.shift_visual`);
        ``"valid"``/``"test"``: rows in order, full row length (``min_len_s`` in whole
        frames: ``floor(min_len_s * 25)``), the same mixture every time.
    config : MixtureConfig
        normalisation, noise and (train) crop; the rows' SNRs are used as they are.
    batch_size : int
        1 gives exact full-length batches; more pads to the longest (see ``lengths``).
    visual_from : str
        ``"target"``, or ``"mismatched"``: lips of another utterance of the set from a
        speaker not in the row (fixed per row by ``seed``), cut or edge-padded to the row.
    skip_missing : bool
        drop rows naming utterances not in the shards (with a warning) instead of raising.
    set_name : str
        rows whose mixture set equals this (default by stage: train, val, test); a list
        that holds one set only is used whole.
    speakers : "auto" or list of str
        labels: default the sorted target speakers of the selected rows.
    rank, world_size : int
        rows are split ``[rank::world]`` (train: equal counts per rank, ``drop_last``).
    noise_dirs : str or list of str, optional
        noise shard split(s) of the MUSAN recipe holding the pieces of the rows' noise
        tuples (needed when a row has one). Each piece is wrap-repeated to the row length
        (from its first sample for valid/test, a random one for train), babble pieces are
        summed at equal power (:func:`avse.data.noise.combine_pieces`), and the noise is
        scaled to the row's SNR relative to the target and added to ``interference``.
        Rows with noise get no noise from ``config``.

    Returns
    -------
    ListLoader yielding :class:`AVBatch`.
    """
    if stage not in STAGE_SETS:
        raise ValueError(f"stage must be one of {sorted(STAGE_SETS)}, got {stage!r}")
    if visual_from not in ("target", "mismatched"):
        raise ValueError(f"visual_from must be 'target' or 'mismatched', got {visual_from!r}")
    config = config or MixtureConfig()
    dirs = [shard_dirs] if isinstance(shard_dirs, str) else list(shard_dirs)
    where = list_path if isinstance(list_path, str) else "mixture list"
    mixtures = voxmix.read_list(list_path) if isinstance(list_path, str) else list(list_path)
    rows = _select_rows(mixtures, set_name or STAGE_SETS[stage], where)
    rows, index = _index_rows(rows, dirs, lambda m: [s.key for s in m.sources], where,
                              "utterance(s)", skip_missing)
    if not rows:
        raise voxmix.ListError(f"{where}: no rows left for stage {stage!r}")
    rows, noise_index = _noise_index(rows, noise_dirs, where, skip_missing)
    visual_key = resolve_visual_key(read_meta(dirs[0]), visual_key)
    if isinstance(speakers, str):
        speakers = sorted({m.target.spk for m in rows})
    mismatched = _mismatch_map(rows, seed) if visual_from == "mismatched" else None
    rank, world_size = dist_info(rank, world_size)
    train = stage == "train"
    dataset = ListMixDataset(rows, index, config, train, visual_key, speakers, mismatched, seed,
                             noise_index)
    sampler = EpochSampler(len(rows), rank, world_size, shuffle=train, seed=seed)
    return ListLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_examples, drop_last=train, pin_memory=pin_memory)
