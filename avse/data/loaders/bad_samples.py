"""Bad samples in training shards: skipped, counted per rank, one warning line each.

A corrupt or truncated sample (FLAC bytes that do not decode, an npy that does not load, a
missing field, a tar cut short) must not stop a training run that has run for days, nor
put one DDP rank out of step with the others. The training loaders
(:func:`~avse.data.loaders.make_train_loader`, :func:`~avse.data.loaders.make_list_loader`
with ``stage="train"``) skip such a sample, log one warning line naming its shard and key,
and count it; every rank still yields the same number of batches.

How the counts reach the loader: DataLoader workers are processes, so each worker keeps a
:class:`FaultLog` of what it skipped since its last batch and hands the events over *in
the next batch* (``AVBatch.faults``); the loader's iterator moves them into its
:class:`FaultCounter` (and clears the field) before the batch reaches the training loop.
``loader.faults`` is then this rank's running total since the loader was made::

    {"skipped": 3,                                   # bad samples (list mode: rows) skipped
     "reasons": {"bad_flac": 1, "bad_npy": 1, "missing_field": 1},
     "bad_samples": ["<shard>:<key>", ...],          # distinct, sorted
     "skipped_shards": {"<shard>": "<why>"},         # skip_bad_shards: left out or given up
     "dropped_rows": 0}                              # list mode: rows whose utterances were
                                                     # in skipped shards (left out at start)

Reasons: ``bad_flac`` (the audio does not decode), ``bad_npy`` (the lips / embeddings do not
load), ``missing_field``, ``bad_tar`` (the tar cannot be read past this sample: truncated or
corrupt; the rest of that shard is lost for this pass), ``bad_sample`` (the fields decode
but do not fit together, e.g. audio and video lengths), ``bad_shard`` (a shard that cannot
be opened during training; only with ``skip_bad_shards``).
"""
from __future__ import annotations

import logging
import re
import tarfile
from collections import Counter

from avse.data.shards import decode_flac, decode_npy

logger = logging.getLogger("avse.data.loaders")

# what corrupt bytes raise while decoding (soundfile: RuntimeError; numpy: ValueError, EOFError)
DATA_ERRORS = (ValueError, RuntimeError, OSError, EOFError, KeyError, IndexError,
               tarfile.TarError)


class BadSample(Exception):
    """One sample that cannot be used: where it is (shard, key), why (a reason word, above)
    and the underlying error's text."""

    def __init__(self, shard: str, key: str, reason: str, detail: str = ""):
        super().__init__(shard, key, reason, detail)
        self.shard, self.key, self.reason, self.detail = shard, key, reason, detail

    def __str__(self):
        return f"shard {self.shard}, sample {self.key}: {self.reason} ({self.detail})"

    @property
    def event(self) -> tuple:
        return (self.shard, self.key, self.reason)


def _text(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the bytes", text)
    return text[:200]


def diagnose(shard: str, key: str, fields: dict, needed, err: BaseException | None = None
             ) -> BadSample:
    """Which part of a sample is broken: ``fields`` (raw bytes per field, as read) against the
    fields ``needed``; only called after decoding failed (``err``)."""
    for name in needed:
        if name not in fields:
            return BadSample(shard, key, "missing_field", f"no {name} member")
    for name in needed:
        try:
            if name == "flac":
                decode_flac(fields[name])
            elif name.endswith("npy"):
                decode_npy(fields[name])
        except DATA_ERRORS as bad:
            return BadSample(shard, key, "bad_flac" if name == "flac" else "bad_npy",
                             f"{name}: {_text(bad)}")
    return BadSample(shard, key, "bad_sample", _text(err) if err is not None else "")


class FaultLog:
    """What one reader (a rank's DataLoader worker, or the rank itself) skipped since its
    last batch; logs one warning line per bad sample."""

    def __init__(self, where: str, skip_shards: bool = False):
        self.where, self.skip_shards = where, bool(skip_shards)
        self.pending, self.total, self.last = [], 0, None

    def skip(self, bad: BadSample, what: str = "sample"):
        self.total += 1
        self.last = bad
        logger.warning("%s: skipped a bad %s: %s", self.where, what, bad)
        self.pending.append(bad.event)

    def take(self) -> list:
        out, self.pending = self.pending, []
        return out

    def tar_error(self, url: str, key: str | None, err: Exception, n_read: int):
        """``on_error`` of :func:`avse.data.remote.tar_samples`: a tar that fails after
        ``n_read`` samples (a truncated or corrupt tail) loses the sample being read and the
        rest of the shard (skipped, counted); one that fails before any sample is a bad
        shard: skipped with ``skip_shards``, else raised (the caller raises)."""
        if n_read == 0 and key is None and not self.skip_shards:
            raise err
        reason = "bad_tar" if n_read or key else "bad_shard"
        rest = "; the rest of the shard is skipped" if n_read else ""
        self.skip(BadSample(url, key or "(start of shard)", reason,
                            _text(err.args[0] if err.args else err) + rest),
                  "shard" if reason == "bad_shard" else "sample")


def attach(src, log: FaultLog):
    """Stage: each batch carries the events its worker logged since the previous one."""
    for batch in src:
        batch.faults = log.take()
        yield batch


class SkippedBatch:
    """What a list-mode loader's collate returns when every row of a batch was dropped
    (validation): nothing to train on, only fault events (the loader drops it)."""

    def __init__(self, faults):
        self.faults = faults


class FaultCounter:
    """One rank's running totals (``loader.faults``), fed by the batches' events."""

    def __init__(self, skipped_shards: dict | None = None, dropped_rows: int = 0):
        self.skipped, self.reasons, self.samples = 0, Counter(), set()
        self.skipped_shards, self.dropped_rows = dict(skipped_shards or {}), int(dropped_rows)

    def add(self, events):
        for shard, key, reason in events or ():
            if reason == "bad_shard":  # a shard, not a sample
                self.skipped_shards.setdefault(shard, "cannot be read")
                continue
            self.skipped += 1
            self.reasons[reason] += 1
            self.samples.add(f"{shard}:{key}")

    def as_dict(self) -> dict:
        return {"skipped": self.skipped, "reasons": dict(sorted(self.reasons.items())),
                "bad_samples": sorted(self.samples),
                "skipped_shards": dict(self.skipped_shards), "dropped_rows": self.dropped_rows}

    def counted(self, batches):
        """Pass the batches on, taking their fault events (batches of nothing are dropped)."""
        for batch in batches:
            events = getattr(batch, "faults", None)
            if events:
                self.add(events)
            if isinstance(batch, SkippedBatch):
                continue
            if events is not None:
                batch.faults = None
            yield batch
