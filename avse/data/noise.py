"""Noise for the mixer: MUSAN noise shards (``recipes/MUSAN``) as a ``MixtureConfig.noise_source``.

A noise shard split holds pieces of at most 10 s keyed ``<category>/<subset>/<stem>-<NNN>``
(``category``: ``music``, ``noise`` or ``speech``; the key's first part names it). A noise
example is one of:

- ``noise``: one noise piece at SNR ~ U(0, 15) dB,
- ``music``: one music piece at SNR ~ U(5, 15) dB,
- ``babble``: the sum of 3-7 different ``speech`` pieces, each at equal power, at SNR
  ~ U(13, 20) dB,
- ``speech`` (off by default): one speech piece at U(13, 20) dB,

the MUSAN augmentation convention of Kaldi's x-vector recipe (Snyder et al., 2018). SNRs
are relative to the target speech, like interferers (:func:`avse.data.mixing.mix_sources`),
and hold exactly on the mixed span unless the noise is silent there (no piece is silent
as a whole: the recipe drops those). Category probabilities and every range are
constructor arguments, so a hyperpyyaml file can declare them.

Example
-------
>>> import tempfile
>>> from avse.data.shards import write_split
>>> d, rng = tempfile.mkdtemp(), np.random.default_rng(0)
>>> pieces = [{"__key__": f"{c}/sub/{c}-{i:04d}-000", "flac": 0.1 * rng.standard_normal(8000),
...            "json": {"category": c, "duration": 0.5}}
...           for c in ("music", "noise", "speech") for i in range(4)]
>>> meta = write_split(pieces, d, shard_size=5)
>>> noise = MusanNoise(d)
>>> wav, snr = noise(np.random.default_rng(1))
>>> wav.dtype, len(wav) == 8000, 0.0 <= snr <= 20.0
(dtype('float32'), True, True)
"""
from __future__ import annotations

import numpy as np

from avse.data.mixing import SILENCE_POWER, fit_length, power
from avse.data.shards import ShardIndex

CATEGORIES = ("music", "noise", "speech")
"""Categories of the MUSAN tree (and of the first part of every noise key)."""

DEFAULT_CATEGORY_PROBS = {"noise": 1.0, "music": 1.0, "babble": 1.0}
"""Relative probabilities of the kinds of noise (normalised; ``speech`` is off)."""

DEFAULT_SNR_RANGES = {"noise": (0.0, 15.0), "music": (5.0, 15.0), "speech": (13.0, 20.0),
                      "babble": (13.0, 20.0)}
"""SNR of each kind of noise relative to the target, uniform, in dB."""

BABBLE_PIECES = (3, 7)
"""A babble example sums this many (uniform, inclusive) different speech pieces."""


def noise_category(key: str) -> str:
    """The category of a noise piece: the first part of its key (``noise/free-sound/x-000``)."""
    return key.split("/", 1)[0]


def pool_from_keys(keys) -> dict:
    """``{category: sorted keys}`` from noise piece keys."""
    pool = {}
    for key in sorted(keys):
        pool.setdefault(noise_category(key), []).append(key)
    return pool


def noise_pool(shard_dirs) -> dict:
    """``{category: sorted keys}`` of the pieces in noise shard split(s) (tar headers only)."""
    index = ShardIndex(shard_dirs)
    return pool_from_keys(k for k, fields in index.entries.items() if "flac" in fields)


