"""Deterministic fault injection (fail points) for the reliability tests.

Code that must survive a crash calls :func:`fault_point` at the places where a crash hurts
most (after an optimiser step, inside a checkpoint save, between two shards...). Nothing
happens unless the environment variable ``AVSE_FAULTS`` names that point, so a test can
kill a real run (a subprocess, or every rank of a ``torchrun``) at an exact place instead
of at a random time::

    AVSE_FAULTS="train_step=5:kill"            # SIGKILL when train_step is reached the 5th time
    AVSE_FAULTS="ckpt_save=2:kill,valid_batch=1-3:raise"
    AVSE_FAULTS="train_step=4-6:nan@1"         # on rank 1 only: the caller makes a NaN

Grammar: comma-separated ``<point>=<n>[-<m>]:<action>[@<rank>]``. ``n..m`` (1-based,
inclusive) are the occurrences that fire: the calls to that point in this process, or the
``index`` the caller passes (e.g. the global optimiser step, which survives a resume).
``<rank>`` is the ``RANK`` environment variable of ``torchrun`` (0 without it).

Actions:

- ``kill``: ``SIGKILL`` the process at once (no cleanup, no flush: a power cut, an OOM kill);
- ``raise``: raise :class:`InjectedFault` (an ``OSError``: what a failing disk or network
  gives);
- any other word (``nan``, ``corrupt``, ...): :func:`fault_point` returns that word and the
  caller injects the fault itself.

Points used in the code: ``train_step`` (after each optimiser step, index = the global
optimiser step), ``valid_batch`` (each validation batch), ``ckpt_save`` (a checkpoint's files
written, before it is made visible), ``loss`` (index = the training step about to be taken,
skipped ones included: ``nan`` turns its loss into NaN), ``stage_entry`` (the recipes:
after each staged entry),
``shard_write`` (after each shard written, before it is renamed into place) and
``extract_write`` (``avse-extract``: the output written, before its rename).
"""
from __future__ import annotations

import os
import signal

ENV = "AVSE_FAULTS"

_counts: dict[str, int] = {}
_parsed: tuple[str, dict] = ("", {})


class InjectedFault(OSError):
    """The error a ``raise`` fault point raises."""


def _rules() -> dict:
    """``{point: [(first, last, action, rank|None), ...]}`` of the current ``AVSE_FAULTS``."""
    global _parsed
    spec = os.environ.get(ENV, "")
    if spec == _parsed[0]:
        return _parsed[1]
    rules: dict = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            point, rest = item.split("=", 1)
            when, action = rest.split(":", 1)
            rank = None
            if "@" in action:
                action, rank_text = action.split("@", 1)
                rank = int(rank_text)
            first, _, last = when.partition("-")
            rules.setdefault(point.strip(), []).append(
                (int(first), int(last or first), action.strip(), rank))
        except ValueError:
            raise ValueError(f"{ENV}: cannot read {item!r}; the form is <point>=<n>[-<m>]:"
                             "<action>[@<rank>], e.g. train_step=5:kill") from None
    _parsed = (spec, rules)
    return rules


def fault_point(point: str, index: int | None = None) -> str | None:
    """Fire the fault ``AVSE_FAULTS`` sets for this occurrence of ``point``, if any.

    ``index``: the occurrence number to match (default: how many times this process has
    called this point, this call included). Returns None (no fault) or the action word of a
    fault the caller injects itself; ``kill`` does not return and ``raise`` raises."""
    if not os.environ.get(ENV):
        return None
    rules = _rules().get(point)
    if index is None:
        index = _counts[point] = _counts.get(point, 0) + 1
    if not rules:
        return None
    rank = int(os.environ.get("RANK", "0"))
    for first, last, action, only_rank in rules:
        if first <= index <= last and (only_rank is None or only_rank == rank):
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if action == "raise":
                raise InjectedFault(f"injected fault at {point} #{index} ({ENV})")
            return action
    return None


def reset() -> None:
    """Forget the occurrence counts (tests that call entry points in-process)."""
    _counts.clear()
