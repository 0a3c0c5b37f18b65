"""recipes/LRS2/run.sh and ``python -m avse.recipes.lrs2`` end to end on a tiny LRS2-BBC tree."""
import json
import os
import shutil

import numpy as np
import pytest

from avse.data import lists
from avse.data import shards
from avse.data.align import align_av
from avse.video.media import MOUTH_CROPS, decode_media
from avse.recipes import lrs2
from avse.recipes.transcripts import TranscriptError, parse_transcript, read_transcript, stage_tokens
from tests.conftest import run_cmd
from tests.recipe_helpers import (
    assert_fails,
    assert_rerun_is_a_noop,
    assert_splits_read_completely,
    read_rejected,
    read_split,
)

RUN = ["bash", "recipes/LRS2/run.sh"]
OPTS = ["--nj", "2", "--shard_size", "4", "--shard_multiple", "2",
        "--mixtures", "train:20,val:3,test:4"]
CORRUPT, BAD_TXT, MISSING = ("9000000000000000001/main/00001", "9000000000000000002/main/00001",
                             "9000000000000000003/main/00001")


def _filelist_keys(corpus, split):
    subset = "pretrain" if split == "pretrain" else "main"
    keys = set()
    for line in (corpus / f"{split}.txt").read_text().splitlines():
        vid, clip = line.split()[0].split("/")
        keys.add(f"{vid}/{subset}/{clip}")
    return keys


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """30 main videos (24 train, 3 val, 3 test) + 2 pretrain, one clip each, and three bad
    filelist entries: a corrupt mp4, a malformed transcript, a clip that does not exist."""
    from avse.data.synthetic import make_lrs2_corpus

    root = tmp_path_factory.mktemp("lrs2") / "mvlrs_v1"
    make_lrs2_corpus(root, n_videos=30, n_clips=1, seed=5, n_pretrain=2, nj=2, progress=False)
    good = sorted((root / "main").rglob("*.mp4"))[0]
    for key, data, txt in (
            (CORRUPT, np.random.default_rng(0).bytes(4000), good.with_suffix(".txt").read_text()),
            (BAD_TXT, good.read_bytes(), "Text:  HELLO THERE\nConf:  high\n")):
        vid, _, clip = key.split("/")
        (root / "main" / vid).mkdir()
        (root / "main" / vid / f"{clip}.mp4").write_bytes(data)
        (root / "main" / vid / f"{clip}.txt").write_text(txt)
    with open(root / "train.txt", "a") as f:
        f.write("9000000000000000001/00001\n9000000000000000002/00001 MV\n")
    with open(root / "val.txt", "a") as f:
        f.write("9000000000000000003/00001\n")
    return root


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "lrs2"
    proc = run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", str(out)] + OPTS)
    splits = {s: read_split(str(out / "shards" / s)) for s in lrs2.SPLITS}
    return str(out), proc, splits


def test_shards_per_split_match_the_filelists(corpus, prepared):
    out, proc, splits = prepared
    rejected = read_rejected(out)
    counts = assert_splits_read_completely(out)
    assert set(counts) == set(lrs2.SPLITS)
    for split, got in splits.items():
        assert set(got) == _filelist_keys(corpus, split) - set(rejected), split
        meta = shards.read_meta(os.path.join(out, "shards", split))
        assert meta["count"] == len(got) == counts[split] and meta["num_shards"] % 2 == 0
        assert meta["corpus"] == meta["crop"] == "lrs2"
        assert meta["fields"] == ["flac", "json", "lips.npy"]
    assert sum(map(len, splits.values())) == 32
    for stage in ("manifest", "extract", "tokens", "shards", "lists"):
        assert f"[{stage}] kept" in proc.stdout


