"""List mode: the rows of a VoxMix list (:mod:`avse.data.lists`) as batches.

Utterances are read by key with random access into the (uncompressed) tars
(:class:`avse.data.shards.ShardIndex`): a scan of the tar headers records each member's
offset, so only that index is held in memory, whatever the list size. Rows may carry
noise tuples (target + noise rows included), whose pieces are read the same way from the
MUSAN recipe's shards (``noise_dirs``). Rows with an activity tuple (conditions ``absent`` /
``sparse``) silence the target outside its span and show its lips at rest there
(:func:`~avse.data.loaders.batch.finish_example`); the batch's ``activity`` says where it speaks.

Speaker labels: the sorted target speakers of the selected rows (as SEANet); unknown
speakers get -1. Randomness: numpy Generators seeded by ``(seed, epoch, row)`` (no epoch
for valid/test).

Bad shards and samples (:mod:`avse.data.loaders.bad_samples`): every shard is checked
when the loader is made (:class:`~avse.data.loaders.checked.CheckedIndex`: missing,
unreadable or truncated is a ShardError naming it, or with ``skip_bad_shards`` left out and
the rows that need what is lost dropped, the same on every rank). A row whose utterance
does not decode (bad FLAC or npy, a missing field) is, by ``bad_rows``:

- ``"substitute"`` (training): replaced by another row drawn from ``(seed, epoch, row)``
  (the same on every run), so every rank keeps its number of batches;
- ``"drop"`` (validation): left out of its batch (a batch of bad rows only is left out):
  the run goes on, the metrics are over the other rows;
- ``"raise"`` (test): a ShardError naming shard, key and row: test numbers are over the
  whole list or not at all.

Skipped rows are logged (one warning line each) and counted in ``loader.faults``.

Face shards (a recipe's ``--crop face``: ``face.npy`` face-centred frames + ``facelm.npy``
landmarks) are loaded with ``mouth_crop``, the crop preset of the model: its mouth crop is
cut from the frames here (:func:`avse.video.crops.crop_faces`, as the own-video pipeline
cuts it), so one staging serves models trained on any crop. ``landmarks`` equals what
staging with ``--crop landmarks`` stores; the box presets (``voxceleb2``, ``lrs3``, ``lrs2``)
are cut from the tracked face frames as ``avse-extract`` cuts them (a staging with those
crops cuts the raw picture instead); ``lipread`` reads the frames' luma, where a ``--crop
lipread`` staging applies OpenCV's RGB weights.

Example
-------
>>> import tempfile
>>> from avse.data.shards import write_split
>>> d, rng = tempfile.mkdtemp(), np.random.default_rng(0)
>>> utts = [{"__key__": f"id{s}/vid{u}/00001", "flac": 0.1 * rng.standard_normal(640 * 30),
...          "lips.npy": np.zeros((30, 88, 88), np.uint8), "json": {"spk": f"id{s}"}}
...         for s in range(3) for u in range(2)]
>>> meta = write_split(utts, d, shard_size=3)
>>> rows = [parse_row("test,test,id0,vid0/00001,0,test,id1,vid1/00001,-2.5,1.1")]
>>> batch = next(iter(make_list_loader(d, rows, stage="test")))
>>> tuple(batch.mixture.shape), batch.snr.tolist(), batch.speaker.tolist()  # 27 frames
((1, 17280), [[-2.5]], [0])
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from avse.data.align import FPS, SAMPLES_PER_FRAME
from avse.data.lists import ListError, format_row, parse_row, read_list  # noqa: F401 (doctest)
from avse.data.loaders.bad_samples import BadSample, FaultCounter, SkippedBatch
from avse.data.loaders.batch import collate_examples, finish_example
from avse.data.loaders.checked import CheckedIndex, load_checked, read_npy_checked
from avse.data.loaders.face_crops import cut_mouths, face_crop
from avse.data.mixing import MixtureConfig, pad_to
from avse.data.noise import combine_pieces
from avse.data.partition import dist_info
from avse.data.shards import (FACE_FIELD, FACE_LANDMARKS_FIELD, ShardError, ShardIndex, read_meta,
                               resolve_visual_field)

STAGE_SETS = {"train": "train", "valid": "val", "test": "test"}
BAD_ROWS = {"train": "substitute", "valid": "drop", "test": "raise"}
MAX_SUBSTITUTES = 8  # bad rows in a row before a training batch gives up
logger = logging.getLogger("avse.data.loaders")


class ListMixDataset(Dataset):
    """VoxMix rows -> examples; item ``(row, epoch)`` (or ``row``). See :func:`make_list_loader`."""

    def __init__(self, rows, index: ShardIndex, config: MixtureConfig, crop: bool, visual_field,
                 speakers, mismatched: dict | None = None, seed: int = 0,
                 noise_index: ShardIndex | None = None, bad_rows: str = "raise", rank: int = 0,
                 mouth_crop: str | None = None):
        self.rows, self.index, self.config, self.crop = rows, index, config, crop
        self.visual_field, self.labels = visual_field, {s: i for i, s in enumerate(speakers or [])}
        self.mismatched, self.seed, self.noise_index = mismatched, seed, noise_index
        self.bad_rows, self.rank, self.mouth_crop = bad_rows, rank, mouth_crop

    def _cut(self, key, visual):
        """Face frames -> the ``mouth_crop`` preset's crops (other visual as it is)."""
        if self.mouth_crop is None or self.visual_field != FACE_FIELD:
            return visual
        return cut_mouths(visual, read_npy_checked(self.index, key, FACE_LANDMARKS_FIELD),
                          self.mouth_crop)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, item):
        """Row ``i``'s example; a bad row is replaced, dropped or raised (``bad_rows``), the
        skipped ones carried in the example's ``faults`` (the batch hands them over)."""
        i, epoch = item if isinstance(item, tuple) else (item, 0)
        events, j = [], i
        for attempt in range(MAX_SUBSTITUTES + 1):
            try:
                example = self.example(j, epoch, i)
            except BadSample as bad:
                if self.bad_rows == "raise":
                    raise ShardError(f"{bad}: row {j} ({format_row(self.rows[j])}) cannot be made. "
                                     "Re-run the recipe's shard stage for that shard, or leave "
                                     "the row out of the list") from None
                info = get_worker_info()
                logger.warning("rank %d worker %d: skipped a bad row %d (%s) of epoch %d: %s",
                               self.rank, info.id if info else 0, j, self.rows[j].target.key,
                               epoch, bad)
                events.append(bad.event)
                if self.bad_rows == "drop":
                    return {"dropped": True, "faults": events}
                j = int(np.random.default_rng([self.seed, epoch, i, attempt + 1])
                        .integers(len(self)))
                continue
            if events:
                example["faults"] = events
            return example
        raise ShardError(f"{MAX_SUBSTITUTES + 1} rows in a row are bad (row {i} and its "
                         f"substitutes), the last: {events[-1]}: too many corrupt samples; "
                         "re-run the recipe's shard stage")

    def example(self, i, epoch, seed_row=None):
        """Row ``i``'s example, its randomness from row ``seed_row`` (default ``i``); an
        utterance that does not decode raises a BadSample."""
        mix = self.rows[i]
        rng = np.random.default_rng([self.seed, epoch if self.crop else 0,
                                     i if seed_row is None else seed_row])
        n = max(1, int(math.floor(mix.length * FPS + 1e-6)))
        tgt = mix.target
        wav_t, visual = load_checked(self.index, tgt.key, self.visual_field)
        wav_t, visual = pad_to(wav_t, self._cut(tgt.key, visual), n)
        lips_key = tgt.key
        if self.mismatched is not None:
            lips_key = self.mismatched[i]
            visual = pad_to(None, self._cut(lips_key, read_npy_checked(
                self.index, lips_key, self.visual_field)), n)[1]
        inter = [load_checked(self.index, s.key)[0][:n * SAMPLES_PER_FRAME]
                 for s in mix.interferers]
        if mix.noise and self.noise_index is None:
            raise ListError(f"row {i} ({format_row(mix)}) adds noise: pass "
                            "noise_dirs (the MUSAN recipe's noise shards)")
        row_noise = [(self._noise(nz.keys, len(wav_t), rng if self.crop else None), nz.snr)
                     for nz in mix.noise]  # from sample 0 for valid/test
        return finish_example(self.config, tgt.key, self.labels.get(tgt.spk, -1), wav_t, visual,
                               inter, [s.snr for s in mix.interferers], rng,
                               [s.key for s in mix.interferers], lips_key, crop=self.crop,
                               row_noise=row_noise, activity=mix.activity)

    def _noise(self, keys, n_samples, rng):
        """A row's noise (:func:`avse.data.noise.read_noise`), a bad piece a BadSample."""
        return combine_pieces([load_checked(self.noise_index, k)[0] for k in keys], n_samples,
                              rng)


