"""Mixture lists in the VoxMix format (the SEANet / MuSE ``data_list.csv``).

One mixture per row, comma separated, no header::

    <mix_set>,<set>,<spk>,<video>/<clip>,<snr>,<set>,<spk>,<video>/<clip>,<snr>[,...],<min_len_s>

The first 4-tuple after the mixture's set is the target (its SNR is 0 by
convention); every further 4-tuple is an interferer with its SNR in dB relative to
the target; the last field is the mixture length in seconds (the shortest source).
A 2-mix row has 10 fields, a 3-mix row 14. Example::

    test,test,id00017,01dfn2spqyE/00001,0,test,id01000,RvjbLfo3XDM/00052,-1.27,3.12

Noise (an AVSE extension; rows without it are plain VoxMix): after the interferers, before
the length, 4-tuples ``musan,<category>,<key>[+<key>...],<snr>`` whose set field is
literally ``musan``: ``<key>`` is a piece of the MUSAN recipe's noise shards
(``<category>/<subset>/<stem>-<NNN>``), ``<snr>`` its SNR in dB relative to the target;
``babble`` lists its speech pieces joined by ``+`` (summed at equal power, see
:mod:`avse.data.noise`). A target with noise only (no interferer) is a valid row (speech
enhancement)::

    test,test,id00017,01dfn2spqyE/00001,0,musan,noise,noise/free-sound/noise-free-sound-0003-000,7.5,3.12

Target activity (an AVSE extension for the ``absent`` and ``sparse`` conditions of
:mod:`avse.data.conditions`): after the interferers and noise tuples, before the length, one
4-tuple ``activity,<kind>,<start>-<stop>,0`` whose set field is literally ``activity``:
``absent`` (the target silent throughout, span ``0-0``) or ``sparse`` (the target speaks in
video frames ``[start, stop)`` counted from the row start, silent elsewhere)::

    test,test,id00017,01dfn2spqyE/00001,0,test,id01000,RvjbLfo3XDM/00052,-1.27,activity,sparse,12-40,0,3.12

Example
-------
>>> row = "test,test,id00017,01dfn2spqyE/00001,0,test,id01000,RvjbLfo3XDM/00052,-1.27,3.12"
>>> mix = parse_row(row)
>>> mix.target.key, mix.interferers[0].snr, mix.length
('id00017/01dfn2spqyE/00001', -1.27, 3.12)
>>> format_row(mix) == row
True
>>> babble = "musan,babble,speech/a/x-000+speech/b/y-001,15"
>>> noisy = parse_row(f"test,test,id00017,01dfn2spqyE/00001,0,{babble},3.12")
>>> noisy.interferers, noisy.noise[0].category, noisy.noise[0].keys, noisy.noise[0].snr
((), 'babble', ('speech/a/x-000', 'speech/b/y-001'), 15.0)
>>> sparse = parse_row(row[:-5] + ",activity,sparse,12-40,0,3.12")
>>> sparse.activity, format_row(sparse).endswith("-1.27,activity,sparse,12-40,0,3.12")
(('sparse', 12, 40), True)
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field

from avse.data.align import FPS
from avse.data.conditions import CONDITIONS, get_condition


class ListError(ValueError):
    """A mixture list is malformed or names unknown utterances."""


@dataclass(frozen=True)
class Source:
    """One utterance in a mixture: corpus set, speaker, ``video/clip`` and SNR (dB)."""

    set: str
    spk: str
    path: str
    snr: float = 0.0

    @property
    def key(self) -> str:
        """The utterance key used in manifests and shards: ``spk/video/clip``."""
        return f"{self.spk}/{self.path}"


NOISE_SET = "musan"
"""The set field that marks a noise 4-tuple in a row."""

ACTIVITY_SET = "activity"
"""The set field that marks the target-activity 4-tuple of a row."""

ACTIVITY_KINDS = ("absent", "sparse")
"""What a row's activity tuple may say the target does."""

ACTIVITY_FORM = (f"'{ACTIVITY_SET},<absent|sparse>,<start>-<stop>,0' (video frames from the "
                 "row start, start < stop; absent: 0-0), after the interferers and noise, "
                 "before the length")


