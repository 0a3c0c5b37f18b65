"""List mode's random access into shards, checked: bad shards found at the start, bad
samples raised as :class:`~avse.data.loaders.bad_samples.BadSample` (naming shard and key).

:class:`CheckedIndex` is :class:`avse.data.shards.ShardIndex` whose scan of the tar headers
(done once, when a list loader is made) also checks each shard: it must exist, read as a
tar to its end, hold every member's bytes and end with the end-of-archive blocks. A shard
that does not is a ShardError naming it, before any training step, or (``skip_bad_shards``)
left out with a warning: the samples before the damage stay usable.
"""
from __future__ import annotations

import os
import tarfile
import warnings

from avse.data.loaders.bad_samples import DATA_ERRORS, diagnose
from avse.data.remote import resolve_split, shard_problem
from avse.data.shards import ShardError, ShardIndex, decode_av, decode_npy, member_key

END_BLOCKS = 2 * tarfile.BLOCKSIZE  # what a finished tar ends with


def scan_tar(path: str, wanted=None):
    """``({key: {field: (offset, size)}}, problem or None)`` of one tar; members whose bytes
    are not all there are left out (with their whole sample)."""
    found, problem, size = {}, None, os.path.getsize(path)
    end = None
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                key, ext = member_key(m.name)
                if m.isfile() and (wanted is None or key in wanted):
                    found.setdefault(key, {})[ext] = (m.offset_data, m.size)
            end = tar.offset
    except (tarfile.TarError, OSError) as err:
        problem = f"cannot be read to its end ({err})"
    cut = sorted(k for k, f in found.items() if any(o + n > size for o, n in f.values()))
    if cut:
        problem = f"truncated: the bytes of {cut[0]} are not all there"
    elif problem is None and end is not None and size - end < END_BLOCKS:
        problem = "truncated: no end-of-archive blocks (the last samples may be lost)"
    return {k: f for k, f in found.items() if k not in cut}, problem


class CheckedIndex(ShardIndex):
    """A :class:`~avse.data.shards.ShardIndex` whose shards are checked (module docstring);
    ``bad``: ``{shard: why}`` of the shards left out (``skip_bad_shards``)."""

    def __init__(self, shard_dirs, keys=None, max_open: int = 64, skip_bad_shards: bool = False):
        super().__init__([], keys, max_open)
        wanted = None if keys is None else set(keys)
        self.bad = {}
        dirs = [shard_dirs] if isinstance(shard_dirs, str) else list(shard_dirs)
        for split_dir in dirs:
            for url in resolve_split(split_dir, missing_ok=True).urls:
                problem = shard_problem(url)
                found = {}
                if problem is None:
                    found, problem = scan_tar(url, wanted)
                if problem:
                    self.bad[url] = problem
                for key, fields in found.items():  # the first shard holding a key wins
                    entry = self.entries.setdefault(key, {"__url__": url})
                    if entry["__url__"] == url:
                        entry.update(fields)
        if self.bad:
            listed = "; ".join(f"{u}: {why}" for u, why in list(self.bad.items())[:5]) + (
                f"; and {len(self.bad) - 5} more" if len(self.bad) > 5 else "")
            if not skip_bad_shards:
                raise ShardError(f"{', '.join(dirs)}: {len(self.bad)} shard(s) cannot be read: "
                                 f"{listed}. Re-run the recipe's shard stage, or set "
                                 "skip_bad_shards: true to go on without what is lost")
            warnings.warn(f"{', '.join(dirs)}: {len(self.bad)} bad shard(s) (skip_bad_shards: "
                          f"their readable samples are used): {listed}", UserWarning,
                          stacklevel=2)


def load_checked(index: ShardIndex, key: str, visual_field: str | None = None):
    """``index.load(key, visual_field)``, a failure raised as a BadSample naming the shard."""
    entry = index.entries.get(key) or {}
    url = entry.get("__url__", "?")
    needed = ("flac",) + ((visual_field,) if visual_field else ())
    raw = {}
    try:
        for name in needed:
            if name in entry:
                raw[name] = bytes(index.read(key, name))
        if len(raw) < len(needed):
            raise diagnose(url, key, raw, needed)
        return decode_av(key, raw["flac"], raw.get(visual_field))
    except DATA_ERRORS as err:
        raise diagnose(url, key, raw, needed, err) from err


def read_npy_checked(index: ShardIndex, key: str, field: str):
    """``decode_npy(index.read(key, field))``, a failure raised as a BadSample."""
    entry = index.entries.get(key) or {}
    raw = {}
    try:
        if field in entry:
            raw[field] = bytes(index.read(key, field))
        if not raw:
            raise diagnose(entry.get("__url__", "?"), key, raw, (field,))
        return decode_npy(raw[field])
    except DATA_ERRORS as err:
        raise diagnose(entry.get("__url__", "?"), key, raw, (field,), err) from err
