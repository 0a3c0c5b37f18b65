"""recipes/LRS3/run.sh and ``python -m avse.recipes.lrs3`` end to end on a tiny LRS3 tree."""
import os
import shutil

import numpy as np
import pytest

from avse.data import lists
from avse.data import shards
from avse.data.align import align_av
from avse.video.media import MOUTH_CROPS, decode_media
from avse.recipes import lrs3
from avse.recipes.transcripts import read_transcript
from tests.conftest import run_cmd
from tests.recipe_helpers import (
    assert_fails,
    assert_rerun_is_a_noop,
    assert_splits_read_completely,
    read_rejected,
    read_split,
)

RUN = ["bash", "recipes/LRS3/run.sh"]
OPTS = ["--nj", "2", "--shard_multiple", "1", "--mixtures", "test:6"]
WORDS = ["SO", "WHAT", "WE", "DID", "WAS", "LOOK", "AT", "THE", "DATA", "AND", "IT'S", "CLEAR"]


def _transcript(rng, table: bool) -> str:
    words = list(rng.choice(WORDS, int(rng.integers(2, 6))))
    text = f"Text:  {' '.join(words)}\nConf:  {int(rng.integers(1, 9))}\n"
    if table:
        text += "\nWORD START END ASDSCORE\n" + "".join(
            f"{w} {0.3 * i:.2f} {0.3 * i + 0.25:.2f} 4.2\n" for i, w in enumerate(words))
    return text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """VoxCeleb2-style 224x224 clips re-arranged as LRS3: one id folder per speaker
    (3 in test, 3 in trainval, 2 clips each), a pretrain clip that shares id and clip name
    with a trainval clip, and three bad test clips (corrupt mp4, malformed transcript,
    no transcript). Half the transcripts lack the word table."""
    from avse.data.synthetic import make_voxceleb2_corpus

    tmp = tmp_path_factory.mktemp("lrs3")
    make_voxceleb2_corpus(tmp / "vox", n_speakers=6, n_clips=2, seed=7, test_fraction=0.5,
                          nj=2, progress=False)
    root, rng, bad = tmp / "lrs3", np.random.default_rng(0), {}
    for subset, vox_subset in (("trainval", "dev"), ("test", "test")):
        for spk_dir in sorted((tmp / "vox" / vox_subset / "mp4").iterdir()):
            clips = sorted(spk_dir.rglob("*.mp4"))
            vid = clips[0].parent.name  # the first video id names the speaker's folder
            (root / subset / vid).mkdir(parents=True)
            for n, mp4 in enumerate(clips, 1):
                dest = root / subset / vid / f"{n:05d}.mp4"
                shutil.move(mp4, dest)
                dest.with_suffix(".txt").write_text(_transcript(rng, table=n % 2 == 1))
    first = sorted((root / "trainval").rglob("00001.mp4"))[0]
    (root / "pretrain" / first.parent.name).mkdir(parents=True)
    for ext in (".mp4", ".txt"):
        shutil.copy(first.with_suffix(ext), root / "pretrain" / first.parent.name / f"00001{ext}")
    good = sorted((root / "test").rglob("*.mp4"))[0]
    for name, data, txt in (("corruptVid01", rng.bytes(3000), "Text:  HELLO\n"),
                            ("badTxtVid01", good.read_bytes(), "HELLO WORLD\n"),
                            ("noTxtVid001", good.read_bytes(), None)):
        (root / "test" / name).mkdir()
        (root / "test" / name / "00001.mp4").write_bytes(data)
        if txt is not None:
            (root / "test" / name / "00001.txt").write_text(txt)
        bad[name] = f"{name}/test/00001"
    return root, bad


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("prep") / "lrs3"
    proc = run_cmd(RUN + ["--corpus_dir", str(root), "--out_dir", str(out)] + OPTS)
    return str(out), proc, read_split(str(out / "shards" / "test"))


def test_test_shards_with_transcripts(corpus, prepared):
    root, bad = corpus
    out, proc, got = prepared
    assert sorted(os.listdir(os.path.join(out, "shards"))) == ["test"]  # --subsets test default
    expected = {f"{p.parent.name}/test/{p.stem}" for p in (root / "test").rglob("*.mp4")}
    assert set(got) == expected - set(bad.values()) and len(got) == 6
    assert assert_splits_read_completely(out) == {"test": 6}
    meta = shards.read_meta(os.path.join(out, "shards", "test"))
    assert meta["corpus"] == meta["crop"] == "lrs3" and meta["speakers"] == 3
    for key, s in got.items():
        vid, subset, clip = key.split("/")
        assert s["json"]["spk"] == vid and s["json"]["split"] == "test"
        assert s["lips.npy"].dtype == np.uint8 and s["lips.npy"].shape[1:] == (88, 88)
        assert len(s["wav"]) == 640 * len(s["lips.npy"])
        ref = read_transcript(str(root / subset / vid / f"{clip}.txt"))
        assert {k: s["json"][k] for k in ("text", "conf", "words")} == ref
        assert "tokens" not in s["json"]
        assert bool(ref["words"]) == (clip == "00001")  # the word table is optional
    for stage in ("manifest", "extract", "shards", "lists"):
        assert f"[{stage}] kept" in proc.stdout


