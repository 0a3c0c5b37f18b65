"""The MUSAN recipe survives broken audio and kill -9 (issue 13, Staging).

- Fuzzed inputs to the manifest (random bytes named .wav, an empty file, a symlink loop, a
  FIFO, an unreadable file) and a file too short for the pieces stage: each lands in
  rejected.tsv with its reason, the run completes with every good file; a re-run does not
  try a rejection again unless ``--retry_rejected``, which tries only those.
- kill -9 in each stage (``AVSE_FAULTS``: ``stage_entry`` in manifest and pieces,
  ``shard_write`` in shards; one subprocess each), then the same command: every stage
  completes and its output equals an uninterrupted run's (each piece once, no half shard,
  meta.json only for complete splits, no temporary file).
"""
import json
import os
import re
import signal

import numpy as np
import soundfile as sf

from avse.recipes import musan
from tests.recipe_helpers import (assert_same_output, read_rejected, read_split,
                                  run_recipe_module, split_content, tree_files)
from tests.reliability.staging_media import (
    unreadable,
    write_empty,
    write_fifo,
    write_random_bytes,
    write_symlink_loop,
)

SPLITS = ["--val_fraction", "0.25", "--test_fraction", "0.25"]
CUT = ["--max_seconds", "1.0", "--min_seconds", "0.5"]
SHORT = "noise/sub0/short"  # 0.3 s: rejected by the pieces stage (--min_seconds 0.5)

# fuzz case -> (writer, a word of the reason rejected.tsv must give)
FUZZ = {
    "random_bytes": (write_random_bytes, "Format not recognised"),
    "empty": (write_empty, "empty file"),
    "symlink_loop": (write_symlink_loop, "symbolic links"),
    "fifo": (write_fifo, "not a regular file"),  # libsndfile would block on it for ever
    "unreadable": (lambda p: _wav(p, 1.5, 99), "Permission denied"),
}


def _wav(path, seconds: float, seed: int):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    noise = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))
    sf.write(str(path), noise.astype(np.float32), 16000)
    return str(path)


def _corpus(root) -> int:
    """3 files per category (0.8, 1.5, 2.2 s: 1-3 pieces of <= 1 s) + one 0.3 s file;
    returns how many files."""
    for c, category in enumerate(musan.CATEGORIES):
        for i in range(3):
            _wav(root / category / f"sub{i % 2}" / f"{category}-{i:03d}.wav", 0.8 + 0.7 * i,
                 10 * c + i)
    _wav(root / (SHORT + ".wav"), 0.3, 77)
    return 10


def _fuzz(root) -> dict:
    """One file per fuzz case under ``noise/fuzz/``; ``{case: (key, path)}``."""
    return {name: (f"noise/fuzz/{name}", write(root / "noise" / "fuzz" / f"{name}.wav"))
            for name, (write, _) in FUZZ.items()}


def _counting(monkeypatch, name):
    """Count the keys the ``name`` worker of the recipe sees (in-process runs, nj=1)."""
    calls, real = [], getattr(musan, name)

    def counted(job):
        calls.append((job[0] if isinstance(job, tuple) else job)["key"])
        return real(job)

    monkeypatch.setattr(musan, name, counted)
    return calls


def test_fuzzed_audio_is_rejected_with_reasons_and_the_run_completes(tmp_path, monkeypatch):
    corpus, out = tmp_path / "corpus", str(tmp_path / "out")
    n_good = _corpus(corpus) - 1
    cases = _fuzz(corpus)
    manifest = ["manifest", "--corpus_dir", str(corpus), "--out_dir", out] + SPLITS
    pieces, shards = ["pieces", "--out_dir", out] + CUT, ["shards", "--out_dir", out] + CUT
    with unreadable(cases["unreadable"][1]):
        assert musan.main(manifest) == 0
        assert musan.main(pieces) == 0
    assert musan.main(shards + ["--shard_size", "2"]) == 0

    rejected = read_rejected(out)
    assert set(rejected) == {key for key, _ in cases.values()} | {SHORT}
    for name, (key, path) in cases.items():
        row = rejected[key]
        assert row["stage"] == "manifest" and row["path"] == path, row
        assert row["reason"].startswith("cannot read: ") and FUZZ[name][1] in row["reason"], row
    assert rejected[SHORT]["stage"] == "pieces" and "shorter than" in rejected[SHORT]["reason"]
    sources = set()
    for split in ("train", "val", "test"):
        sources |= {s["json"]["source"] for s in read_split(os.path.join(out, "shards", split))
                    .values()}
    assert len(sources) == n_good and not any("fuzz" in s or "short" in s for s in sources)

    # a re-run retries nothing: the unreadable file (readable now) stays rejected
    probes, cuts = _counting(monkeypatch, "_probe_task"), _counting(monkeypatch, "_pieces_task")
    assert musan.main(manifest) == 0 and musan.main(pieces) == 0
    assert probes == [] and cuts == [] and read_rejected(out) == rejected
    os.remove(os.path.join(out, ".done", "pieces"))  # as after a kill: each file's record counts
    assert musan.main(pieces) == 0 and cuts == [] and read_rejected(out) == rejected
    # --retry_rejected tries the rejected ones again, and only those
    assert musan.main(manifest + ["--retry_rejected"]) == 0
    assert sorted(probes) == sorted(key for key, _ in cases.values())
    again = read_rejected(out)
    unread = cases["unreadable"][0]
    assert unread not in again and set(again) == set(rejected) - {unread}
    assert all(again[k]["reason"] == rejected[k]["reason"] for k in again)
    del cuts[:]
    assert musan.main(pieces + ["--retry_rejected"]) == 0
    assert SHORT in cuts and unread in cuts and read_rejected(out) == again
    print("\nfuzzed MUSAN:", json.dumps({"fuzzed": len(cases) + 1, "rejected": len(rejected),
                                         "good_files_kept": len(sources)}))