def collate_rows(examples):
    """:func:`~avse.data.loaders.batch.collate_examples` of the rows that were not dropped,
    with the dropped rows' fault events; a :class:`SkippedBatch` when none is left."""
    events = [ev for e in examples for ev in e.get("faults", ())]
    kept = [e for e in examples if not e.get("dropped")]
    if not kept:
        return SkippedBatch(events)
    batch = collate_examples(kept)
    batch.faults = events or None
    return batch


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
    """A DataLoader with ``set_epoch`` and ``skip_batches`` (for its :class:`EpochSampler`)
    and ``faults``: the bad rows this rank skipped since it was made
    (:mod:`avse.data.loaders.bad_samples`)."""

    def __init__(self, *args, skipped_shards: dict | None = None, dropped_rows: int = 0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.fault_counter = FaultCounter(skipped_shards, dropped_rows)

    @property
    def faults(self) -> dict:
        """``{"skipped", "reasons", "bad_samples", "skipped_shards", "dropped_rows"}``."""
        return self.fault_counter.as_dict()

    def __iter__(self):
        return self.fault_counter.counted(super().__iter__())

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def skip_batches(self, n: int):
        """The next epoch starts after its first ``n`` batches (the same rows as without skip)."""
        self.sampler.skip = max(0, int(n)) * self.batch_size


def select_rows(mixtures, set_name, where):
    sets = sorted({m.set for m in mixtures})
    if set_name in sets:
        return [m for m in mixtures if m.set == set_name]
    if len(sets) == 1:
        return list(mixtures)
    raise ListError(f"{where}: no rows of set {set_name!r}; the list holds sets {sets}")


def mismatch_map(rows, seed):
    """For each row, a key of another utterance of the set whose speaker is not in the row."""
    spk_of = {s.key: s.spk for m in rows for s in m.sources}
    keys, out = sorted(spk_of), {}
    for i, m in enumerate(rows):
        own, rng = {s.spk for s in m.sources}, np.random.default_rng([seed, i, 1])
        picks = [keys[j] for j in rng.integers(0, len(keys), 64)]  # rejection sampling, then
        pool = [k for k in picks if spk_of[k] not in own] or [  # an exhaustive search
            k for k in keys if spk_of[k] not in own]
        if not pool:
            raise ListError(f"row {i} ({m.target.key}): no utterance of another speaker "
                            "in this set for mismatched lips")
        out[i] = pool[0]
    return out


def index_noise(rows, noise_dirs, where, skip_missing, skip_bad_shards=False):
    """``(rows, ShardIndex of the rows' noise pieces or None)``; clear errors when missing."""
    noisy = [(i, m) for i, m in enumerate(rows) if m.noise]
    if not noisy:
        return rows, None
    if not noise_dirs:
        i, m = noisy[0]
        raise ListError(
            f"{where}: {len(noisy)} row(s) add noise, e.g. row {i} ({format_row(m)}), "
            "but no noise shards were given: pass noise_dirs=<the MUSAN recipe's "
            "OUT/shards/<split>> to make_list_loader (yaml: train_noise_shards, "
            "valid_noise_shards, or noise_shards in a test set)")
    rows, index = index_rows(rows, noise_dirs, lambda m: [k for nz in m.noise for k in nz.keys],
                              where, "noise piece(s)", skip_missing, skip_bad_shards)
    if not rows:
        raise ListError(f"{where}: no rows left")
    return rows, index


def index_rows(rows, dirs, keys_of, where, what, skip_missing, skip_bad_shards=False):
    """``(rows, CheckedIndex)`` over the keys ``keys_of(row)`` of every row in shard ``dirs``;
    keys not found: a ListError naming them, or (``skip_missing``, or ``skip_bad_shards``
    when some shard was bad) their rows dropped. Bad shards: see :class:`CheckedIndex`."""
    dirs = [dirs] if isinstance(dirs, str) else list(dirs)
    needed = {k for m in rows for k in keys_of(m)}
    index = CheckedIndex(dirs, needed, skip_bad_shards=skip_bad_shards)
    missing = sorted(needed - set(index.entries))
    if missing:
        msg = (f"{where}: {len(missing)} {what} not found in {', '.join(dirs)}: "
               + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        if index.bad:
            msg += f" (lost with {len(index.bad)} bad shard(s), e.g. {next(iter(index.bad))})"
        if not (skip_missing or index.bad):
            raise ListError(msg + " (skip_missing=True drops their rows)")
        lost = set(missing)
        rows = [m for m in rows if not any(k in lost for k in keys_of(m))]
        warnings.warn(msg + f"; {len(rows)} row(s) kept", stacklevel=3)
    return rows, index


def make_list_loader(shard_dirs, list_path, stage: str = "test",
                     config: MixtureConfig | None = None, batch_size: int = 1,
                     num_workers: int = 0, seed: int = 0, visual_field: str = "auto",
                     visual_from: str = "target", skip_missing: bool = False,
                     set_name: str | None = None, speakers="auto", rank: int | None = None,
                     world_size: int | None = None, pin_memory: bool = False,
                     noise_dirs=None, skip_bad_shards: bool = False,
                     bad_rows: str | None = None, mouth_crop: str | None = None) -> ListLoader:
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
    skip_bad_shards : bool
        a shard (utterances or noise) that is missing, unreadable or truncated is a
        ShardError naming it (here, before training); True: its readable samples are used
        and the rows needing the rest dropped (a warning; ``faults["dropped_rows"]``).
    bad_rows : str, optional
        a row whose utterance does not decode: ``"substitute"``, ``"drop"`` or ``"raise"``
        (module docstring); default by stage: train substitute, valid drop, test raise.
    mouth_crop : str, optional
        the model's crop preset (:data:`avse.video.crops.CROP_PRESETS`), cut at load time from
        face shards (``face.npy``, a recipe's ``--crop face``); required by them, ignored by
        shards of mouth crops or embeddings.

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
    mixtures = read_list(list_path) if isinstance(list_path, str) else list(list_path)
    bad_rows = bad_rows or BAD_ROWS[stage]
    if bad_rows not in ("substitute", "drop", "raise"):
        raise ValueError(f"bad_rows must be 'substitute', 'drop' or 'raise', got {bad_rows!r}")
    rows = select_rows(mixtures, set_name or STAGE_SETS[stage], where)
    n_selected = len(rows)
    rows, index = index_rows(rows, dirs, lambda m: [s.key for s in m.sources], where,
                              "utterance(s)", skip_missing, skip_bad_shards)
    if not rows:
        raise ListError(f"{where}: no rows left for stage {stage!r}")
    rows, noise_index = index_noise(rows, noise_dirs, where, skip_missing, skip_bad_shards)
    bad_shards = {**index.bad, **getattr(noise_index, "bad", {})}
    visual_field = resolve_visual_field(read_meta(dirs[0]), visual_field)
    face_crop(visual_field, mouth_crop, dirs[0])  # face shards need the model's preset
    if isinstance(speakers, str):
        speakers = sorted({m.target.spk for m in rows})
    mismatched = mismatch_map(rows, seed) if visual_from == "mismatched" else None
    rank, world_size = dist_info(rank, world_size)
    train = stage == "train"
    dataset = ListMixDataset(rows, index, config, train, visual_field, speakers, mismatched, seed,
                             noise_index, bad_rows, rank, mouth_crop=mouth_crop)
    sampler = EpochSampler(len(rows), rank, world_size, shuffle=train, seed=seed)
    return ListLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_rows, drop_last=train, pin_memory=pin_memory,
                      skipped_shards=bad_shards, dropped_rows=n_selected - len(rows))