@dataclass(frozen=True)
class Noise:
    """A noise entry of a mixture: category, noise shard keys (babble: several), SNR (dB)."""

    category: str
    keys: tuple
    snr: float = 0.0

    @property
    def set(self) -> str:
        return NOISE_SET

    @property
    def key(self) -> str:
        """The row's key field: the piece keys joined by ``+``."""
        return "+".join(self.keys)


@dataclass(frozen=True)
class Mixture:
    """A row of a mixture list: target first, then interferers; ``length`` in seconds.

    ``sources`` are speech only (target + interferers); ``noise`` holds the row's
    :class:`Noise` entries (usually none or one); ``activity``: None (the target speaks
    throughout) or ``(kind, start, stop)``: ``("absent", 0, 0)`` or ``("sparse", start,
    stop)``, the target speaking in video frames ``[start, stop)`` from the row start.
    """

    set: str
    sources: tuple = field(default_factory=tuple)
    length: float = 0.0
    noise: tuple = field(default_factory=tuple)
    activity: tuple | None = None

    @property
    def target(self) -> Source:
        return self.sources[0]

    @property
    def interferers(self) -> tuple:
        return self.sources[1:]

    @property
    def num_speakers(self) -> int:
        return len(self.sources)


def format_number(x: float) -> str:
    """Shortest text that reads back as the same float (``0`` for integral values)."""
    x = float(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def row_frames(length: float) -> int:
    """The video frames of a row of ``length`` seconds, ``floor(length * 25)`` (at least 1),
    as the list loader reads it.

    Example
    -------
    >>> row_frames(3.12), row_frames(0.01)
    (78, 1)
    """
    return max(1, int(math.floor(length * FPS + 1e-6)))


def parse_activity(kind: str, span: str, zero: str, where: str, at: int) -> tuple:
    """``(kind, start, stop)`` of an activity tuple's fields; ListError naming ``where`` and
    the expected form (:data:`ACTIVITY_FORM`) when malformed."""
    bad = ListError(f"{where}: activity tuple at field {at} should be {ACTIVITY_FORM}, got "
                    f"{','.join([ACTIVITY_SET, kind, span, zero])!r}")
    start, sep, stop = span.partition("-")
    if kind not in ACTIVITY_KINDS or not sep or not (start.isdigit() and stop.isdigit()):
        raise bad
    start, stop = int(start), int(stop)
    if zero not in ("0", "0.0") or (kind == "absent" and (start, stop) != (0, 0)) or (
            kind == "sparse" and not start < stop):
        raise bad
    return (kind, start, stop)


def parse_row(line: str, where: str = "<row>") -> Mixture:
    """Parse one VoxMix row; ``where`` (``file:line``) goes into error messages."""
    fields = [f.strip() for f in line.strip().split(",")]
    if len(fields) < 10 or (len(fields) - 2) % 4 != 0:
        raise ListError(
            f"{where}: expected 2 + 4*k fields (k >= 2 sources: set,spk,video/clip,snr, "
            f"or noise: musan,category,key[+key...],snr, or {ACTIVITY_SET},<kind>,"
            f"<start>-<stop>,0) but found {len(fields)}: {line.strip()!r}"
        )
    try:
        length = float(fields[-1])
    except ValueError:
        raise ListError(f"{where}: last field must be the length in seconds, got {fields[-1]!r}")
    sources, noise, activity = [], [], None
    for i in range(1, len(fields) - 1, 4):
        set_, spk, path, snr = fields[i : i + 4]
        if activity is not None:
            raise ListError(f"{where}: field {i + 1} follows the activity tuple; it should be "
                            f"{ACTIVITY_FORM}")
        if set_ == ACTIVITY_SET and i > 1:
            activity = parse_activity(spk, path, snr, where, i + 1)
            if activity[2] > row_frames(length):
                raise ListError(f"{where}: activity span {path} ends after the row's "
                                f"{row_frames(length)} frames ({length} s)")
            continue
        if set_ == NOISE_SET and i > 1:
            keys = tuple(path.split("+"))
            if not spk or not all(keys):
                raise ListError(f"{where}: noise tuple at field {i} should be "
                                f"'{NOISE_SET},<category>,<key>[+<key>...],<snr>', "
                                f"got {','.join(fields[i:i + 4])!r}")
            try:
                noise.append(Noise(spk, keys, float(snr)))
            except ValueError:
                raise ListError(f"{where}: field {i + 4} should be an SNR in dB, got {snr!r}")
            continue
        if noise:
            raise ListError(f"{where}: speech 4-tuple at field {i} after a noise tuple; noise "
                            "tuples go after the interferers, before the length")
        if path.count("/") != 1:
            raise ListError(f"{where}: field {i + 3} should be '<video>/<clip>', got {path!r}")
        try:
            snr = float(snr)
        except ValueError:
            raise ListError(f"{where}: field {i + 4} should be an SNR in dB, got {snr!r}")
        sources.append(Source(set_, spk, path, snr))
    return Mixture(fields[0], tuple(sources), length, tuple(noise), activity)


def format_row(mix: Mixture) -> str:
    """Inverse of :func:`parse_row`."""
    parts = [mix.set]
    for s in mix.sources:
        parts += [s.set, s.spk, s.path, format_number(s.snr)]
    for n in mix.noise:
        parts += [NOISE_SET, n.category, n.key, format_number(n.snr)]
    if mix.activity is not None:
        kind, start, stop = mix.activity
        parts += [ACTIVITY_SET, kind, f"{int(start)}-{int(stop)}", "0"]
    parts.append(format_number(mix.length))
    return ",".join(parts)


def read_list(path: str) -> list[Mixture]:
    """Read a VoxMix csv; blank lines and ``#`` comments are skipped.

    Raises ListError naming the file and line of the first malformed row.
    """
    if not os.path.isfile(path):
        raise ListError(f"mixture list {path} not found")
    mixtures = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            mixtures.append(parse_row(line, where=f"{path}:{n}"))
    return mixtures


def write_list(mixtures, path: str) -> None:
    """Write mixtures as a VoxMix csv (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for mix in mixtures:
            f.write(format_row(mix) + "\n")
    os.replace(tmp, path)


def check_known(mixtures, known_keys, where: str = "list") -> None:
    """Raise ListError naming the unknown utterances (up to 5) of a list."""
    unknown = sorted({s.key for m in mixtures for s in m.sources} - set(known_keys))
    if unknown:
        raise ListError(
            f"{where} names {len(unknown)} utterance(s) that are not in the corpus, e.g. "
            + ", ".join(unknown[:5])
            + "; check --corpus_dir and that the list belongs to this corpus"
        )


def generate_mixtures(utterances, num: int, num_speakers: int = 2, snr_range=(-10.0, 10.0),
                      seed: int = 0, mix_set: str = "train") -> list[Mixture]:
    """Draw ``num`` random mixtures from a pool of utterances.

    Arguments
    ---------
    utterances : list of dict
        each with ``key`` (``spk/video/clip``), ``spk``, ``set`` (the corpus set written in
        the row) and ``duration`` (seconds).
    num_speakers : int
        sources per mixture (2 or 3): a target and interferers from *other* speakers.
    snr_range : (low, high)
        interferer SNR in dB relative to the target, uniform.

    The length field is the shortest source duration (rounded to 0.01 s down), as in VoxMix.
    Deterministic for a given ``seed`` and utterance order.
    """
    if num_speakers < 2:
        raise ValueError("a mixture needs at least 2 speakers")
    return _draw_mixtures(utterances, num, num_speakers, snr_range, seed, mix_set)


def _draw_mixtures(utterances, num, num_speakers, snr_range, seed, mix_set):
    by_spk = {}
    for u in utterances:
        by_spk.setdefault(u["spk"], []).append(u)
    speakers = sorted(by_spk)
    if len(speakers) < num_speakers:
        raise ListError(
            f"{mix_set}: {len(speakers)} speaker(s) available but {num_speakers}-speaker "
            "mixtures need at least that many distinct speakers"
        )
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        spks = rng.sample(speakers, num_speakers)
        picked = [rng.choice(by_spk[s]) for s in spks]
        sources = []
        for i, u in enumerate(picked):
            snr = 0.0 if i == 0 else round(rng.uniform(*snr_range), 4)
            spk, path = u["key"].split("/", 1)
            sources.append(Source(u["set"], spk, path, snr))
        length = int(min(u["duration"] for u in picked) * 100) / 100.0
        out.append(Mixture(mix_set, tuple(sources), length))
    return out


def add_noise(mixtures, noise_keys, seed: int = 0, num_interferers: int | None = None,
              category_probs=None, snr_ranges=None, babble_pieces=(3, 7)) -> list[Mixture]:
    """Give every row one noise tuple (any noise it had is replaced); seeded.

    Arguments
    ---------
    mixtures : list of Mixture
        rows to add noise to (e.g. a 2-mix list, or a 3-mix list for ``hard``).
    noise_keys : dict or iterable of str
        ``{category: [keys]}`` (:func:`avse.data.noise.noise_pool` of a noise shard split,
        the one matching the rows' set: test noise for test rows) or piece keys
        ``<category>/...``; or ``{mix set: one of these}`` to draw each row's noise from
        the pool of its set.
    num_interferers : int, optional
        keep the first ``n`` interferers of each row (0: target + noise, the
        ``enhancement`` condition; 1 from 2-mix rows: ``2mix_noise``; 2 from 3-mix rows:
        ``hard``); rows with fewer are left out. None keeps them all.
    category_probs, snr_ranges, babble_pieces :
        as :class:`avse.data.noise.MusanNoise` (defaults: noise U(0, 15) dB, music
        U(5, 15) dB, babble of 3-7 speech pieces U(13, 20) dB, equally likely).

    Example
    -------
    >>> rows = [parse_row("test,test,id1,v/c,0,test,id2,v/d,-2,3.5")]
    >>> out = add_noise(rows, ["noise/x/n-000", "music/y/m-000"], seed=1, num_interferers=0)
    >>> format_row(out[0]).startswith("test,test,id1,v/c,0,musan,"), out[0].interferers
    (True, ())
    """
    import numpy as np

    from avse.data.noise import draw_noise, pool_from_keys, resolve_options

    def as_pool(keys):
        return {c: sorted(v) for c, v in keys.items()} if isinstance(keys, dict) else \
            pool_from_keys(keys)

    by_set = isinstance(noise_keys, dict) and noise_keys and all(
        isinstance(v, dict) for v in noise_keys.values())
    pools = {k: as_pool(v) for k, v in noise_keys.items()} if by_set else None
    pool = None if by_set else as_pool(noise_keys)
    probs, ranges, babble = resolve_options(category_probs, snr_ranges, babble_pieces)
    rng = np.random.default_rng(seed)
    out = []
    for mix in mixtures:
        keep = len(mix.interferers) if num_interferers is None else int(num_interferers)
        if len(mix.interferers) < keep:
            continue
        row_pool = pool
        if by_set:
            if mix.set not in pools:
                raise ListError(f"no noise pool for rows of set {mix.set!r}; "
                                f"pools: {sorted(pools)}")
            row_pool = pools[mix.set]
        row_probs = {c: p for c, p in probs.items()
                     if len(row_pool.get("speech" if c == "babble" else c, []))
                     >= (babble[0] if c == "babble" else 1)}
        if not row_probs:
            raise ListError(f"no noise pieces for categories {sorted(probs)} "
                            f"(pool: { {c: len(v) for c, v in row_pool.items()} })")
        category, keys, snr = draw_noise(row_pool, rng, row_probs, ranges, babble)
        out.append(Mixture(mix.set, mix.sources[:1 + keep], mix.length,
                           (Noise(category, keys, round(snr, 4)),)))
    return out


def generate_noisy_mixtures(utterances, num: int, noise_keys, num_speakers: int = 1,
                            snr_range=(-10.0, 10.0), seed: int = 0, mix_set: str = "test",
                            **noise_options) -> list[Mixture]:
    """:func:`generate_mixtures` with a noise tuple per row; ``num_speakers=1`` gives
    speech-enhancement rows (target + noise). ``noise_options`` go to :func:`add_noise`."""
    if num_speakers < 1:
        raise ValueError("a mixture needs a target speaker")
    rows = _draw_mixtures(utterances, num, num_speakers, snr_range, seed, mix_set)
    return add_noise(rows, noise_keys, seed=seed + 1, **noise_options)


def add_activity(mixtures, kind: str, seed: int = 0, fraction=(0.2, 0.8)) -> list[Mixture]:
    """Give every row an activity tuple (see the module doc): ``kind="absent"`` -> span
    ``0-0``; ``"sparse"`` -> a span of ``round(f * n)`` of the row's ``n`` frames
    (:func:`row_frames`; at least 1), ``f`` uniform in ``fraction``, its start uniform;
    seeded.

    Example
    -------
    >>> rows = [parse_row("test,test,id1,v/c,0,test,id2,v/d,-2,4.0")] * 3
    >>> [m.activity[0] for m in add_activity(rows, "absent")]
    ['absent', 'absent', 'absent']
    >>> [(m.activity[2] - m.activity[1]) / 100 for m in add_activity(rows, "sparse", 1)]
    [0.6, 0.22, 0.33]
    """
    import numpy as np

    if kind not in ACTIVITY_KINDS:
        raise ValueError(f"activity kind must be one of {ACTIVITY_KINDS}, got {kind!r}")
    lo, hi = (float(f) for f in fraction)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"sparse fraction ({lo}, {hi}) must satisfy 0 < low <= high <= 1")
    rng = np.random.default_rng([seed, 12])
    out = []
    for mix in mixtures:
        span = (kind, 0, 0)
        if kind == "sparse":
            n = row_frames(mix.length)
            size = min(n, max(1, int(round(rng.uniform(lo, hi) * n))))
            start = int(rng.integers(0, n - size + 1))
            span = (kind, start, start + size)
        out.append(Mixture(mix.set, mix.sources, mix.length, mix.noise, span))
    return out


def make_condition_lists(speech_dir: str, out_dir: str, num: int, noise_dir: str | None = None,
                         conditions=tuple(CONDITIONS), seed: int = 0, snr_range=(-10.0, 10.0),
                         set_name: str | None = None, sparse_fraction=(0.2, 0.8),
                         **noise_options) -> dict:
    """Write one list per named condition (:mod:`avse.data.conditions`); returns
    ``{condition: path}`` of the files ``<out_dir>/<set>_<condition>.csv``.

    ``speech_dir``: a speech shard split (e.g. ``OUT/shards/test`` of any corpus recipe);
    ``noise_dir``: a MUSAN noise shard split (``recipes/MUSAN``; the test split for test
    lists), needed by conditions with noise. ``num`` 3-talker rows are drawn once (targets
    and interferers of different speakers, SNRs in ``snr_range``) and every condition keeps
    the interferers it needs; noise (``noise_options`` as :func:`add_noise`) is drawn once
    per row, so conditions differ only in what is mixed in. Conditions with a silent target
    (``absent``, ``sparse``) add an activity tuple (:func:`add_activity`; sparse: the target
    speaks in a span of a fraction in ``sparse_fraction`` of each row). Deterministic for a
    seed.
    """
    from avse.data.noise import noise_pool
    from avse.data.shards import shard_utterances

    conds = [get_condition(c) for c in conditions]
    set_name = set_name or os.path.basename(os.path.normpath(speech_dir))
    utterances = shard_utterances(speech_dir, set_name)
    most = max(c.num_interferers for c in conds)
    rows = _draw_mixtures(utterances, num, most + 1, tuple(snr_range), seed, set_name)
    pool = None
    if any(c.noise for c in conds):
        if not noise_dir:
            raise ValueError("conditions " + ", ".join(c.name for c in conds if c.noise)
                             + " add noise: pass the MUSAN noise shards (noise_dir / "
                             "--noise_shards, e.g. data/musan/shards/test)")
        pool = noise_pool(noise_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for cond in conds:
        if cond.noise:
            out = add_noise(rows, pool, seed=seed + 1, num_interferers=cond.num_interferers,
                            **noise_options)
        else:
            out = [Mixture(m.set, m.sources[:1 + cond.num_interferers], m.length) for m in rows]
        if cond.target != "present":
            out = add_activity(out, cond.target, seed, sparse_fraction)
        paths[cond.name] = os.path.join(out_dir, f"{set_name}_{cond.name}.csv")
        write_list(out, paths[cond.name])
    return paths
