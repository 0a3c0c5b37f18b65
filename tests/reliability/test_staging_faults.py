"""Staging survives broken media and kill -9 (issue 13, Staging).

- Fuzzed media (tests/reliability/staging_media.py) through the VoxCeleb2 recipe in-process,
  and through LRS3's manifest (same probe): each unusable file lands in rejected.tsv with its
  reason, the usable ones (120 fps, 48 kHz stereo, a header claiming less than the content)
  are staged correctly, the run never stops; a re-run does not retry a rejection unless
  ``--retry_rejected``.
- kill -9 in each stage (``AVSE_FAULTS`` fail points, one subprocess per kill), then the
  same command again: every stage completes, its output equals an uninterrupted run's (each
  key once in the shards, no half shard, meta.json only for complete splits, no temp file).
"""
import json
import os
import re
import signal

import numpy as np
import pytest

from avse.recipes import lrs3, stages, voxceleb2
from avse.recipes.common import Journal
from avse.video.media import MediaError, decode_media
from tests.recipe_helpers import (assert_same_output, read_rejected, read_split,
                                  run_recipe_module, split_content, tree_files)
from tests.reliability.staging_media import (
    FUZZ_CASES,
    HANGING_CASES,
    unreadable,
    write_av,
    write_lying_duration,
    write_random_bytes,
)



CASES = {**FUZZ_CASES, **HANGING_CASES}


def _vox_tree(root, good: int = 3) -> dict:
    """``good`` clips of distinct speakers + one clip per fuzz case, VoxCeleb2 dev layout;
    returns ``{case name: (key, path)}``."""
    for i in range(good):
        write_av(root / "dev" / "mp4" / f"id0000{i}" / f"video{i}" / "00001.mp4", seed=i)
    out = {}
    for name, (write, _) in CASES.items():
        spk = "fz" + name.replace("_", "")
        path = root / "dev" / "mp4" / spk / "v" / "00001.mp4"
        write(path)
        out[name] = (f"{spk}/v/00001", str(path))
    return out


def _counting(monkeypatch):
    """Count the calls of the extract worker (in-process runs, nj=1)."""
    calls = []
    real = stages.extract_utterance

    def counted(entry, **kw):
        calls.append(entry["key"])
        return real(entry, **kw)

    monkeypatch.setattr(stages, "extract_utterance", counted)
    return calls


