"""Curriculum for lip reading: the longest clip per epoch, and cutting long clips at word
boundaries (the lip-reading literature's "short clips first"; how the LRS2 ``pretrain`` split,
long clips with word timings, is used). Read by :mod:`avse.data.loaders.text`.
"""
from __future__ import annotations

from avse.data.align import FPS

CUT_MARGIN_S = 0.1  # context kept around a segment's words, within the gaps to its neighbours


def check_curriculum(curriculum) -> list:
    """``[(first epoch, max seconds or None), ...]`` sorted by epoch, from the yaml form.

    Example
    -------
    >>> check_curriculum([[3, 4], [1, 2.0], [6, None]])
    [(1, 2.0), (3, 4.0), (6, None)]
    """
    out = []
    for item in curriculum or []:
        try:
            epoch, seconds = item
            epoch = int(epoch)
            seconds = None if seconds is None else float(seconds)
        except (TypeError, ValueError):
            raise ValueError(f"curriculum: expected [[epoch, max_seconds or null], ...], got "
                             f"{item!r} in {curriculum!r}") from None
        if epoch < 0 or (seconds is not None and seconds <= 0):
            raise ValueError(f"curriculum: {item!r} needs an epoch >= 0 and a maximum > 0 s")
        out.append((epoch, seconds))
    return sorted(out, key=lambda e: e[0])


def max_seconds_at(curriculum, epoch: int):
    """The maximum clip length (s, or None: any) at ``epoch``.

    Example
    -------
    >>> c = check_curriculum([[1, 2.0], [3, 4.0], [6, None]])
    >>> [max_seconds_at(c, e) for e in (0, 1, 2, 3, 5, 6, 9)]
    [2.0, 2.0, 2.0, 4.0, 4.0, None, None]
    """
    if not curriculum:
        return None
    current = curriculum[0][1]
    for start, seconds in curriculum:
        if start <= epoch:
            current = seconds
    return current


def cut_at_words(words, n_frames: int, max_seconds: float, margin: float = CUT_MARGIN_S) -> list:
    """Cut a clip of ``n_frames`` @25 fps into segments of whole words of at most ``max_seconds``.

    ``words``: ``[[word, start_s, end_s], ...]`` in time order. Words are grouped greedily;
    each segment spans its words plus up to ``margin`` seconds of context on each side,
    never reaching into a neighbouring word and never past ``max_seconds`` (a single word
    longer than that is a segment of its own). Returns ``[(start_frame, stop_frame,
    [word, ...]), ...]``.

    Example
    -------
    >>> w = [["A", 0.12, 0.52], ["B", 0.6, 1.0], ["C", 1.2, 2.0], ["D", 2.4, 2.6], ["E", 2.7, 4.4]]
    >>> cut_at_words(w, 120, 1.0)  # A B: 0.88 s of words + 0.06 s each side; E alone: 1.7 s
    [(2, 26, ['A', 'B']), (28, 52, ['C']), (57, 68, ['D']), (68, 110, ['E'])]
    """
    groups, group = [], []
    for w in words:
        if group and float(w[2]) - float(group[0][1]) > max_seconds:
            groups.append(group)
            group = []
        group.append(w)
    if group:
        groups.append(group)
    out, limit = [], n_frames / FPS
    for i, g in enumerate(groups):
        first, last = float(g[0][1]), float(g[-1][2])
        prev_end = float(groups[i - 1][-1][2]) if i else 0.0
        next_start = float(groups[i + 1][0][1]) if i + 1 < len(groups) else limit
        room = max(0.0, max_seconds - (last - first)) / 2
        start = max(prev_end, first - min(margin, room), 0.0)
        stop = min(next_start, last + min(margin, room), limit)
        a = min(int(round(start * FPS)), n_frames - 1)
        b = max(a + 1, min(int(round(stop * FPS)), n_frames))
        if last - first <= max_seconds:  # rounding to frames may not add one
            b = max(a + 1, min(b, a + int(round(max_seconds * FPS))))
        out.append((a, b, [str(x[0]) for x in g]))
    return out


def ctc_frames_needed(tokens) -> int:
    """The fewest frames a CTC alignment of ``tokens`` needs: one a token, one more a repeat."""
    return len(tokens) + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)