def test_lips_are_the_fixed_lrs3_crop(corpus, prepared):
    root, _ = corpus
    key, sample = sorted(prepared[2].items())[-1]
    vid, subset, clip = key.split("/")
    _, lips = align_av(*decode_media(str(root / subset / vid / f"{clip}.mp4"),
                                     crop=MOUTH_CROPS["lrs3"]))
    np.testing.assert_array_equal(sample["lips.npy"], lips)


def test_bad_clips_are_rejected_with_reasons(corpus, prepared):
    _, bad = corpus
    rejected = read_rejected(prepared[0])
    assert set(rejected) == set(bad.values())
    assert "cannot open" in rejected[bad["corruptVid01"]]["reason"]
    assert ":1: expected 'Text:" in rejected[bad["badTxtVid01"]]["reason"]
    assert "no transcript" in rejected[bad["noTxtVid001"]]["reason"]


def test_test_lists_mix_different_ids(prepared):
    out, _, got = prepared
    for k in (2, 3):
        rows = lists.read_list(os.path.join(out, "lists", f"voxmix_{k}mix.csv"))
        assert len(rows) == 6 and {m.set for m in rows} == {"test"}
        for mix in rows:
            assert mix.num_speakers == k and len({s.spk for s in mix.sources}) == k
            assert all(s.key in got for s in mix.sources)
            assert mix.length <= min(got[s.key]["json"]["duration"] for s in mix.sources)


def test_rerun_is_a_noop(corpus, prepared):
    out = prepared[0]
    proc = assert_rerun_is_a_noop(RUN + ["--corpus_dir", str(corpus[0]), "--out_dir", out] + OPTS,
                                  out)
    assert "0 processed" in proc.stdout and proc.stdout.count("up to date") == 3


def test_python_entry_points_all_subsets_and_tokenizer(corpus, prepared, tmp_path):
    import sentencepiece as spm

    root, _ = corpus
    model = tmp_path / "spm"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(WORDS * 3), model_prefix=str(model),
                                   vocab_size=40, hard_vocab_limit=False, minloglevel=2)
    out = str(tmp_path / "out")
    common = ["--out_dir", out]
    assert lrs3.main(["manifest", "--corpus_dir", str(root), "--subsets",
                      "pretrain,trainval,test"] + common) == 0
    assert lrs3.main(["extract"] + common) == 0
    assert lrs3.main(["shards", "--shard_multiple", "1", "--tokenizer", f"{model}.model"] + common) == 0
    assert lrs3.main(["lists", "--mixtures", "test:6,trainval:4", "--num_speakers", "2"] + common) == 0
    got = {s: read_split(os.path.join(out, "shards", s)) for s in lrs3.SUBSETS}
    assert [len(got[s]) for s in lrs3.SUBSETS] == [1, 6, 6]
    assert assert_splits_read_completely(out) == {"pretrain": 1, "trainval": 6, "test": 6}
    (pre_key,) = got["pretrain"]
    vid = pre_key.split("/")[0]
    assert f"{vid}/trainval/00001" in got["trainval"]  # same id and clip, distinct keys
    sp = spm.SentencePieceProcessor(model_file=f"{model}.model")
    for split in got.values():
        for s in split.values():
            assert sp.decode(s["json"]["tokens"]) == s["json"]["text"]
    rows = lists.read_list(os.path.join(out, "lists", "voxmix_2mix.csv"))
    assert len(rows) == 10 and {m.set for m in rows} == {"test", "trainval"}
    assert rows[:6] == lists.read_list(os.path.join(prepared[0], "lists", "voxmix_2mix.csv"))


def test_missing_corpus_and_bad_options_exit_2(corpus, tmp_path):
    root, _ = corpus

    def fails(corpus_dir, *args, message):
        assert_fails(RUN + ["--corpus_dir", str(corpus_dir), "--out_dir", str(tmp_path / "o"),
                            *args], message)

    fails(tmp_path / "nope", message="does not exist")
    (tmp_path / "empty" / "test").mkdir(parents=True)
    fails(tmp_path / "empty", message="no clips found")
    fails(tmp_path / "empty", "--subsets", "trainval", message="trainval not found")
    fails(root, "--subsets", "dev", message="--subsets")
    fails(root, "--tokenizer", message="bad option '--tokenizer'")
    assert lrs3.main(["lists", "--out_dir", str(tmp_path / "o"), "--mixtures", "train:5"]) == 2