def test_fuzzed_media_are_rejected_with_reasons_and_the_run_completes(tmp_path, monkeypatch):
    corpus, out = tmp_path / "corpus", str(tmp_path / "out")
    cases = _vox_tree(corpus)
    vox = ["--out_dir", out, "--nj", "1"]
    with unreadable(cases["unreadable"][1]):
        assert voxceleb2.main(["manifest", "--corpus_dir", str(corpus), "--val_fraction", "0"]
                              + vox) == 0
        assert voxceleb2.main(["extract"] + vox) == 0
    assert voxceleb2.main(["shards", "--shard_size", "2", "--shard_multiple", "1"] + vox) == 0
    assert voxceleb2.main(["lists", "--mixtures", "train:4", "--num_speakers", "2"] + vox) == 0

    rejected, kept = read_rejected(out), read_split(os.path.join(out, "shards", "train"))
    stats = {"fuzzed": len(cases), "rejected": {}, "kept": []}
    for name, (key, path) in cases.items():
        verdict, word = CASES[name][1]
        if verdict == "reject":
            assert key in rejected and key not in kept, name
            assert word in rejected[key]["reason"] and rejected[key]["path"] == path, \
                (name, rejected[key])
            stats["rejected"][name] = rejected[key]["stage"]
        else:
            assert key in kept and key not in rejected, (name, rejected.get(key))
            stats["kept"].append(name)
    assert len(kept) == 3 + len(stats["kept"]) and len(rejected) == len(stats["rejected"])
    assert stats["rejected"]["lying_duration"] == "extract"  # the header is found out decoding

    # the usable ones are staged right: 25 fps, 16 kHz mono, the real duration
    for name in stats["kept"]:
        s = kept[cases[name][0]]
        assert s["lips.npy"].shape == (30, 88, 88) and s["sr"] == 16000, name
        assert len(s["wav"]) == 640 * 30 and s["json"]["duration"] == 1.2, name
    lips = kept[cases["fps120"][0]]["lips.npy"].astype(float).mean(axis=(1, 2))
    source = (8 * np.floor(np.arange(30) * 120 / 25 + 1e-6)) % 256  # the 120 fps frame shown
    assert np.abs(lips - source).max() < 4, np.c_[lips, source]
    spec = np.abs(np.fft.rfft(kept[cases["stereo48k"][0]]["wav"][:16000]))  # 1 s: 1 Hz bins
    assert {int(np.argmax(spec[300:600])) + 300, int(np.argmax(spec[700:1000])) + 700} \
        == {440, 880}  # both channels, mixed down
    assert spec[440] > 0.5 * spec[880] > 0.25 * spec[440]

    # a re-run retries nothing: the unreadable file (readable now) stays rejected
    calls = _counting(monkeypatch)
    assert voxceleb2.main(["manifest", "--corpus_dir", str(corpus), "--val_fraction", "0"]
                          + vox) == 0
    assert voxceleb2.main(["extract"] + vox) == 0
    assert calls == [] and read_rejected(out) == rejected
    # --retry_rejected probes / decodes the rejected ones again, and only those
    assert voxceleb2.main(["manifest", "--corpus_dir", str(corpus), "--val_fraction", "0",
                           "--retry_rejected"] + vox) == 0
    assert voxceleb2.main(["extract", "--retry_rejected"] + vox) == 0
    unread, lying = cases["unreadable"][0], cases["lying_duration"][0]
    assert sorted(calls) == sorted([unread, lying])
    again = read_rejected(out)
    assert unread not in again and set(again) == set(rejected) - {unread}
    assert all(again[k]["reason"] == rejected[k]["reason"] for k in again)
    print("\nfuzzed staging:", json.dumps(stats))


def test_lrs3_manifest_shares_the_probe(tmp_path):
    corpus, out = tmp_path / "lrs3", str(tmp_path / "out")
    names = [n for n, (_, (v, _)) in FUZZ_CASES.items()
             if v == "reject" and n not in ("lying_duration", "unreadable")]
    for i in range(2):
        write_av(corpus / "test" / f"goodVid{i}" / "00001.mp4", seed=i)
    for name in names:
        FUZZ_CASES[name][0](corpus / "test" / ("fz" + name.replace("_", "")) / "00001.mp4")
    for mp4 in corpus.rglob("*.mp4"):
        mp4.with_suffix(".txt").write_text("Text:  HELLO THERE\nConf:  4\n")
    assert lrs3.main(["manifest", "--corpus_dir", str(corpus), "--out_dir", out]) == 0
    rejected = read_rejected(out)
    for name in names:
        row = rejected["fz" + name.replace("_", "") + "/test/00001"]
        assert FUZZ_CASES[name][1][1] in row["reason"], (name, row)
    assert len(rejected) == len(names)
    assert lrs3.main(["manifest", "--corpus_dir", str(corpus), "--out_dir", out,
                      "--retry_rejected"]) == 0
    assert read_rejected(out) == rejected


def test_decode_refuses_what_it_cannot_read_before_decoding(tmp_path):
    crop = stages.MOUTH_CROPS["voxceleb2"]
    for name, (write, (_, word)) in CASES.items():
        if name in ("huge_frame", "unreadable", "symlink_loop", "empty", "fifo"):
            path = write(tmp_path / f"{name}.mp4")
            with unreadable(tmp_path / "unreadable.mp4"), pytest.raises(MediaError) as err:
                decode_media(path, crop=crop)
            assert str(err.value).startswith(path + ": ") and word in str(err.value), name


