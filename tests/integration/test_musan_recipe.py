"""recipes/MUSAN/run.sh end to end on a tiny synthetic MUSAN tree, a corrupt and an 8 kHz file."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from avse.data import noise as musan
from avse.data import shards
from avse.recipes import musan as recipe
from tests.conftest import run_cmd
from tests.recipe_helpers import assert_splits_read_completely, read_rejected

RUN = ["bash", "recipes/MUSAN/run.sh"]
OPTS = ["--nj", "2", "--val_fraction", "0.25", "--test_fraction", "0.25", "--shard_size", "4"]
CORRUPT = "noise/free-sound/corrupt-0000"
LOW_RATE = "music/fma/low_rate-0000"  # low.rate-0000.wav: the dot becomes _


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from avse.data.synthetic import make_musan_corpus

    root = tmp_path_factory.mktemp("musan")
    corpus, out = root / "corpus", root / "out"
    make_musan_corpus(corpus, 4, seed=5, progress=False)
    (corpus / (CORRUPT + ".wav")).write_bytes(
        np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    rng = np.random.default_rng(1)
    stereo = 0.2 * rng.standard_normal((8000 * 3, 2))
    sf.write(corpus / "music" / "fma" / "low.rate-0000.wav", stereo, 8000)
    proc = run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", str(out)] + OPTS)
    return corpus, str(out), proc


def _manifest(out):
    with open(os.path.join(out, "manifest.jsonl")) as f:
        return [json.loads(line) for line in f]


def _pieces(out):
    got = {}
    for split in ("train", "val", "test"):
        got[split] = list(shards.iter_split(os.path.join(out, "shards", split)))
    return got


def test_shards_hold_every_piece_of_at_most_10_s(prepared):
    corpus, out, proc = prepared
    manifest = _manifest(out)
    assert len(manifest) == 13 and CORRUPT not in {e["key"] for e in manifest}
    expected = {}
    for e in manifest:  # ceil(duration / 10 s) pieces per file (16 kHz samples)
        n16 = math.ceil(e["frames"] * 16000 / e["sr"]) if e["sr"] != 16000 else e["frames"]
        expected[e["split"]] = expected.get(e["split"], 0) + math.ceil(n16 / 160000)
    got = _pieces(out)
    counts = assert_splits_read_completely(out)
    assert set(counts) == {"train", "val", "test"}
    n_long = 0
    for split, samples in got.items():
        meta = shards.read_meta(os.path.join(out, "shards", split))
        assert meta["count"] == len(samples) == expected[split] == counts[split]
        assert meta["corpus"] == "musan"
        assert meta["fields"] == ["flac", "json"]
        assert sum(c["count"] for c in meta["categories"].values()) == meta["count"]
        for s in samples:
            info, key = s["json"], s["__key__"]
            assert "." not in key and key == info["key"] and info["split"] == split
            assert info["category"] == key.split("/")[0] == musan.noise_category(key)
            assert info["category"] in ("music", "noise", "speech") and info["subset"]
            assert os.path.isfile(corpus / info["source"]) and s["sr"] == 16000
            assert 0 < len(s["wav"]) <= 160000 and len(s["wav"]) == info["num_samples"]
            assert abs(info["duration"] - len(s["wav"]) / 16000) < 1e-3
            length = sf.info(corpus / info["source"]).duration
            assert info["start"] + info["duration"] <= length + 1e-3
            n_long += info["start"] > 0
    assert n_long >= 3  # the first file of each category is longer than 10 s
    assert "[pieces] kept 13" in proc.stdout and "[shards] kept" in proc.stdout


def test_splits_are_disjoint_by_source_and_hold_every_category(prepared):
    _, out, _ = prepared
    sources = {}
    for split, samples in _pieces(out).items():
        sources[split] = {s["json"]["source"] for s in samples}
        assert {s["json"]["category"] for s in samples} == {"music", "noise", "speech"}
    assert not sources["train"] & sources["val"]
    assert not sources["train"] & sources["test"] and not sources["val"] & sources["test"]
    pool = musan.noise_pool(os.path.join(out, "shards", "test"))
    assert sorted(pool) == ["music", "noise", "speech"]


def test_corrupt_file_is_rejected_and_other_rates_resampled(prepared):
    _, out, _ = prepared
    rejected = read_rejected(out)
    assert set(rejected) == {CORRUPT}
    assert rejected[CORRUPT]["stage"] == "manifest" and "cannot read" in rejected[CORRUPT]["reason"]
    pieces = [s for split in _pieces(out).values() for s in split
              if s["json"]["key"].startswith(LOW_RATE)]
    assert len(pieces) == 1 and pieces[0]["json"]["resampled_from"] == 8000
    assert len(pieces[0]["wav"]) == 48000


def test_rerun_is_a_no_op(prepared):
    corpus, out, _ = prepared
    tars = [os.path.join(out, "shards", s) for s in ("train", "val", "test")]
    stamps = {p: os.path.getmtime(os.path.join(p, "shard-000000.tar")) for p in tars}
    proc = run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", out] + OPTS)
    assert "[manifest]" in proc.stdout and "up to date" in proc.stdout
    assert "0 processed" in proc.stdout and proc.stdout.count("is up to date; skipping") == 4
    assert stamps == {p: os.path.getmtime(os.path.join(p, "shard-000000.tar")) for p in tars}


def test_shard_multiple_above_a_split_size_writes_no_empty_shard(prepared, tmp_path):
    _, out, _ = prepared
    work = tmp_path / "musan"
    work.mkdir()
    shutil.copy(os.path.join(out, "manifest.jsonl"), work / "manifest.jsonl")
    shutil.copytree(os.path.join(out, "pieces"), work / "pieces")
    with pytest.warns(shards.ShardCountWarning):
        assert recipe.main(["shards", "--out_dir", str(work), "--shard_size", "4",
                            "--shard_multiple", "64"]) == 0
    counts = assert_splits_read_completely(work)
    assert counts == {s: shards.read_meta(os.path.join(out, "shards", s))["count"]
                      for s in ("train", "val", "test")}
    for split, count in counts.items():
        assert count < 64 and shards.read_meta(str(work / "shards" / split))["num_shards"] <= count


def test_musan_noise_reads_the_recipe_shards(prepared):
    _, out, _ = prepared
    source = musan.MusanNoise(os.path.join(out, "shards", "train"),
                              category_probs={"noise": 1, "music": 1, "speech": 1})
    for seed in range(4):
        wav, snr = source(np.random.default_rng(seed))
        assert wav.dtype == np.float32 and 0 < len(wav) <= 160000 and 0 <= snr <= 20


def test_missing_corpus_empty_tree_and_bad_options_exit_2(tmp_path, prepared):
    _, out, _ = prepared
    cases = [
        (RUN + ["--corpus_dir", str(tmp_path / "nope"), "--out_dir", str(tmp_path / "o")],
         "does not exist"),
        (RUN + ["--corpus_dir", str(tmp_path), "--out_dir", str(tmp_path / "o")],
         "no wav files found"),
        (RUN + ["--corpus_dir", str(tmp_path), "--out_dir", str(tmp_path / "o"), "--bogus", "1"],
         "bad option"),
        (RUN + ["--out_dir", str(tmp_path / "o")], "required"),
    ]
    (tmp_path / "music" / "fma").mkdir(parents=True)
    for args, needle in cases:
        proc = run_cmd(args, check=False)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)
    assert recipe.main(["manifest", "--corpus_dir", str(tmp_path), "--out_dir", str(tmp_path),
                        "--val_fraction", "0.6", "--test_fraction", "0.5"]) == 2
    assert recipe.main(["shards", "--out_dir", out, "--max_seconds", "5"]) == 2  # not cut so
    assert recipe.main(["pieces", "--out_dir", out, "--min_seconds", "20"]) == 2
    assert recipe.main(["pieces", "--out_dir", str(tmp_path / "none")]) == 2


def test_readme_yaml_snippet_loads(prepared, tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    from avse.data.mixing import MixtureConfig

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "MUSAN",
                           "README.md")) as f:
        text = f.read()
    snippet = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert "babble_pieces: [3, 7]" in snippet  # the tiny train split has 2 speech pieces
    snippet = snippet.replace("babble_pieces: [3, 7]", "babble_pieces: [1, 2]")
    hparams = load_hyperpyyaml(snippet, {"data_folder": str(tmp_path), "noise_folder": prepared[1]})
    cfg = hparams["mixture_config"]
    assert isinstance(cfg, MixtureConfig) and isinstance(cfg.noise_source, musan.MusanNoise)
    assert cfg.num_interferers_probs == {0: 0.2, 1: 0.8}
    assert cfg.noise_source.snr_ranges["music"] == (5.0, 15.0)
    wav, snr = cfg.sample_noise(16000, np.random.default_rng(0), force=True)
    assert wav.shape == (16000,) and 0 <= snr <= 20
    assert hparams["test_sets"]["2mix_noise"]["noise_shards"] == [
        os.path.join(prepared[1], "shards", "test")]
