"""recipes/VoxCeleb2/run.sh end to end on a tiny synthetic tree."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from avse.data import lists
from avse.data import shards
from avse.video.media import MOUTH_CROPS, decode_media
from avse.data.align import align_av
from avse.recipes.stages import probe_duration
from tests.conftest import run_cmd
from tests.recipe_helpers import (
    assert_rerun_is_a_noop,
    assert_splits_read_completely,
    read_rejected,
    read_split,
)

RUN = ["bash", "recipes/VoxCeleb2/run.sh"]
OPTS = ["--nj", "2", "--shard_size", "4", "--shard_multiple", "2", "--val_fraction", "0.3",
        "--mixtures", "train:20,val:3,test:6"]


@pytest.fixture(scope="module")
def prepared(tiny_vox_corpus, tmp_path_factory):
    corpus, bad = tiny_vox_corpus
    out = tmp_path_factory.mktemp("prep") / "vox2"
    proc = run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", str(out)] + OPTS)
    return corpus, bad, str(out), proc


def test_shards_hold_every_kept_utterance(prepared):
    corpus, bad, out, proc = prepared
    n_mp4 = len(list(corpus.rglob("*.mp4")))
    rejected = read_rejected(out)
    assert set(bad) <= set(rejected)
    manifest = [json.loads(l) for l in open(os.path.join(out, "manifest.jsonl"))]
    counts = assert_splits_read_completely(out)
    assert set(counts) == {"train", "val", "test"}
    total = 0
    for split in ("train", "val", "test"):
        split_dir = os.path.join(out, "shards", split)
        if not os.path.isdir(split_dir):
            continue
        meta = shards.read_meta(split_dir)
        got = read_split(split_dir)
        assert meta["count"] == len(got) == counts[split] and meta["num_shards"] % 2 == 0
        assert meta["fields"] == ["flac", "json", "lips.npy"]
        for key, s in got.items():
            assert s["json"]["split"] == split and s["json"]["key"] == key
            assert s["lips.npy"].dtype == np.uint8 and s["lips.npy"].shape[1:] == (88, 88)
            assert len(s["wav"]) == 640 * len(s["lips.npy"]) == s["json"]["num_samples"]
        total += len(got)
    assert total == n_mp4 - len(bad) == len(manifest) - len(rejected.keys() & {m["key"] for m in manifest})
    assert "[extract] kept" in proc.stdout and "[shards] kept" in proc.stdout


def test_flac_and_lips_round_trip_against_direct_decoding(prepared):
    corpus, _, out, _ = prepared
    got = read_split(os.path.join(out, "shards", "test"))
    key, sample = sorted(got.items())[0]
    wav, lips = decode_media(str(corpus / "test" / "mp4" / (key + ".mp4")),
                             crop=MOUTH_CROPS["voxceleb2"])
    wav, lips = align_av(wav, lips)
    np.testing.assert_array_equal(sample["lips.npy"], lips)
    np.testing.assert_allclose(sample["wav"], np.clip(wav, -1, 1), atol=1.0 / 32767 + 1e-6)


def test_bad_clips_are_listed_with_reasons(prepared):
    _, bad, out, _ = prepared
    rejected = read_rejected(out)
    assert "cannot open" in rejected["id09990/corruptVid01/00001"]["reason"]
    assert rejected["id09991/truncateV01/00001"]["reason"]
    assert "too short" in rejected["id09992/shortClip01/00001"]["reason"]
    for key in bad:
        assert rejected[key]["path"].endswith(key + ".mp4")


def test_rerun_is_a_noop(prepared):
    corpus, _, out, _ = prepared
    proc = assert_rerun_is_a_noop(RUN + ["--corpus_dir", str(corpus), "--out_dir", out] + OPTS, out)
    assert "0 processed" in proc.stdout and "up to date" in proc.stdout


def test_retry_rejected_probes_the_rejected_clips_again(prepared, tmp_path):
    corpus, bad, out, _ = prepared
    copy = tmp_path / "vox2"
    shutil.copytree(out, copy)
    proc = run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", str(copy), "--stop_stage",
                          "2", "--retry_rejected", "true"] + OPTS)
    assert "up to date" not in proc.stdout.split("[extract]")[0]  # the manifest ran again
    assert read_rejected(copy) == read_rejected(out)  # still broken: rejected again, same reason


def test_generated_lists_name_shard_utterances(prepared):
    _, _, out, _ = prepared
    keys = {}
    for split in ("train", "val", "test"):
        d = os.path.join(out, "shards", split)
        if os.path.isdir(d):
            keys.update({k: split for k in read_split(d)})
    two = lists.read_list(os.path.join(out, "lists", "voxmix_2mix.csv"))
    three = lists.read_list(os.path.join(out, "lists", "voxmix_3mix.csv"))
    assert len(two) == 29 and {m.num_speakers for m in two} == {2}
    assert {m.num_speakers for m in three} == {3}
    for mix in two + three:
        assert all(keys[s.key] == mix.set for s in mix.sources)
        assert len({s.spk for s in mix.sources}) == mix.num_speakers
    assert {m.set for m in two} == {"train", "val", "test"}


def test_given_list_restricts_and_round_trips(tiny_vox_corpus, prepared, tmp_path):
    corpus, bad, prepared_out, _ = prepared
    two = lists.read_list(os.path.join(prepared_out, "lists", "voxmix_2mix.csv"))
    rows = [m for m in two if m.set == "train"][:3]
    rej_key = "id09992/shortClip01/00001"
    spk, path = rej_key.split("/", 1)
    rows.append(lists.Mixture("train", (rows[0].target, lists.Source("train", spk, path, 2.5)), 3.0))
    lst = tmp_path / "data_list.csv"
    lists.write_list(rows, str(lst))
    out = tmp_path / "out"
    run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", str(out), "--nj", "1",
                   "--lists", str(lst), "--shard_multiple", "1"])
    manifest = [json.loads(l) for l in open(out / "manifest.jsonl")]
    assert {m["key"] for m in manifest} == {s.key for r in rows for s in r.sources}
    assert sum(assert_splits_read_completely(out).values()) == len(manifest) - 1  # 1 rejected
    back = lists.read_list(str(out / "lists" / "data_list.csv"))
    assert back == rows[:3]  # the row with the rejected clip is dropped ...
    assert any(r["stage"] == "lists" for r in csv.DictReader(open(out / "rejected.tsv"), delimiter="\t"))


def test_unknown_list_entry_and_missing_corpus_fail_clearly(tiny_vox_corpus, tmp_path):
    corpus, _ = tiny_vox_corpus
    lst = tmp_path / "l.csv"
    lst.write_text("test,test,id77777,nosuchvideo/00001,0,test,id77778,othervideo1/00002,1.5,3.0\n")
    proc = run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", str(tmp_path / "o"),
                          "--lists", str(lst)], check=False)
    assert proc.returncode == 2 and "id77777/nosuchvideo/00001" in proc.stderr
    proc = run_cmd(RUN + ["--corpus_dir", str(tmp_path / "nope"), "--out_dir", str(tmp_path / "o")],
                   check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "empty" / "dev" / "mp4").mkdir(parents=True)
    proc = run_cmd(RUN + ["--corpus_dir", str(tmp_path / "empty"), "--out_dir", str(tmp_path / "o")],
                   check=False)
    assert proc.returncode == 2 and "no clips found" in proc.stderr
    proc = run_cmd(RUN + ["--corpus_dir", str(corpus), "--bogus", "1"], check=False)
    assert proc.returncode == 2 and "--bogus" in proc.stderr


def test_lip_embeddings_path(tiny_vox_corpus, tmp_path):
    corpus, bad = tiny_vox_corpus
    visual = tmp_path / "visual"
    rng = np.random.default_rng(5)
    written = {}
    for mp4 in sorted(corpus.rglob("*.mp4")):
        key = str(mp4.relative_to(mp4.parents[2])).removesuffix(".mp4")
        if key in bad:
            continue
        n_frames = int(round(probe_duration(str(mp4)) * 25))
        emb = rng.standard_normal((n_frames, 512)).astype(np.float32)
        (visual / key).parent.mkdir(parents=True, exist_ok=True)
        np.save(visual / (key + ".npy"), emb)
        written[key] = emb
    del written[key]  # one clip without embedding -> rejected at the manifest stage
    os.remove(visual / (key + ".npy"))
    out = tmp_path / "out"
    run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", str(out), "--nj", "2",
                   "--visual_path", str(visual), "--shard_multiple", "1", "--stop_stage", "3"])
    got = {}
    for split in ("train", "val", "test"):
        d = out / "shards" / split
        if d.is_dir():
            assert shards.read_meta(str(d))["fields"] == ["emb.npy", "flac", "json"]
            got.update(read_split(str(d)))
    assert set(got) == set(written)
    assert sum(assert_splits_read_completely(out).values()) == len(written)
    for k, s in got.items():
        assert s["emb.npy"].dtype == np.float16 and s["emb.npy"].shape[1] == 512
        np.testing.assert_array_equal(s["emb.npy"], written[k][: len(s["emb.npy"])].astype(np.float16))
        assert len(s["wav"]) == 640 * len(s["emb.npy"])
    assert "no lip embedding" in read_rejected(str(out))[key]["reason"]


def test_audio_from_a_separate_wav_tree(tiny_vox_corpus, tmp_path):
    corpus, bad = tiny_vox_corpus
    audio = tmp_path / "wav"
    rng = np.random.default_rng(9)
    refs = {}
    import soundfile as sf
    for mp4 in sorted((corpus / "test" / "mp4").rglob("*.mp4")):
        key = str(mp4.relative_to(mp4.parents[2])).removesuffix(".mp4")
        n = int(round(probe_duration(str(mp4)) * 16000))
        refs[key] = np.clip(0.2 * rng.standard_normal(n), -0.99, 0.99).astype(np.float32)
        (audio / key).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(audio / (key + ".wav")), refs[key], 16000, subtype="PCM_16")
    out = tmp_path / "out"
    run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", str(out), "--audio_path", str(audio),
                   "--shard_multiple", "1", "--stop_stage", "3"])
    got = read_split(str(out / "shards" / "test"))
    assert set(got) == set(refs)
    assert assert_splits_read_completely(out) == {"test": len(refs)}
    for key, s in got.items():
        np.testing.assert_allclose(s["wav"], refs[key][: len(s["wav"])], atol=2.0 / 32767)
    # dev clips have no wav in that tree: rejected with the reason, the run still finished
    reasons = {r["reason"] for r in read_rejected(str(out)).values()}
    assert any("--audio_path" in r for r in reasons)


def test_shard_multiple_above_a_split_size_writes_no_empty_shard(prepared, tmp_path):
    """--shard_multiple 64 with splits of a few utterances: fewer shards (one sample each at
    least, with a ShardCountWarning), and every split still reads completely."""
    corpus, _, out, _ = prepared
    work = tmp_path / "vox2"
    work.mkdir()
    shutil.copy(os.path.join(out, "manifest.jsonl"), work / "manifest.jsonl")
    shutil.copytree(os.path.join(out, "extract"), work / "extract")
    proc = run_cmd(RUN + ["--corpus_dir", str(corpus), "--out_dir", str(work), "--stage", "3",
                          "--stop_stage", "3", "--shard_size", "4", "--shard_multiple", "64"])
    assert "ShardCountWarning" in proc.stderr and "[shards] kept" in proc.stdout
    counts = assert_splits_read_completely(work)
    for split, count in counts.items():
        meta = shards.read_meta(str(work / "shards" / split))
        assert count < 64 and meta["num_shards"] <= count
        assert set(read_split(str(work / "shards" / split))) == set(
            read_split(os.path.join(out, "shards", split)))