def test_sample_fields_and_transcripts(corpus, prepared):
    _, _, splits = prepared
    for split, got in splits.items():
        for key, s in got.items():
            meta = s["json"]
            vid, subset, clip = key.split("/")
            assert (meta["spk"], meta["video"], meta["subset"], meta["split"]) == (vid, vid, subset, split)
            assert s["lips.npy"].dtype == np.uint8 and s["lips.npy"].shape[1:] == (88, 88)
            assert len(s["wav"]) == 640 * len(s["lips.npy"]) == meta["num_samples"]
            ref = read_transcript(str(corpus / subset / vid / f"{clip}.txt"))
            assert meta["text"] == ref["text"] and meta["conf"] == ref["conf"]
            assert meta["words"] == ref["words"] and meta["text"] == " ".join(w[0] for w in meta["words"])
            assert all(isinstance(t, int) for t in meta["tokens"])


def test_lips_are_the_fixed_lrs2_crop(corpus, prepared):
    _, _, splits = prepared
    key, sample = sorted(splits["test"].items())[0]
    vid, subset, clip = key.split("/")
    wav, lips = align_av(*decode_media(str(corpus / subset / vid / f"{clip}.mp4"),
                                       crop=MOUTH_CROPS["lrs2"]))
    np.testing.assert_array_equal(sample["lips.npy"], lips)
    np.testing.assert_allclose(sample["wav"], np.clip(wav, -1, 1), atol=1.0 / 32767 + 1e-6)


def test_tokens_decode_back_to_the_text(prepared):
    import sentencepiece as spm

    out, _, splits = prepared
    info = json.load(open(os.path.join(out, "tokenizer", "tokenizer.json")))
    assert info["trained_on"] == "train" and info["requested_vocab_size"] == 500
    assert 0 < info["vocab_size"] < 500  # a tiny corpus cannot reach 500 pieces
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer", "spm.model"))
    split_dir = os.path.join(out, "shards", "test")
    meta = shards.read_meta(split_dir)
    assert os.path.isfile(os.path.join(split_dir, meta["tokenizer"]))
    assert meta["vocab_size"] == sp.get_piece_size()
    for got in splits.values():
        for s in got.values():
            assert sp.decode(s["json"]["tokens"]) == s["json"]["text"]


def test_bad_entries_are_rejected_with_reasons(prepared):
    out, _, _ = prepared
    rejected = read_rejected(out)
    assert set(rejected) == {CORRUPT, BAD_TXT, MISSING}
    assert "cannot open" in rejected[CORRUPT]["reason"]
    assert "malformed transcript" in rejected[BAD_TXT]["reason"]
    assert ":2: 'Conf:' must be a number" in rejected[BAD_TXT]["reason"]
    assert "val.txt:4 names a clip whose mp4 does not exist" in rejected[MISSING]["reason"]
    assert rejected[MISSING]["path"].endswith("main/9000000000000000003/00001.mp4")


def test_lists_pair_different_videos(prepared):
    out, _, splits = prepared
    where = {k: split for split, got in splits.items() for k in got}
    two = lists.read_list(os.path.join(out, "lists", "voxmix_2mix.csv"))
    three = lists.read_list(os.path.join(out, "lists", "voxmix_3mix.csv"))
    assert len(two) == len(three) == 27
    assert {m.set for m in two} == {"train", "val", "test"}
    for mix in two + three:
        assert all(where[s.key] == mix.set for s in mix.sources)
        assert len({s.spk for s in mix.sources}) == mix.num_speakers  # different videos


def test_rerun_is_a_noop(corpus, prepared):
    out = prepared[0]
    proc = assert_rerun_is_a_noop(RUN + ["--corpus_dir", str(corpus), "--out_dir", out] + OPTS, out)
    assert "0 processed" in proc.stdout and proc.stdout.count("up to date") == 4 + 1 + 1 + 1


