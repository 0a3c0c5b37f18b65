"""Splitting shards among DDP ranks and DataLoader workers, and speaker label lists.

Shards are split ``urls[rank::world][worker::workers]`` (as ``wds.split_by_node`` +
``wds.split_by_worker``): each is read by exactly one (rank, worker) when the shard count
divides by ranks x workers.
"""
from __future__ import annotations

import json
import os
import tarfile
import warnings

import torch

from avse.data.shards import ShardError, read_meta, shard_urls


class ShardSplitWarning(UserWarning):
    """Shards do not divide evenly among ranks x workers: some are read more often."""


def dist_info(rank=None, world_size=None):
    """``(rank, world_size)``: the arguments, else torch.distributed, else env RANK/WORLD_SIZE, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            r, w = 0, 1
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return int(rank), int(world_size)


def split_shards(urls, rank: int = 0, world_size: int = 1, worker_id: int = 0,
                 num_workers: int = 1) -> list:
    """The shards that worker ``worker_id`` of rank ``rank`` reads: ``urls[rank::world][worker::workers]``.

    Example
    -------
    >>> split_shards(list(range(8)), rank=1, world_size=2, worker_id=1, num_workers=2)
    [3, 7]
    """
    return list(urls)[rank::world_size][worker_id::max(1, num_workers)]


def check_shard_split(num_shards: int, world_size: int, num_workers: int, strict: bool = False):
    """Raise when some (rank, worker) would get no shard; warn (or raise) when uneven."""
    readers = world_size * max(1, num_workers)
    if num_shards < readers:
        raise ShardError(f"{num_shards} shard(s) for {world_size} rank(s) x {max(1, num_workers)} "
                         f"worker(s) = {readers} readers: some would get no shard. Re-shard with "
                         f"--shard_multiple {readers} or use fewer workers")
    if num_shards % readers:
        msg = (f"{num_shards} shards do not divide evenly among {world_size} rank(s) x "
               f"{max(1, num_workers)} worker(s) = {readers}: some utterances are read more "
               f"often than others. Re-shard with --shard_multiple {readers} (or a multiple)")
        if strict:
            raise ShardError(msg)
        warnings.warn(msg, ShardSplitWarning, stacklevel=3)


def _member_key(name: str):
    base, dirname = os.path.basename(name), os.path.dirname(name)
    stem, _, ext = base.partition(".")
    return (f"{dirname}/{stem}" if dirname else stem), ext


def scan_speakers(split_dir: str) -> list:
    """Sorted speaker ids of a split, reading only the ``*.json`` members of its shards."""
    speakers = set()
    for url in shard_urls(split_dir):
        with tarfile.open(url) as tar:
            for member in tar:
                key, ext = _member_key(member.name)
                if member.isfile() and ext == "json":
                    info = json.loads(tar.extractfile(member).read())
                    speakers.add(info.get("spk") or key.split("/")[0])
    return sorted(speakers)


def split_speakers(split_dir: str) -> list:
    """Sorted speaker ids: ``speakers.txt`` (one a line) if it matches meta.json, else a scan."""
    path = os.path.join(split_dir, "speakers.txt")
    if os.path.isfile(path):
        with open(path) as f:
            speakers = [line.strip() for line in f if line.strip()]
        if len(speakers) == read_meta(split_dir).get("speakers"):
            return sorted(speakers)
    return scan_speakers(split_dir)


def write_speakers_file(split_dir: str) -> str:
    """Write ``split_dir/speakers.txt`` (scanned) so that loaders need not scan; returns its path."""
    path = os.path.join(split_dir, "speakers.txt")
    with open(path + ".tmp", "w") as f:
        f.write("".join(s + "\n" for s in scan_speakers(split_dir)))
    os.replace(path + ".tmp", path)
    return path


def num_speakers(split_dir: str) -> int:
    """How many speakers a shard split holds (``meta.json``), e.g. the size of MuSE's speaker
    classifier in a yaml: ``num_speakers: !apply:avse.data.sharding.num_speakers [<dir>]``."""
    count = read_meta(split_dir).get("speakers")
    if not count:
        raise ShardError(f"{split_dir}/meta.json has no speaker count; set num_speakers by hand")
    return int(count)
