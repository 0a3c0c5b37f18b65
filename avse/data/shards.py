"""WebDataset shards: writing per split, ``meta.json``, reading samples back, random access.

Layout of one split (see README "Shard format")::

    <split>/shard-000000.tar ... shard-%06d.tar
    <split>/meta.json

One sample per utterance, keyed ``<spk>/<video>/<clip>`` (no dots):

- ``flac``: 16-bit mono FLAC @16 kHz
- ``lips.npy``: uint8 ``[Tv, 88, 88]`` mouth ROI @25 fps, or ``emb.npy``: float16
  ``[Tv, 512]`` precomputed lip embeddings @25 fps
- or ``face.npy``: uint8 ``[Tv, 224, 224]`` face-centred frames of the tracked face with
  ``facelm.npy``: float32 ``[Tv, 5, 2]`` their landmarks (face-frame pixels); a recipe's
  ``--crop face``, the mouth preset cut at load time (the loaders' ``mouth_crop``)
- ``json``: ``{"key", "spk", "video", "clip", "split", "duration", "sr", "fps",
  "num_frames", ...}`` (``text``/``tokens`` where the corpus has them)

Example
-------
>>> import tempfile, numpy as np
>>> d = tempfile.mkdtemp()
>>> s = {"__key__": "id00001/abcdefghijk/00001", "flac": np.zeros(640, np.float32),
...      "lips.npy": np.zeros((1, 88, 88), np.uint8), "json": {"spk": "id00001", "duration": 0.04}}
>>> meta = write_split([s], d, shard_size=10)
>>> meta["count"], len(list(iter_split(d)))
(1, 1)
"""
from __future__ import annotations

import argparse
import io
import json
import math
import mmap
import os
import tarfile
import time
import warnings

import numpy as np

from avse.data.align import FPS, SAMPLE_RATE, align_av
from avse.faults import fault_point

FORMAT_VERSION = 1
SHARD_PATTERN = "shard-%06d.tar"
VISUAL_FIELDS = ("lips.npy", "emb.npy", "face.npy")
FACE_FIELD, FACE_LANDMARKS_FIELD = "face.npy", "facelm.npy"  # face-centred frames, landmarks


class ShardError(ValueError):
    """A shard folder or sample is malformed."""


class ShardCountWarning(UserWarning):
    """A split is written in fewer shards than asked for (none may be empty)."""


def encode_flac(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode ``wav [T]`` float in [-1, 1] as 16-bit mono FLAC bytes (values are clipped)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes):
    """Decode FLAC bytes to ``(wav [T] float32, sample_rate)``."""
    import soundfile as sf

    wav, sr = sf.read(io.BytesIO(data), dtype="float32")
    return wav, sr


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_sample(sample: dict) -> dict:
    """Turn a sample of arrays/dicts into the bytes WebDataset stores.

    ``flac`` may be float audio (encoded here) or already-encoded bytes; ``*.npy`` may be
    an array or bytes; ``json`` a dict or bytes.
    """
    key = sample["__key__"]
    if "." in key:
        raise ShardError(f"sample key {key!r} contains a dot; WebDataset splits keys at dots")
    out = {"__key__": key}
    for field, value in sample.items():
        if field == "__key__":
            continue
        if isinstance(value, (bytes, bytearray)):
            out[field] = bytes(value)
        elif field == "flac":
            out[field] = encode_flac(value)
        elif field.endswith("npy"):
            out[field] = encode_npy(value)
        elif field == "json":
            out[field] = json.dumps(value, sort_keys=True).encode()
        else:
            raise ShardError(f"sample {key}: do not know how to encode field {field!r}")
    return out


def decode_sample(sample: dict) -> dict:
    """Inverse of :func:`encode_sample` for a raw WebDataset sample (bytes per field)."""
    out = {"__key__": sample["__key__"]}
    for field, value in sample.items():
        if field.startswith("__"):
            out[field] = value
        elif field == "flac":
            out["wav"], out["sr"] = decode_flac(value)
        elif field.endswith("npy"):
            out[field] = decode_npy(value)
        elif field == "json":
            out[field] = json.loads(value)
    return out