def test_python_entry_points_give_the_same_result(corpus, prepared, tmp_path, capsys):
    out, _, splits = prepared
    out2 = str(tmp_path / "lrs2")
    common = ["--out_dir", out2]
    assert lrs2.main(["manifest", "--corpus_dir", str(corpus), "--splits", "train,val,test"] + common) == 0
    for stage in (["extract"], ["tokens"], ["shards", "--shard_size", "4", "--shard_multiple", "2"],
                  ["lists", "--mixtures", "train:20,val:3,test:4,pretrain:2"]):
        assert lrs2.main(stage + common) == 0
    assert "pretrain: not in the manifest" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out2, "shards", "pretrain"))
    assert assert_splits_read_completely(out2) == {s: len(splits[s]) for s in ("train", "val", "test")}
    for split in ("train", "val", "test"):
        got = read_split(os.path.join(out2, "shards", split))
        assert {k: s["json"]["tokens"] for k, s in got.items()} == {
            k: s["json"]["tokens"] for k, s in splits[split].items()}
    for name in ("voxmix_2mix.csv", "voxmix_3mix.csv"):  # seeded: the same rows
        assert open(os.path.join(out2, "lists", name)).read() == \
            open(os.path.join(out, "lists", name)).read()
    assert lrs2.main(["lists", "--mixtures", "train:20,val:3,test:4", "--seed", "1",
                      "--num_speakers", "2"] + common) == 0
    other = lists.read_list(os.path.join(out2, "lists", "voxmix_2mix.csv"))
    assert len(other) == 27 and other != lists.read_list(os.path.join(out, "lists", "voxmix_2mix.csv"))


def test_missing_corpus_and_bad_options_exit_2(corpus, tmp_path):
    def fails(corpus_dir, *args, message):
        assert_fails(RUN + ["--corpus_dir", str(corpus_dir), "--out_dir", str(tmp_path / "o"),
                            *args], message)

    fails(tmp_path / "nope", message="does not exist")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", message="no filelist pretrain.txt")
    fails(corpus, "--splits", "train,dev", message="--splits")
    fails(corpus, "--bogus", "1", message="--bogus")
    fails(corpus, "--stage", "two", message="whole numbers")
    assert_fails(RUN + ["--corpus_dir", str(corpus)], "--out_dir are required")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    shutil.copy(corpus / "val.txt", nothing / "val.txt")  # every named clip is missing
    fails(nothing, "--splits", "val", message="all 4 clips were rejected")


def test_parse_transcript_errors_name_the_line():
    ok = parse_transcript("Text:  A B\nConf:  3\n")
    assert ok == {"text": "A B", "conf": 3, "words": []}
    for text, message in [("HELLO\n", ":1: expected 'Text:"),
                          ("Text:   \nConf:  1\n", ":1: the 'Text:' line is empty"),
                          ("Text:  A\nConf:  1\nnot a header\n", ":3: expected 'Name:  value'"),
                          ("Text:  A\nConf:  1\n\nWORDS\n", ":4: expected the 'WORD START END"),
                          ("Text:  A\n\nWORD START END ASDSCORE\nA 0.1 x 3\n", ":4: expected"),
                          ("Text:  A\n\nWORD START END ASDSCORE\nA 0.5 0.1 3\n", ":4: word 'A'")]:
        with pytest.raises(TranscriptError, match=message):
            parse_transcript(text, where="f.txt")


def test_tokens_unseen_characters_and_tiny_vocabularies(tmp_path, capsys):
    import sentencepiece as spm

    from avse.recipes.common import RecipeError, write_jsonl

    rows = [{"key": f"v{i}/main/00001", "split": "train", "text": t}
            for i, t in enumerate(["THE CAT SAT", "ON THE MAT", "A CAT AND A HAT"])]
    rows.append({"key": "v9/main/00001", "split": "test", "text": "THE ZOO 1990"})
    write_jsonl(rows, str(tmp_path / "manifest.jsonl"))
    stage_tokens(str(tmp_path), vocab_size=500)
    assert "3 of 4 transcripts decode back exactly (1 hold characters unseen" in capsys.readouterr().out
    stage_tokens(str(tmp_path), vocab_size=400, byte_fallback=True)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer" / "spm.model"))
    assert sp.decode(sp.encode("THE ZOO 1990")) == "THE ZOO 1990"
    with pytest.raises(RecipeError, match="sentencepiece could not train"):
        stage_tokens(str(tmp_path), vocab_size=5)
    assert lrs2.main(["tokens", "--out_dir", str(tmp_path / "none")]) == 2  # no manifest
