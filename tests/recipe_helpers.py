"""Helpers shared by the recipe tests: rejected.tsv rows, decoded shard splits, failing runs."""
import csv
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


def assert_fails(cmd, message: str, code: int = 2):
    """Run ``cmd``; it must exit with ``code`` and print ``message`` on stderr."""
    proc = run_cmd(cmd, check=False)
    assert proc.returncode == code and message in proc.stderr, (proc.returncode, proc.stderr)
