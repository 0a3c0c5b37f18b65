"""recipes/GRID/run.sh end to end on a tiny GRID tree (three release layouts, MPEG-1 360x288
videos of a real face, 25 and 50 kHz wavs, alignments, a corrupt video, a bad alignment)."""
import json
import os

import numpy as np
import pytest

from avse.data import lists
from avse.recipes import grid
from avse.video.crops import crop_faces
from avse.video.media import read_audio
from tests.conftest import run_cmd
from tests.grid_fixture import N_FRAMES, make_grid_corpus
from tests.recipe_helpers import (
    assert_fails,
    assert_rerun_is_a_noop,
    assert_splits_read_completely,
    read_rejected,
    read_split,
)

RUN = ["bash", "recipes/GRID/run.sh"]
OPTS = ["--nj", "1", "--shard_multiple", "1", "--mixtures", "test:6"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    root, out = str(tmp / "corpus"), str(tmp / "out")
    truth = make_grid_corpus(root)
    proc = run_cmd(RUN + ["--corpus_dir", root, "--out_dir", out] + OPTS)
    got = read_split(os.path.join(out, "shards", "test"))
    return root, out, truth, got, proc


def test_every_layout_is_staged_to_test_with_transcripts(prepared):
    root, out, truth, got, proc = prepared
    assert set(got) == set(truth["good"])  # s1/<utt>.mpg, s2/video/mpg_6000, s3.mpg_vcd/s3
    assert assert_splits_read_completely(out) == {"test": 6}
    with open(os.path.join(out, "shards", "test", "meta.json")) as f:
        meta = json.load(f)
    # the default --crop face: the track's face-centred frames, any preset cut at load time
    assert meta["corpus"] == "grid" and meta["crop"] == "face" and meta["speakers"] == 3
    assert meta["fields"] == ["face.npy", "facelm.npy", "flac", "json"]
    for key, s in got.items():
        spk, _, utt = key.split("/")
        words = truth["good"][key].upper().split()
        assert s["json"]["spk"] == spk and s["json"]["split"] == "test"
        assert s["json"]["text"] == " ".join(words)  # sil / sp dropped
        # 3000 samples of sil, 3500 a word, a 500-sample sp after the second word
        starts = [(3000 + 3500 * i + 500 * (i >= 2)) / 25000 for i in range(6)]
        assert s["json"]["words"] == [[w, pytest.approx(t), pytest.approx(t + 0.14)]
                                      for w, t in zip(words, starts)]
        assert s["face.npy"].dtype == np.uint8 and s["face.npy"].shape == (N_FRAMES, 224, 224)
        assert s["facelm.npy"].shape == (N_FRAMES, 5, 2)
        lips = crop_faces(s["face.npy"], "landmarks", s["facelm.npy"])
        assert lips.shape == (N_FRAMES, 88, 88) and lips.std() > 5, key  # a mouth, not blank
        assert len(s["wav"]) == 640 * N_FRAMES
        sub = "audio_50k" if spk == "s3" else "audio_25k"  # the wav, resampled to 16 kHz
        ref = read_audio(os.path.join(root, sub, spk, f"{utt}.wav"))
        np.testing.assert_allclose(s["wav"], ref[:len(s["wav"])], atol=2e-4)
    for stage in ("manifest", "extract", "shards", "lists"):
        assert f"[{stage}] kept" in proc.stdout


def test_corrupt_video_and_bad_alignment_are_rejected(prepared):
    _, out, truth, _, _ = prepared
    rejected = read_rejected(out)
    assert set(rejected) == set(truth["bad"])
    for key, why in truth["bad"].items():
        assert why in rejected[key]["reason"]
    assert ".align:4: expected 'start end word'" in rejected["s1/test/pbbu7p"]["reason"]


def _shared(a, b):
    return len(set(a.split()) & set(b.split()))


def test_lists_pair_different_speakers_and_sentences_fewest_shared_words(prepared):
    _, out, truth, got, _ = prepared
    text = {k: v.upper() for k, v in truth["good"].items()}
    for k in (2, 3):
        rows = lists.read_list(os.path.join(out, "lists", f"voxmix_{k}mix.csv"))
        assert len(rows) == 6 and {m.set for m in rows} == {"test"}
        for mix in rows:
            keys = [s.key for s in mix.sources]
            assert all(key in got for key in keys)
            assert len({s.spk for s in mix.sources}) == k == mix.num_speakers
            assert len({text[key] for key in keys}) == k  # never the same sentence
            assert mix.length <= min(got[key]["json"]["duration"] for key in keys)
            for i in range(1, k):  # pool < CANDIDATES: each interferer is the best possible
                row = " ".join(text[key] for key in keys[:i])
                allowed = [key for key in text if key.split("/")[0] not in
                           {s.spk for s in mix.sources[:i]}
                           and text[key] not in {text[x] for x in keys[:i]}]
                assert _shared(row, text[keys[i]]) == min(_shared(row, text[x]) for x in allowed)


def test_mixtures_are_seeded():
    rng = np.random.default_rng(0)
    utts = [{"key": f"s{s}/test/u{u}", "spk": f"s{s}", "duration": 3.0,
             "text": " ".join(rng.choice(["BIN", "LAY", "RED", "BLUE", "AT", "IN", "A", "B",
                                          "ONE", "TWO", "NOW", "SOON"], 6))}
            for s in range(1, 8) for u in range(5)]
    one = grid.grid_mixtures(utts, 30, 3, seed=1)
    assert one == grid.grid_mixtures(utts, 30, 3, seed=1) != grid.grid_mixtures(utts, 30, 3, seed=2)
    assert len(one) == 30


def test_parse_align_and_errors():
    got = grid.parse_align("0 23750 sil\n23750 29500 bin\n29500 31000 sp\n31000 36000 blue\n"
                           "36000 74500 sil\n")
    assert got == {"text": "BIN BLUE", "conf": None,
                   "words": [["BIN", 0.95, 1.18], ["BLUE", 1.24, 1.44]]}
    for text, message in (("0 10 sil\n", "no words"), ("5 2 bin\n", ":1: 'bin' starts at 5"),
                          ("0 x bin\n", ":1: expected")):
        with pytest.raises(grid.AlignError, match=message):
            grid.parse_align(text)


def test_rerun_is_a_noop(prepared):
    root, out = prepared[:2]
    proc = assert_rerun_is_a_noop(RUN + ["--corpus_dir", root, "--out_dir", out] + OPTS, out)
    assert "0 processed" in proc.stdout and proc.stdout.count("up to date") == 3


def test_missing_corpus_and_bad_options_exit_2(tmp_path):
    assert_fails(RUN + ["--corpus_dir", str(tmp_path / "nope"), "--out_dir", str(tmp_path / "o")],
                 "does not exist")
    (tmp_path / "empty").mkdir()
    assert_fails(RUN + ["--corpus_dir", str(tmp_path / "empty"), "--out_dir",
                        str(tmp_path / "o")], "no GRID videos found")
    assert grid.main(["lists", "--out_dir", str(tmp_path / "o"), "--mixtures", "train:5"]) == 2


def test_scan_finds_the_release_variants(tmp_path):
    files = {"video/s4/pgaa1a.mpg": "s4/test/pgaa1a", "s5/mpg_vcd/pgaa2a.mpg": "s5/test/pgaa2a",
             "s6.mpg_6000/s6/video/mpg_6000/pgaa3a.mpg": "s6/test/pgaa3a"}
    for path in list(files) + ["audio/s4/pgaa1a.wav", "s5/audio_50k/pgaa2a.wav",
                               "audio_25k/s6/pgaa3a.wav", "align/s4/pgaa1a.align",
                               "s5/align/pgaa2a.align"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    entries, rejected = grid.scan_corpus(str(tmp_path))
    assert [e["key"] for e in entries] == list(files.values()) and not rejected
    assert [os.path.relpath(e["media"], tmp_path) for e in entries] == list(files)
    assert os.path.relpath(entries[1]["audio"], tmp_path) == "s5/audio_50k/pgaa2a.wav"
    assert os.path.relpath(entries[0]["align"], tmp_path) == "align/s4/pgaa1a.align"
    assert os.path.relpath(entries[1]["align"], tmp_path) == "s5/align/pgaa2a.align"
    assert os.path.relpath(entries[2]["align"], tmp_path) == "alignments/s6/pgaa3a.align"
