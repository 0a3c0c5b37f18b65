"""Helpers shared by the recipe tests: rejected.tsv rows, decoded shard splits, shard checks,
failing runs."""
import csv
import glob
import json
import os

from avse.data import shards
from tests.conftest import run_cmd


def read_rejected(out_dir) -> dict:
    """``OUT/rejected.tsv`` as ``{key: row}``."""
    with open(os.path.join(out_dir, "rejected.tsv")) as f:
        return {r["key"]: r for r in csv.DictReader(f, delimiter="\t")}


def read_split(split_dir) -> dict:
    """Every sample of a shard split read back with webdataset, decoded, by key."""
    import webdataset as wds

    urls = shards.shard_urls(str(split_dir))
    return {s["__key__"]: shards.decode_sample(s)
            for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}


def assert_split_reads_completely(split_dir) -> int:
    """Read every shard of a split on its own through a plain ``webdataset.WebDataset``.

    Each shard must yield at least one sample; every key is dot-free, equals the key in
    its json and holds exactly meta.json's ``fields``; the shards on disk are the ones
    meta.json names, and together they hold meta.json's ``count`` samples. Returns it.
    """
    import webdataset as wds

    split_dir = str(split_dir)
    meta = shards.read_meta(split_dir)
    urls = sorted(glob.glob(os.path.join(split_dir, "shard-*.tar")))
    assert [os.path.basename(u) for u in urls] == [
        meta["shard_pattern"] % i for i in range(meta["num_shards"])], (split_dir, urls)
    total = 0
    for url in urls:
        try:
            samples = list(wds.WebDataset(url, shardshuffle=False))
        except ValueError as err:  # webdataset's check for a shard without samples
            raise AssertionError(f"{url}: {err}") from None
        assert samples, f"{url} holds no sample"
        for s in samples:
            key = s["__key__"]
            assert "." not in key, f"{url}: key {key!r} has a dot"
            assert sorted(k for k in s if not k.startswith("__")) == sorted(meta["fields"]), \
                (url, key, sorted(s))
            assert json.loads(s["json"])["key"] == key, (url, key)
        total += len(samples)
    assert total == meta["count"], (split_dir, total, meta["count"])
    return total


def assert_splits_read_completely(out_dir) -> dict:
    """:func:`assert_split_reads_completely` for every split under ``OUT/shards``;
    returns ``{split: count}`` (at least one split)."""
    root = os.path.join(str(out_dir), "shards")
    counts = {split: assert_split_reads_completely(os.path.join(root, split))
              for split in sorted(os.listdir(root))
              if os.path.isdir(os.path.join(root, split))}
    assert counts, f"{root} holds no split"
    return counts


def assert_rerun_is_a_noop(cmd, out_dir):
    """Run ``cmd`` again over a finished ``out_dir``: no file under it may be re-written and
    rejected.tsv must hold the same rows. Returns the CompletedProcess."""
    out_dir = str(out_dir)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(out_dir) for f in fs)
    before = {f: os.stat(f).st_mtime_ns for f in files if "rejected.tsv" not in f}
    with open(os.path.join(out_dir, "rejected.tsv")) as f:
        rejected = f.read()
    proc = run_cmd(cmd)
    assert before == {f: os.stat(f).st_mtime_ns for f in before}
    with open(os.path.join(out_dir, "rejected.tsv")) as f:
        assert f.read() == rejected
    return proc


def assert_fails(cmd, message: str, code: int = 2):
    """Run ``cmd``; it must exit with ``code`` and print ``message`` on stderr."""
    proc = run_cmd(cmd, check=False)
    assert proc.returncode == code and message in proc.stderr, (proc.returncode, proc.stderr)


def run_recipe_module(module: str, args, faults=None):
    """``python -m <module> args`` as a subprocess, with ``AVSE_FAULTS=faults`` (or none)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    env.pop("AVSE_FAULTS", None)
    if faults:
        env["AVSE_FAULTS"] = faults
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def tree_files(out) -> list:
    """Every file below ``out``, relative, sorted."""
    return sorted(os.path.relpath(os.path.join(d, f), out)
                  for d, _, fs in os.walk(out) for f in fs)


def split_content(split_dir) -> dict:
    """Every raw sample of a split by key (each key must appear once) and its meta.json
    without the creation date."""
    samples = list(shards.iter_split(split_dir, decode=False))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)), f"{split_dir}: duplicate keys {keys}"
    meta = shards.read_meta(split_dir)
    meta.pop("created")
    return {"meta": meta, "samples": {s["__key__"]: s for s in samples}}


def assert_same_output(out: str, ref: str) -> list:
    """``out`` (a resumed run) holds the same files as ``ref`` (an uninterrupted one) with the
    same bytes (shards compared sample by sample, paths inside files mapped), and no
    temporary or journal; returns the file list."""
    files = tree_files(out)
    assert files == tree_files(ref)
    assert not [f for f in files if f.endswith((".tmp", ".partial"))], files
    for name in files:
        if name.endswith("meta.json"):
            split_dir = os.path.dirname(os.path.join(out, name))
            got, want = split_content(split_dir), split_content(split_dir.replace(out, ref))
            assert got == want, name
        elif not name.endswith(".tar"):
            with open(os.path.join(out, name), "rb") as a, open(os.path.join(ref, name),
                                                                  "rb") as b:
                assert a.read().replace(out.encode(), ref.encode()) == b.read(), name
    return files