def resolve_options(category_probs=None, snr_ranges=None, babble_pieces=BABBLE_PIECES):
    """Validated ``(category_probs, snr_ranges, babble_pieces)``; missing entries get defaults.

    ``category_probs`` replaces the defaults as a whole (categories it leaves out are off);
    ``snr_ranges`` updates them per category.
    """
    probs = dict(DEFAULT_CATEGORY_PROBS if category_probs is None else category_probs)
    known = set(CATEGORIES) | {"babble"}
    unknown = sorted(set(probs) - known)
    if unknown:
        raise ValueError(f"category_probs: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{unknown}; known: {sorted(known)}")
    probs = {c: float(p) for c, p in probs.items()}
    if min(probs.values(), default=-1.0) < 0 or sum(probs.values()) <= 0:
        raise ValueError(f"category_probs must be >= 0 with a positive sum, got {category_probs}")
    ranges = {c: tuple(float(x) for x in r) for c, r in DEFAULT_SNR_RANGES.items()}
    for c, r in dict(snr_ranges or {}).items():
        if c not in known:
            raise ValueError(f"snr_ranges: unknown category {c!r}; known: {sorted(known)}")
        r = tuple(float(x) for x in r)
        if len(r) != 2 or r[0] > r[1]:
            raise ValueError(f"snr_ranges[{c!r}] must be (low, high) with low <= high, got {r}")
        ranges[c] = r
    lo, hi = (int(x) for x in babble_pieces)
    if not 1 <= lo <= hi:
        raise ValueError(f"babble_pieces must be (low, high) with 1 <= low <= high, "
                         f"got {babble_pieces}")
    return {c: p for c, p in probs.items() if p > 0}, ranges, (lo, hi)


def draw_noise(pool: dict, rng: np.random.Generator, category_probs: dict, snr_ranges: dict,
               babble_pieces=BABBLE_PIECES):
    """Draw one noise example: ``(category, keys, snr_db)`` (options from :func:`resolve_options`).

    ``babble`` draws different ``speech`` keys (as many as there are, when fewer than drawn).
    """
    cats = sorted(category_probs)
    p = np.array([category_probs[c] for c in cats], np.float64)
    category = cats[int(rng.choice(len(cats), p=p / p.sum()))]
    keys = pool.get("speech" if category == "babble" else category) or []
    if not keys:
        raise ValueError(f"no {category!r} noise pieces to draw from")
    if category == "babble":
        k = min(int(rng.integers(babble_pieces[0], babble_pieces[1] + 1)), len(keys))
        picked = tuple(keys[int(j)] for j in rng.choice(len(keys), k, replace=False))
    else:
        picked = (keys[int(rng.integers(len(keys)))],)
    return category, picked, float(rng.uniform(*snr_ranges[category]))


def _fit_wrap(wav: np.ndarray, n_samples: int, rng=None) -> np.ndarray:
    """``wav`` cut or wrap-repeated to ``n_samples``, from sample 0 (``rng=None``) or at random."""
    if rng is None or len(wav) == 0:
        return fit_length(wav, n_samples, None, mode="wrap")
    if len(wav) >= n_samples:
        return fit_length(wav, n_samples, rng)
    return np.resize(np.roll(wav, -int(rng.integers(len(wav)))), n_samples)


def combine_pieces(wavs, n_samples: int | None = None, rng=None) -> np.ndarray:
    """One noise waveform ``[n_samples]`` float32 from pieces (babble: several).

    Each piece is cut or wrap-repeated to ``n_samples`` (default: the longest piece),
    starting at sample 0 (``rng=None``: fixed lists) or at a random sample. Several pieces
    are brought to equal power before they are summed (each babble talker as loud as the
    others); one piece is returned as it is (the SNR scaling sets its level).
    """
    wavs = [np.asarray(w, np.float32) for w in wavs]
    n = max(len(w) for w in wavs) if n_samples is None else int(n_samples)
    if len(wavs) == 1:
        return _fit_wrap(wavs[0], n, rng).astype(np.float32)
    out = np.zeros(n, np.float64)
    for w in wavs:
        w = _fit_wrap(w, n, rng).astype(np.float64)
        p = power(w)
        out += w / np.sqrt(p) if p > SILENCE_POWER else w
    return out.astype(np.float32)