def test_journal_drops_a_torn_line_and_other_parameters(tmp_path):
    journal = Journal(str(tmp_path), "manifest", {"a": 1})
    journal.start([{"key": "x", "v": 1}])
    journal.add({"key": "y", "v": 2})
    with open(journal.path, "a") as f:
        f.write('{"key": "z", "v"')  # the kill came mid-line
    assert journal.load() == {"x": {"key": "x", "v": 1}, "y": {"key": "y", "v": 2}}
    assert Journal(str(tmp_path), "manifest", {"a": 2}).load() == {}
    journal.remove()
    assert not os.path.exists(journal.path) and journal.load() == {}


# --------------------------------------------------------------------------- kill -9
def _run(args, faults=None):
    return run_recipe_module("avse.recipes.voxceleb2", args, faults)


# (stage, fault, what the killed run must leave, what the re-run must print)
KILLS = [
    ("manifest", "stage_entry=3:kill", [".done/manifest.partial"], "resumed 3 probed before"),
    ("extract", "stage_entry=4:kill", [".done/extract.partial"], "already done"),
    ("shards", "shard_write=4:kill", ["shards/test/meta.json", "shards/train/shard-000000.tar",
                                      "shards/train/shard-000001.tar.tmp"], "up to date"),
    ("lists", "stage_entry=1:kill", ["lists/voxmix_2mix.csv"], "[lists] kept"),
]


def test_kill_9_in_each_stage_then_the_same_command_completes(tmp_path):
    corpus = tmp_path / "corpus"
    for i in range(4):
        write_av(corpus / "dev" / "mp4" / f"id0000{i}" / "vid" / "00001.mp4", seed=i)
    for i in range(2):
        write_av(corpus / "test" / "mp4" / f"id1000{i}" / "vid" / "00001.mp4", seed=10 + i)
    write_random_bytes(corpus / "dev" / "mp4" / "broken" / "vid" / "00001.mp4")  # manifest
    write_lying_duration(corpus / "dev" / "mp4" / "fzlying" / "vid" / "00001.mp4")  # extract
    args = {"manifest": ["--corpus_dir", str(corpus), "--val_fraction", "0"],
            "extract": [], "shards": ["--shard_size", "1", "--shard_multiple", "1"],
            "lists": ["--mixtures", "train:6,test:2", "--num_speakers", "2", "3"]}
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    for stage, extra in args.items():  # the uninterrupted run
        assert voxceleb2.main([stage, "--out_dir", ref] + extra) == 0

    figures = {"kill_points": 0, "reruns_completed": 0}
    for stage, faults, left, rerun_says in KILLS:
        cmd = [stage, "--out_dir", out] + args[stage] + (["--nj", "2"] if stage == "extract"
                                                          else [])
        killed = _run(cmd, faults)
        assert killed.returncode == -signal.SIGKILL, (stage, killed.stderr[-2000:])
        assert "Traceback" not in killed.stderr, killed.stderr  # the workers died with it
        figures["kill_points"] += 1
        for name in left:
            assert os.path.isfile(os.path.join(out, name)), (stage, name, tree_files(out))
        if stage == "extract":  # as if the kill had come inside a file's write
            stray = os.path.join(out, "extract", "train", "id00003", "vid", "00001.flac.tmp")
            os.makedirs(os.path.dirname(stray))
            open(stray, "wb").close()
        if stage == "shards":  # the split being written has no meta.json, no .done marker
            assert not os.path.exists(os.path.join(out, "shards", "train", "meta.json"))
            assert not os.path.exists(os.path.join(out, ".done", "shards_train"))
        done = _run(cmd)
        assert done.returncode == 0 and rerun_says in done.stdout, (stage, done.stdout,
                                                                     done.stderr[-2000:])
        figures["reruns_completed"] += 1
        if stage == "extract":  # the 4 results the killed run had (+ any its workers wrote)
            redo = re.search(r"(\d+) already done, (\d+) processed", done.stdout).groups()
            assert int(redo[0]) >= 4 and sum(map(int, redo)) == 7, done.stdout

    assert_same_output(out, ref)
    kept = sum(len(split_content(os.path.join(out, "shards", s))["samples"])
               for s in ("train", "test"))
    assert kept == 6 and len(read_rejected(out)) == 2
    figures["entries_lost"] = 6 - kept
    print("\nkill -9 staging:", json.dumps(figures))
