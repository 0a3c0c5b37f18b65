"""Mixture lists in the VoxMix format (the SEANet / MuSE ``data_list.csv``).

One mixture per row, comma separated, no header::

    <mix_set>,<set>,<spk>,<video>/<clip>,<snr>,<set>,<spk>,<video>/<clip>,<snr>[,...],<min_len_s>

The first 4-tuple after the mixture's set is the target (its SNR is 0 by
convention); every further 4-tuple is an interferer with its SNR in dB relative to
the target; the last field is the mixture length in seconds (the shortest source).
A 2-mix row has 10 fields, a 3-mix row 14. Example::

    test,test,id00017,01dfn2spqyE/00001,0,test,id01000,RvjbLfo3XDM/00052,-1.27,3.12

Example
-------
>>> row = "test,test,id00017,01dfn2spqyE/00001,0,test,id01000,RvjbLfo3XDM/00052,-1.27,3.12"
>>> mix = parse_row(row)
>>> mix.target.key, mix.interferers[0].snr, mix.length
('id00017/01dfn2spqyE/00001', -1.27, 3.12)
>>> format_row(mix) == row
True
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class Mixture:
    """A row of a mixture list: target first, then interferers; ``length`` in seconds."""

    set: str
    sources: tuple = field(default_factory=tuple)
    length: float = 0.0

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


def parse_row(line: str, where: str = "<row>") -> Mixture:
    """Parse one VoxMix row; ``where`` (``file:line``) goes into error messages."""
    fields = [f.strip() for f in line.strip().split(",")]
    if len(fields) < 10 or (len(fields) - 2) % 4 != 0:
        raise ListError(
            f"{where}: expected 2 + 4*k fields (k >= 2 sources: set,spk,video/clip,snr) "
            f"but found {len(fields)}: {line.strip()!r}"
        )
    try:
        length = float(fields[-1])
    except ValueError:
        raise ListError(f"{where}: last field must be the length in seconds, got {fields[-1]!r}")
    sources = []
    for i in range(1, len(fields) - 1, 4):
        set_, spk, path, snr = fields[i : i + 4]
        if path.count("/") != 1:
            raise ListError(f"{where}: field {i + 3} should be '<video>/<clip>', got {path!r}")
        try:
            snr = float(snr)
        except ValueError:
            raise ListError(f"{where}: field {i + 4} should be an SNR in dB, got {snr!r}")
        sources.append(Source(set_, spk, path, snr))
    return Mixture(fields[0], tuple(sources), length)


def format_row(mix: Mixture) -> str:
    """Inverse of :func:`parse_row`."""
    parts = [mix.set]
    for s in mix.sources:
        parts += [s.set, s.spk, s.path, format_number(s.snr)]
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
