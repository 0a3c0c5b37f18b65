"""Which DDP rank and DataLoader worker reads which shard (the shard format is :mod:`avse.data.shards`).

Shards are split ``urls[rank::world][worker::workers]``: :func:`node_splitter` and
:func:`worker_splitter` are the WebDataset pipeline stages (``nodesplitter`` /
``workersplitter``) with an explicit rank and worker, so they do not depend on
environment variables that ``wds.split_by_node`` reads. Each shard is read by exactly one
(rank, worker) when the shard count divides by ranks x workers (:func:`check_shard_split`).
"""
from __future__ import annotations

import os
import warnings
from functools import partial
from itertools import islice

import torch

from avse.data.shards import ShardError


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
    ranks = node_splitter(rank, world_size)(iter(urls))
    return list(worker_splitter(worker_id, num_workers)(ranks))


def _every(src, start: int, step: int):
    yield from islice(src, start, None, max(1, step))


def node_splitter(rank: int, world_size: int):
    """A WebDataset stage keeping the shards (``{"url": ...}`` items) of DDP rank ``rank``.

    Example
    -------
    >>> list(node_splitter(1, 3)(iter("abcdefg")))
    ['b', 'e']
    """
    return partial(_every, start=int(rank), step=int(world_size))


def worker_splitter(worker_id: int, num_workers: int):
    """A WebDataset stage keeping the shards of DataLoader worker ``worker_id`` (after the node split)."""
    return partial(_every, start=int(worker_id), step=int(num_workers))


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