def plan_shards(n_samples: int, shard_size: int, multiple: int = 1) -> list[int]:
    """Sample counts per shard: ``ceil(n / shard_size)`` rounded up to a multiple of ``multiple``.

    Counts differ by at most one, so ranks x workers that split the shards evenly also get
    (almost) the same number of samples. No shard is ever empty: when rounding up would
    give more shards than samples, the count is rounded down to a multiple instead, and
    when fewer samples than ``multiple`` exist, ``ceil(n / shard_size)`` shards are planned
    (:func:`write_split` warns in both cases).

    Example
    -------
    >>> plan_shards(10, 4, multiple=2)
    [3, 3, 2, 2]
    >>> plan_shards(10, 1, multiple=4), plan_shards(3, 10, multiple=4)
    ([2, 2, 1, 1, 1, 1, 1, 1], [3])
    """
    if n_samples <= 0:
        return []
    if shard_size < 1 or multiple < 1:
        raise ValueError("shard_size and multiple must be >= 1")
    n_shards = math.ceil(n_samples / shard_size)
    rounded = math.ceil(n_shards / multiple) * multiple
    if rounded <= n_samples:
        n_shards = rounded
    elif n_samples >= multiple:
        n_shards = n_samples // multiple * multiple
    base, extra = divmod(n_samples, n_shards)
    return [base + (1 if i < extra else 0) for i in range(n_shards)]