# --------------------------------------------------------------------------- kill -9
def _run(args, faults=None):
    return run_recipe_module("avse.recipes.musan", args, faults)


def test_kill_9_in_each_stage_then_the_same_command_completes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AVSE_FAULTS", raising=False)
    corpus = tmp_path / "corpus"
    n_files = _corpus(corpus)
    write_random_bytes(corpus / "music" / "sub0" / "broken.wav")  # rejected by the manifest
    args = {"manifest": ["--corpus_dir", str(corpus)] + SPLITS, "pieces": CUT + ["--nj", "2"],
            "shards": CUT + ["--shard_size", "2"]}
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    for stage, extra in args.items():  # the uninterrupted run
        assert musan.main([stage, "--out_dir", ref] + extra) == 0
    n_test_shards = split_content(os.path.join(ref, "shards", "test"))["meta"]["num_shards"]
    capsys.readouterr()

    kills = [  # (stage, fault, what the killed run must leave, what the re-run must print)
        ("manifest", "stage_entry=4:kill", [".done/manifest.partial"],
         "resumed 4 probed before"),
        ("pieces", "stage_entry=3:kill", [], "files already done"),
        # splits are written test, train, val: the kill comes in train's second shard
        ("shards", f"shard_write={n_test_shards + 2}:kill",
         ["shards/test/meta.json", ".done/shards_test", "shards/train/shard-000000.tar",
          "shards/train/shard-000001.tar.tmp"], "is up to date; skipping"),
    ]
    figures = {"kill_points": 0, "reruns_completed": 0}
    for stage, faults, left, rerun_says in kills:
        cmd = [stage, "--out_dir", out] + args[stage]
        killed = _run(cmd, faults)
        assert killed.returncode == -signal.SIGKILL, (stage, killed.stderr[-2000:])
        assert "Traceback" not in killed.stderr, killed.stderr  # the workers died with it
        figures["kill_points"] += 1
        for name in left:
            assert os.path.isfile(os.path.join(out, name)), (stage, name, tree_files(out))
        if stage == "pieces":  # 3 files done (+ what the workers finished); a write cut short
            assert len([f for f in tree_files(out) if f.endswith(".done.json")]) >= 3
            os.makedirs(os.path.join(out, "pieces", "train"), exist_ok=True)
            open(os.path.join(out, "pieces", "train", "stray.flac.tmp"), "wb").close()
        if stage == "shards":  # the split being written has no meta.json, no marker
            assert not os.path.exists(os.path.join(out, "shards", "train", "meta.json"))
            assert not os.path.exists(os.path.join(out, ".done", "shards_train"))
        assert musan.main(cmd) == 0
        said = capsys.readouterr().out
        assert rerun_says in said, (stage, said)
        figures["reruns_completed"] += 1
        if stage == "pieces":
            redo = re.search(r"(\d+) files already done, (\d+) processed", said).groups()
            assert int(redo[1]) <= n_files - 3, said  # the killed run's files are not redone

    assert_same_output(out, ref)
    want = sum(len(split_content(os.path.join(ref, "shards", s))["samples"])
               for s in ("train", "val", "test"))
    got = sum(len(split_content(os.path.join(out, "shards", s))["samples"])
              for s in ("train", "val", "test"))
    assert got == want > n_files and set(read_rejected(out)) == {"music/sub0/broken", SHORT}
    figures["pieces_lost"] = want - got
    print("\nkill -9 MUSAN:", json.dumps(figures))
