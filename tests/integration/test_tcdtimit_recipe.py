"""recipes/TCD-TIMIT/run.sh end to end on a tiny 1080p 29.97 fps tree (the astronaut's face,
tracked, the texts from a PROMPTS.TXT), and the TCD-TIMIT scan, prompts and mixture rules on
their own."""
import os

import numpy as np
import pytest

from avse.data import lists
from avse.recipes import tcdtimit
from avse.recipes.common import RecipeError
from avse.video.crops import crop_faces
from tests.conftest import run_cmd
from tests.recipe_helpers import assert_splits_read_completely, read_rejected, read_split
from tests.tcdtimit_fixture import MP4_TONE, TEXTS, WAV_TONE, make_tcdtimit_tree, write_prompts

RUN = ["bash", "recipes/TCD-TIMIT/run.sh"]
OPTS = ["--nj", "2", "--shard_multiple", "1", "--mixtures", "volunteers:8,lipspeakers:4"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The fixture tree (2 volunteers + 1 lipspeaker, 2 clips each sharing sa1, a corrupt
    clip) through all four stages, with its PROMPTS.TXT (no prompt for si21)."""
    tmp = tmp_path_factory.mktemp("tcdtimit")
    files = make_tcdtimit_tree(str(tmp / "corpus"))
    out = tmp / "out"
    prompts = write_prompts(str(tmp / "PROMPTS.TXT"))
    proc = run_cmd(RUN + ["--corpus_dir", str(tmp / "corpus"), "--out_dir", str(out),
                          "--prompts", prompts] + OPTS)
    return str(out), files, proc


def _tone(wav) -> float:
    spec = np.abs(np.fft.rfft(np.asarray(wav, np.float64)))
    return float(np.argmax(spec) * 16000 / len(wav))


def test_subsets_stay_apart_in_shards_with_tracked_mouths_at_25_fps(prepared):
    out, files, _ = prepared
    assert assert_splits_read_completely(out) == {"lipspeakers": 2, "volunteers": 4}
    vol = read_split(os.path.join(out, "shards", "volunteers"))
    lip = read_split(os.path.join(out, "shards", "lipspeakers"))
    assert sorted(vol) == ["01M/volunteers/sa1", "01M/volunteers/sx12",
                           "02F/volunteers/sa1", "02F/volunteers/si21"]
    assert sorted(lip) == ["lipspkr1/lipspeakers/sa1", "lipspkr1/lipspeakers/sx99"]
    for key, s in {**vol, **lip}.items():
        # ~1 s at 29.97 fps resampled by timestamp to 25 frames, 640 samples a frame
        assert s["face.npy"].shape == (25, 224, 224) and s["face.npy"].dtype == np.uint8, key
        sentence = key.rsplit("/", 1)[1]
        assert len(s["wav"]) == 25 * 640 and s["json"]["sentence"] == sentence
        assert s["json"].get("text") == TEXTS.get(sentence), key  # si21: no prompt, no text
        lips = crop_faces(s["face.npy"], "lipread", s["facelm.npy"])  # cut at load time
        assert lips.shape == (25, 112, 112) and lips.std() > 5, key  # a face, not blank
    with open(os.path.join(out, "shards", "volunteers", "meta.json")) as f:
        meta = __import__("json").load(f)
    assert meta["corpus"] == "tcdtimit" and meta["crop"] == "face"
    # audio: the mp4's own track, or the release's wav where one ships (next to the clip
    # for 02F, in the speaker's audio/ folder for the lipspeaker)
    assert _tone(vol["01M/volunteers/sa1"]["wav"]) == pytest.approx(MP4_TONE, abs=3)
    assert _tone(vol["02F/volunteers/si21"]["wav"]) == pytest.approx(WAV_TONE, abs=3)
    assert _tone(lip["lipspkr1/lipspeakers/sx99"]["wav"]) == pytest.approx(WAV_TONE, abs=3)


def test_the_corrupt_clip_is_rejected_with_its_reason(prepared):
    out, files, _ = prepared
    rejected = read_rejected(out)
    assert list(rejected) == ["01M/volunteers/si1000"]
    row = rejected["01M/volunteers/si1000"]
    assert row["stage"] == "manifest" and row["path"] == files["corrupt"]
    assert "cannot open" in row["reason"]


def test_mixture_lists_per_subset_never_pair_one_sentence(prepared):
    out, _, proc = prepared
    rows = lists.read_list(os.path.join(out, "lists", "volunteers", "voxmix_2mix.csv"))
    assert len(rows) == 8
    for mix in rows:
        spks = [s.spk for s in mix.sources]
        sentences = [s.path.rsplit("/", 1)[1] for s in mix.sources]
        assert len(set(spks)) == 2 and len(set(sentences)) == 2, mix
        assert all(s.path.startswith("volunteers/") for s in mix.sources)
    # 2 volunteers: no 3-mix; 1 lipspeaker: no lipspeaker list (said on stderr)
    assert sorted(os.listdir(os.path.join(out, "lists"))) == ["volunteers"]
    assert "lipspeakers: 1 speaker(s); no 2-mix list" in proc.stderr


def test_mixture_draw_is_seeded_and_keeps_sentences_apart_for_3_speakers():
    pool = [{"key": f"{spk}/volunteers/{s}", "spk": spk, "sentence": s, "duration": 2.0}
            for spk in ("01M", "02F", "03M") for s in ("sa1", "sa2", f"sx{spk[:2]}")]
    rows = tcdtimit.draw_mixtures(pool, 200, 3, (-5, 5), seed=3, mix_set="volunteers")
    assert rows == tcdtimit.draw_mixtures(pool, 200, 3, (-5, 5), seed=3, mix_set="volunteers")
    for mix in rows:
        assert len({s.spk for s in mix.sources}) == 3
        assert len({s.path.rsplit("/", 1)[1] for s in mix.sources}) == 3
    only_sa = [u for u in pool if u["sentence"] == "sa1"]
    with pytest.raises(RecipeError, match="different sentences"):
        tcdtimit.draw_mixtures(only_sa, 1, 2, (-5, 5), seed=0, mix_set="volunteers")


def test_scan_accepts_the_folder_variants_and_rejects_non_timit_names(tmp_path):
    for folder in ("Volunteers/7f", "LIPSPEAKERS/lipspeaker2", "LIPSPEAKERS/Lipspkr 3"):
        clips = tmp_path.joinpath(folder, "Clips", "straightcam")
        clips.mkdir(parents=True)
        for name in ("SA1.mp4", "take2.mp4", "notes.txt"):
            (clips / name).write_bytes(b"")
    (tmp_path / "volunteers_extra").mkdir()
    entries, rejected = tcdtimit.scan_corpus(str(tmp_path))
    assert sorted(e["key"] for e in entries) == ["07F/volunteers/sa1", "lipspkr2/lipspeakers/sa1",
                                           "lipspkr3/lipspeakers/sa1"]
    assert all(e["split"] == e["subset"] and e["audio"] is None for e in entries)
    assert sorted(r["key"] for r in rejected) == [
        "07F/volunteers/take2", "lipspkr2/lipspeakers/take2", "lipspkr3/lipspeakers/take2"]
    assert "not a TIMIT sentence id" in rejected[0]["reason"]
    with pytest.raises(RecipeError, match="does not exist"):
        tcdtimit.scan_corpus(str(tmp_path / "missing"))
    with pytest.raises(RecipeError, match="none of"):
        tcdtimit.scan_corpus(str(tmp_path / "volunteers_extra"))


def test_a_sentence_without_prompt_keeps_no_text_and_is_counted(prepared):
    _, _, proc = prepared
    assert ("[manifest] warning: 1 clip(s) of 1 sentence(s) have no prompt in "
            in proc.stderr) and "keep no text: si21" in proc.stderr


def test_prompts_parse_comments_and_name_the_malformed_line(tmp_path):
    text = "; header\n\nA well-lit room, she said. (SX3)\nWhy? (sa2)  \n"
    assert tcdtimit.parse_prompts(text) == {"sx3": "A WELL LIT ROOM SHE SAID", "sa2": "WHY"}
    for bad in ("No id here.", "Text (take2)", "(sa1)", "One. (sa1)\nTwo. (sa1)"):
        with pytest.raises(tcdtimit.PromptsError, match=r"P\.TXT:\d"):
            tcdtimit.parse_prompts("; ok\nFine. (sx1)\n" + bad, where="P.TXT")
    with pytest.raises(RecipeError, match="P.TXT:3: expected '<sentence text> \\(<id>\\)'"):
        tcdtimit.parse_prompts("; ok\nFine. (sx1)\nNo id here.", where="P.TXT")
    with pytest.raises(RecipeError, match="no such file"):
        tcdtimit.read_prompts(str(tmp_path / "missing.txt"))
    assert tcdtimit.main(["manifest", "--corpus_dir", str(tmp_path), "--out_dir",
                          str(tmp_path / "out"), "--prompts", str(tmp_path / "missing")]) == 2