def write_split(samples, out_dir: str, shard_size: int = 1000, multiple: int = 1,
                n_samples: int | None = None, extra_meta: dict | None = None) -> dict:
    """Write samples into ``out_dir/shard-%06d.tar`` and ``out_dir/meta.json``.

    Arguments
    ---------
    samples : iterable of dict
        each with ``__key__`` and fields (see :func:`encode_sample`); ``json`` must carry
        ``spk`` and ``duration`` (seconds) for the meta summary.
    shard_size : int
        the most samples per shard (fewer when rounding to ``multiple`` adds shards).
    multiple : int
        the shard count is a multiple of this (set it to ranks x workers).
    n_samples : int
        number of samples, when ``samples`` is a generator (else ``len(samples)``).

    Returns the meta dict (also written to ``meta.json``, last, so its presence marks a
    finished split). What a previous attempt left in ``out_dir`` (shards, meta.json,
    speakers.txt, temporary files) is removed first; each shard is written under a
    temporary name and renamed (fault point ``shard_write`` between the two), so a killed
    write leaves no half shard under a shard's name and no meta.json.
    """
    import webdataset as wds

    if n_samples is None:
        samples = list(samples)
        n_samples = len(samples)
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # a previous or half-written attempt, its temporary files
        if name.startswith("shard-") or name in ("meta.json", "speakers.txt") or \
                name.endswith(".tmp"):
            os.remove(os.path.join(out_dir, name))
    plan = plan_shards(n_samples, shard_size, multiple)
    if plan and len(plan) % multiple:
        warnings.warn(f"{out_dir}: {n_samples} sample(s) cannot fill a multiple of "
                      f"{multiple} shards of at least one sample; writing {len(plan)} shard(s)",
                      ShardCountWarning, stacklevel=2)
    elif plan and max(plan) > shard_size:
        warnings.warn(f"{out_dir}: {len(plan)} shard(s) of up to {max(plan)} samples (more than "
                      f"shard_size {shard_size}), so that the count stays a multiple of "
                      f"{multiple} with no empty shard", ShardCountWarning, stacklevel=2)
    speakers, seconds, fields, counts = set(), 0.0, set(), []
    it = iter(samples)
    for shard_idx, count in enumerate(plan):
        path = os.path.join(out_dir, SHARD_PATTERN % shard_idx)
        with wds.TarWriter(path + ".tmp") as sink:
            for _ in range(count):
                sample = next(it)
                meta = sample.get("json") or {}
                if isinstance(meta, (bytes, bytearray)):
                    meta = json.loads(meta)
                speakers.add(meta.get("spk"))
                seconds += float(meta.get("duration", 0.0))
                enc = encode_sample(sample)
                fields.update(k for k in enc if not k.startswith("__"))
                sink.write(enc)
        fault_point("shard_write")
        os.replace(path + ".tmp", path)  # a shard is complete under its name, or absent
        counts.append(count)
    meta = {
        "format_version": FORMAT_VERSION,
        "count": n_samples,
        "hours": round(seconds / 3600.0, 6),
        "speakers": len(speakers - {None}),
        "fields": sorted(fields),
        "num_shards": len(plan),
        "shard_pattern": SHARD_PATTERN,
        "shard_counts": counts,
        "sample_rate": SAMPLE_RATE,
        "fps": FPS,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    meta.update(extra_meta or {})
    with open(os.path.join(out_dir, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(os.path.join(out_dir, "meta.json.tmp"), os.path.join(out_dir, "meta.json"))
    return meta


def read_meta(split_dir: str) -> dict:
    """Read ``split_dir/meta.json`` with a clear error when the split is missing or unfinished."""
    path = os.path.join(split_dir, "meta.json")
    if not os.path.isfile(path):
        raise ShardError(
            f"{path} not found: {split_dir} is not a finished shard split "
            "(run the recipe's shard stage first)"
        )
    with open(path) as f:
        try:
            meta = json.load(f)
        except ValueError as err:
            raise ShardError(f"{path} is not valid JSON ({err}); re-run the recipe's shard "
                             "stage") from None
    return check_meta(meta, path)


META_REQUIRED = ("count", "num_shards", "shard_pattern")


def check_meta(meta: dict, where: str) -> dict:
    """``meta`` (read from ``where``) if this AVSE reads its format version and it has the
    fields readers need (:data:`META_REQUIRED`), else a ShardError naming ``where``."""
    if not isinstance(meta, dict):
        raise ShardError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{where}: format_version {meta.get('format_version')} but this AVSE reads "
            f"{FORMAT_VERSION}; re-run the recipe's shard stage"
        )
    missing = [k for k in META_REQUIRED if k not in meta]
    if missing:
        raise ShardError(f"{where}: no {', '.join(missing)}; a meta.json written by the "
                         "recipes' shard stage has them: re-run it")
    return meta


def shard_urls(split_dir: str) -> list[str]:
    """Paths of the shards of a split, in order, checked against ``meta.json``."""
    meta = read_meta(split_dir)
    urls = [os.path.join(split_dir, meta["shard_pattern"] % i) for i in range(meta["num_shards"])]
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise ShardError(f"{split_dir}: {len(missing)} shard(s) listed in meta.json are missing, "
                         f"e.g. {missing[0]}; re-run the recipe's shard stage")
    return urls


def iter_tar(path: str):
    """Yield raw samples (``__key__`` + bytes per field) of one tar, in order, without webdataset."""
    current, key = {}, None
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, ext = member_key(member.name)
            if k != key:
                if current:
                    yield current
                current, key = {"__key__": k}, k
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


def iter_split(split_dir: str, decode: bool = True):
    """Yield every sample of a split, shard by shard (decoded unless ``decode=False``)."""
    for url in shard_urls(split_dir):
        for raw in iter_tar(url):
            yield decode_sample(raw) if decode else raw


def member_key(name: str):
    """``(key, field)`` of a tar member name: ``"id1/vid/00001.lips.npy"`` -> ``("id1/vid/00001", "lips.npy")``.

    Example
    -------
    >>> member_key("id1/vid/00001.lips.npy")
    ('id1/vid/00001', 'lips.npy')
    """
    base, dirname = os.path.basename(name), os.path.dirname(name)
    stem, _, ext = base.partition(".")
    return (f"{dirname}/{stem}" if dirname else stem), ext


def iter_json(split_dir: str):
    """Yield ``(key, info)`` for every sample of a split, reading only its ``json`` members."""
    for url in shard_urls(split_dir):
        try:
            with tarfile.open(url) as tar:
                for member in tar:
                    key, ext = member_key(member.name)
                    if member.isfile() and ext == "json":
                        yield key, json.loads(tar.extractfile(member).read())
        except (tarfile.TarError, ValueError) as err:  # ValueError: a json member
            raise ShardError(f"{url}: cannot read ({err}); re-run the recipe's shard stage "
                             "or remove the shard and its count from meta.json") from None


def shard_utterances(split_dir: str, set_name: str | None = None) -> list:
    """``[{key, spk, set, duration}]`` of a shard split, reading only the json members
    (``set``: ``set_name``, default the split folder's name)."""
    set_name = set_name or os.path.basename(os.path.normpath(split_dir))
    out = [{"key": info.get("key") or key, "spk": info.get("spk") or key.split("/")[0],
            "set": set_name, "duration": float(info["duration"])}
           for key, info in iter_json(split_dir)]
    if not out:
        raise ShardError(f"{split_dir}: no utterances (json members) in its shards")
    return out


def scan_speakers(split_dir: str) -> list:
    """Sorted speaker ids of a split, reading only the ``*.json`` members of its shards."""
    return sorted({info.get("spk") or key.split("/")[0] for key, info in iter_json(split_dir)})


def split_speakers(split_dir: str) -> list:
    """Sorted speaker ids: ``speakers.txt`` (one a line) if it matches meta.json, else a scan."""
    path = os.path.join(split_dir, "speakers.txt")
    if os.path.isfile(path):
        with open(path) as f:
            speakers = [line.strip() for line in f if line.strip()]
        if len(speakers) == read_meta(split_dir).get("speakers"):
            return sorted(speakers)
    return scan_speakers(split_dir)


def write_speakers_file(split_dir: str, speakers=None) -> str:
    """Write ``split_dir/speakers.txt`` (``speakers``, sorted; default: scanned from the shards)
    so that loaders need not scan; returns its path."""
    path = os.path.join(split_dir, "speakers.txt")
    speakers = scan_speakers(split_dir) if speakers is None else sorted(set(speakers))
    with open(path + ".tmp", "w") as f:
        f.write("".join(s + "\n" for s in speakers))
    os.replace(path + ".tmp", path)
    return path


def resolve_visual_field(meta: dict, visual_field: str = "auto") -> str:
    """``"lips.npy"``, ``"emb.npy"`` or ``"face.npy"`` from meta.json's ``fields``
    (``visual_field="auto"``)."""
    present = [k for k in VISUAL_FIELDS if k in meta.get("fields", [])]
    if visual_field == "auto":
        if len(present) != 1:
            raise ShardError(f"visual_field='auto' needs exactly one of {VISUAL_FIELDS} in "
                             f"meta.json fields {meta.get('fields')}; pass visual_field explicitly")
        return present[0]
    field = visual_field if visual_field.endswith(".npy") else visual_field + ".npy"
    if field not in present:
        raise ShardError(f"visual_field {visual_field!r}: the shards hold "
                         f"{present or 'no visual field'}")
    return field


def decode_av(key: str, flac: bytes, visual: bytes | None = None):
    """Decode a sample's ``flac`` (+ ``*.npy``) bytes: ``(wav [640 Tv] float32, visual [Tv, ...])``,
    cut to whole aligned frames; ``visual=None`` decodes the audio only (``(wav [T], None)``)."""
    wav, sr = decode_flac(flac)
    if sr != SAMPLE_RATE:
        raise ShardError(f"{key}: audio at {sr} Hz, expected {SAMPLE_RATE}")
    return (wav, None) if visual is None else align_av(wav, decode_npy(visual), 1)


class ShardIndex:
    """Random access by key into uncompressed local shards: ``key -> {field: (offset, size)}``.

    Built from the tar headers only (no sample data is read); ``keys`` limits what is kept.
    The first split holding a key wins. Reads are slices of shards mapped into memory
    (``mmap``; at most ``max_open`` per process, remapped in each DataLoader worker).
    """

    def __init__(self, shard_dirs, keys=None, max_open: int = 64):
        wanted = None if keys is None else set(keys)
        self.entries, self.max_open, self._maps, self._pid = {}, max_open, {}, None
        for split_dir in ([shard_dirs] if isinstance(shard_dirs, str) else shard_dirs):
            for url in shard_urls(split_dir):
                with tarfile.open(url) as tar:
                    for m in tar:
                        key, ext = member_key(m.name)
                        if m.isfile() and (wanted is None or key in wanted):
                            fields_ = self.entries.setdefault(key, {"__url__": url})
                            if fields_["__url__"] == url:
                                fields_[ext] = (m.offset_data, m.size)

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}, "_pid": None}  # mappings stay in their process

    def _map(self, url: str) -> mmap.mmap:
        if self._pid != os.getpid():  # a new process: map the shards again
            self._maps, self._pid = {}, os.getpid()
        mapped = self._maps.pop(url, None)
        if mapped is None:
            if len(self._maps) >= self.max_open:
                self._maps.pop(next(iter(self._maps))).close()  # the least recently used
            with open(url, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps[url] = mapped
        return mapped

    def read(self, key: str, field: str) -> bytes:
        """The raw bytes of ``field`` of sample ``key``."""
        entry = self.entries[key]
        if field not in entry:
            raise ShardError(f"{entry['__url__']}: utterance {key} has no {field}")
        offset, size = entry[field]
        return self._map(entry["__url__"])[offset:offset + size]

    def load(self, key: str, visual_field: str | None = None):
        """``(wav [T] float32, visual [Tv, ...] or None)``, aligned when visual is read."""
        return decode_av(key, self.read(key, "flac"),
                         self.read(key, visual_field) if visual_field else None)


def main(argv=None):
    """``avse-inspect-shards DIR``: print meta.json and the first sample of a split."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("split_dir", help="a folder with shard-*.tar and meta.json")
    parser.add_argument("--verify", action="store_true", help="read every sample and count")
    args = parser.parse_args(argv)
    try:
        meta = read_meta(args.split_dir)
    except ShardError as err:
        parser.exit(2, f"error: {err}\n")
    print(json.dumps(meta, indent=2, sort_keys=True))
    n = 0
    for sample in iter_split(args.split_dir):
        if n == 0:
            shapes = {k: getattr(v, "shape", v) for k, v in sample.items() if k != "json"}
            print("first sample:", shapes, sample.get("json"))
        n += 1
        if not args.verify:
            break
    if args.verify:
        status = "OK" if n == meta["count"] else "MISMATCH"
        print(f"{status}: read {n} samples, meta.json says {meta['count']}")
        return 0 if n == meta["count"] else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