def read_noise(index, keys, n_samples: int, rng=None) -> np.ndarray:
    """The noise of a list row: pieces ``keys`` from a :class:`~avse.data.shards.ShardIndex`,
    combined to ``[n_samples]`` (:func:`combine_pieces`)."""
    return combine_pieces([index.load(k)[0] for k in keys], n_samples, rng)


class MusanNoise:
    """Noise examples from MUSAN noise shards: ``noise(rng) -> (wav [T] float32 @16 kHz, snr_db)``.

    A valid ``MixtureConfig.noise_source``: the mixer crops or repeats ``wav`` to the
    example and scales it to ``snr_db`` relative to the target. Pieces are read by random
    access into the (uncompressed) tars; only the tar index is held in memory, unless
    ``cache``. Everything is drawn from the ``rng`` it is given (reproducible), and the
    object pickles (DataLoader workers each get a copy).

    Arguments
    ---------
    shard_dirs : str or list of str
        noise shard split(s) of the MUSAN recipe (``OUT/shards/train`` for training).
    category_probs : dict, optional
        ``{kind: relative probability}`` over ``noise``, ``music``, ``babble``, ``speech``
        (default ``{noise: 1, music: 1, babble: 1}``); a kind left out is never drawn.
    snr_ranges : dict, optional
        ``{kind: (low, high)}`` in dB, updating :data:`DEFAULT_SNR_RANGES`.
    babble_pieces : (int, int)
        how many different speech pieces a babble example sums (uniform, inclusive).
    cache : bool
        keep every decoded piece in memory (for small corpora: 64 kB per second of noise).

    Example
    -------
    ``MixtureConfig(noise_prob=0.5, noise_source=MusanNoise("data/musan/shards/train"))``
    """

    def __init__(self, shard_dirs, category_probs=None, snr_ranges=None,
                 babble_pieces=BABBLE_PIECES, cache: bool = False):
        self.shard_dirs = [shard_dirs] if isinstance(shard_dirs, str) else list(shard_dirs)
        self.cache = {} if cache else None
        self.category_probs, self.snr_ranges, self.babble_pieces = resolve_options(
            category_probs, snr_ranges, babble_pieces)
        self.index = ShardIndex(self.shard_dirs)
        self.pool = pool_from_keys(k for k, f in self.index.entries.items() if "flac" in f)
        where = ", ".join(self.shard_dirs)
        for kind in self.category_probs:
            source = "speech" if kind == "babble" else kind
            have = len(self.pool.get(source, []))
            need = self.babble_pieces[0] if kind == "babble" else 1
            if have < need:
                raise ValueError(
                    f"{where}: {have} {source!r} piece(s), but {kind!r} noise needs at least "
                    f"{need}; give shards that hold them or set category_probs[{kind!r}] to 0 "
                    f"(pieces found: { {c: len(v) for c, v in self.pool.items()} })")

    def load(self, key: str) -> np.ndarray:
        """Decoded piece ``key``: ``[T]`` float32 @16 kHz."""
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        wav = self.index.load(key)[0]
        if self.cache is not None:
            self.cache[key] = wav
        return wav

    def draw(self, rng: np.random.Generator):
        """``(category, keys, snr_db)`` of one noise example (no audio is read)."""
        return draw_noise(self.pool, rng, self.category_probs, self.snr_ranges, self.babble_pieces)

    def __call__(self, rng: np.random.Generator):
        """``(wav [T] float32, snr_db)``: ``T`` = the piece length (babble: the longest)."""
        _, keys, snr = self.draw(rng)
        return combine_pieces([self.load(k) for k in keys], rng=rng), snr

    def __repr__(self):
        counts = {c: len(v) for c, v in self.pool.items()}
        return (f"MusanNoise({self.shard_dirs}, pieces={counts}, category_probs="
                f"{self.category_probs}, snr_ranges={self.snr_ranges}, "
                f"babble_pieces={self.babble_pieces}, cache={self.cache is not None})")
