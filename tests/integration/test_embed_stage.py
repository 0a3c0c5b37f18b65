"""The embedding stage (recipes/VoxCeleb2/run.sh --frontend, python -m avse.recipes.embed)
end to end on tiny synthetic VoxCeleb2-layout shards: emb.npy shards with the same keys and
audio, the embedding encoder trained on them through avse.experiment (the front-end recorded
in model.yaml, then avse-extract), the lipread preset read from the source videos, bad clips
listed, reruns, interruptions and a changed front-end."""
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from avse import embed
from avse.data import shards
from avse.models.frontends import build_frontend, save_frontend
from avse.recipes import embed as stage
from avse.recipes import stages, voxceleb2
from avse.inference import main as extract_main
from avse.video.media import read_audio
from tests.conftest import REPO, run_cmd
from tests.recipe_helpers import assert_split_reads_completely, read_rejected, read_split

EMBED = ["python", "-m", "avse.recipes.embed"]
TINY = ["--number_of_epochs=1", "--epoch_steps=2", "--batch_size=2", "--num_workers=0",
        "--crop_seconds=1.0", "--noprogressbar", "--device=cpu"]


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    """Prepared tiny corpus (14 clips: train 6 of 4 speakers, val 2 of 2, test 6 of 3) and a
    cnn front-end file (512-d, preset voxceleb2, the shards' crop)."""
    from avse.data.synthetic import make_voxceleb2_corpus

    root = tmp_path_factory.mktemp("embed")
    make_voxceleb2_corpus(root / "corpus", n_speakers=7, n_clips=2, seed=5, test_fraction=0.45,
                          progress=False)
    out = str(root / "prep")
    voxceleb2.stage_manifest(str(root / "corpus"), out, val_fraction=0.4, seed=5)
    stages.stage_extract(out)
    stages.stage_shards(out, shard_size=2, shard_multiple=2)
    stages.stage_lists(out, mixtures="train:8,val:2,test:2", num_speakers=(2,))
    torch.manual_seed(0)
    fe_file = str(root / "cnn.pt")
    save_frontend(build_frontend("cnn", hidden=512, channels=(8, 16)), fe_file,
                  preset="voxceleb2")
    return root, out, fe_file


def test_stage_from_the_shards_lips_then_train_and_extract(prep, tmp_path):
    root, out, fe_file = prep
    proc = run_cmd(["bash", "recipes/VoxCeleb2/run.sh", "--corpus_dir", str(root / "corpus"),
                    "--out_dir", out, "--stage", "5", "--frontend", fe_file, "--nj", "1"])
    printed = proc.stdout
    assert "[embed] kept 14, rejected 0" in printed and "14 embedded now" in printed
    fe = embed.load(fe_file)
    for split in ("train", "val", "test"):
        src_dir, emb_dir = (os.path.join(out, d, split) for d in ("shards", "shards_emb"))
        assert_split_reads_completely(emb_dir)
        meta, src = shards.read_meta(emb_dir), shards.read_meta(src_dir)
        assert meta["fields"] == ["emb.npy", "flac", "json"] and meta["visual"] == ["emb"]
        assert meta["crop"] == "voxceleb2" and meta["frame_dim"] == 512
        assert meta["frontend"]["sha1"] == embed.file_sha1(fe_file)
        assert meta["source"]["region"] == "lips" and meta["num_shards"] == src["num_shards"]
        got, ref = read_split(emb_dir), read_split(src_dir)
        assert list(got) == list(ref)  # same keys, same order
        for key, s in got.items():
            lips = ref[key]["lips.npy"]
            assert s["emb.npy"].dtype == np.float16 and s["emb.npy"].shape == (len(lips), 512)
            np.testing.assert_array_equal(s["wav"], ref[key]["wav"])
            assert s["json"]["visual"] == "emb" and s["json"]["num_frames"] == len(lips)
            want = embed.embed_clips(fe, [lips])[0]
            np.testing.assert_allclose(s["emb.npy"].astype(np.float32), want, rtol=2e-3,
                                       atol=2e-3)
    # the embedding encoder trains on them through the normal experiment
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(os.path.join(out, "shards_emb"), data / "shards")
    os.symlink(os.path.join(out, "lists"), data / "lists")
    exp = tmp_path / "exp"
    run_cmd(["python", os.path.join(REPO, "egs", "synthetic", "train.py"),
             _embedding_demo_yaml(tmp_path / "demo_emb.yaml"), f"--data_folder={data}",
             f"--output_folder={exp}"] + TINY)
    assert "epoch: 1" in (exp / "train_log.txt").read_text()
    config = yaml.safe_load((exp / "model.yaml").read_text())
    assert config["visual_encoder"]["type"] == "embedding"
    assert config["inference"]["frontend"] == "frontend.pt"
    assert config["inference"]["crop"] == "voxceleb2" and (exp / "frontend.pt").is_file()
    # ... and avse-extract runs the trained model on a face-centred clip, embeddings made here
    clip = json.loads(open(os.path.join(out, "manifest.jsonl")).readline())["media"]
    assert extract_main(["--model", str(exp), "--video", clip, "--face_centred",
                         "--out", str(tmp_path / "t.wav")]) == 0
    wav, sr = sf.read(tmp_path / "t.wav")
    assert sr == 16000 and len(wav) == len(read_audio(clip)) and np.abs(wav).max() > 0


def _embedding_demo_yaml(path):
    """egs/synthetic/hparams/demo.yaml with the ``embedding`` visual encoder (which has no
    front-end options): the demo model on precomputed embeddings."""
    text = open(os.path.join(REPO, "egs", "synthetic", "hparams", "demo.yaml")).read()
    roi_only = ("        pretrained: !ref <pretrained_frontend>\n"
                "        trainable: !ref <frontend_trainable>\n")
    assert roi_only in text and "\nvisual_encoder_type: cnn\n" in text, "demo.yaml changed"
    text = text.replace(roi_only, "        in_dim: 512\n").replace(
        "\nvisual_encoder_type: cnn\n", "\nvisual_encoder_type: embedding\n")
    path.write_text(text)
    return str(path)


def _copy_prep(out, dest, corrupt_key, unlisted_key):
    """A copy of the prepared folder whose manifest points ``corrupt_key`` at a garbled mp4
    and no longer lists ``unlisted_key``."""
    os.makedirs(dest)
    shutil.copytree(os.path.join(out, "shards"), os.path.join(dest, "shards"))
    rows = []
    for line in open(os.path.join(out, "manifest.jsonl")):
        entry = json.loads(line)
        if entry["key"] == corrupt_key:
            entry["media"] = os.path.join(dest, "garbled.mp4")
            with open(entry["media"], "wb") as f:
                f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(4000))
        if entry["key"] != unlisted_key:
            rows.append(json.dumps(entry) + "\n")
    with open(os.path.join(dest, "manifest.jsonl"), "w") as f:
        f.writelines(rows)
    return dest


def test_lipread_preset_reads_the_videos_lists_bad_clips_and_resumes(prep, tmp_path,
                                                                    monkeypatch, capsys):
    root, out, fe_file = prep
    train_keys = sorted(read_split(os.path.join(out, "shards", "train")))
    bad, unlisted = train_keys[0], train_keys[1]
    work = _copy_prep(out, str(tmp_path / "prep"), bad, unlisted)
    # an interrupted run leaves no split visible; the next one resumes from the clips done
    writes = []

    def dies(path, data):
        writes.append(path)
        if len(writes) > 2:
            raise KeyboardInterrupt
        stage_atomic_write(path, data)

    stage_atomic_write = stage.atomic_write
    monkeypatch.setattr(stage, "atomic_write", dies)  # the clips' embeddings, one by one
    with pytest.raises(KeyboardInterrupt):
        stage.stage_embed(work, fe_file, "lipread", "train")
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(work, "shards_emb", "train"))
    cmd = EMBED + ["--out_dir", work, "--frontend", fe_file, "--preset", "lipread", "--nj", "2"]
    proc = run_cmd(cmd)
    n_train = len(train_keys) - 2
    assert "[embed] kept 12, rejected 2" in proc.stdout
    assert "10 embedded now" in proc.stdout  # two were done before the interruption
    rejected = read_rejected(work)
    assert rejected[bad]["stage"] == "embed" and rejected[bad]["path"].endswith("garbled.mp4")
    assert "MediaError" in rejected[bad]["reason"]
    assert "no source video in manifest.jsonl" in rejected[unlisted]["reason"]
    split_dir = os.path.join(work, "shards_emb", "train")
    meta = shards.read_meta(split_dir)
    assert meta["count"] == n_train and meta["crop"] == "lipread" and meta["roi_size"] == 112
    assert meta["source"]["region"] == "video"
    assert not [n for n in os.listdir(os.path.join(work, "shards_emb")) if n.startswith(".tmp")]
    got = read_split(split_dir)
    assert bad not in got and unlisted not in got
    key = sorted(got)[0]
    media = next(json.loads(x)["media"] for x in open(os.path.join(work, "manifest.jsonl"))
                 if json.loads(x)["key"] == key)
    npy = tmp_path / "one.npy"  # avse-embed on the clip gives the stage's numbers
    assert embed.main(["--frontend", fe_file, "--preset", "lipread", "--video", media,
                       "--out", str(npy)]) == 0
    want = stage.fit_frames(np.load(npy), got[key]["json"]["num_frames"])
    np.testing.assert_allclose(got[key]["emb.npy"].astype(np.float32), want, rtol=2e-3,
                               atol=2e-3)
    # a rerun does nothing; another front-end redoes the splits
    files = {os.path.join(d, f) for d, _, fs in os.walk(work) for f in fs}
    before = {f: os.stat(f).st_mtime_ns for f in files if not f.endswith("rejected.tsv")}
    rows = open(os.path.join(work, "rejected.tsv")).read()
    assert stage.main(cmd[3:]) == 0
    assert "is up to date; skipping" in capsys.readouterr().out
    assert before == {f: os.stat(f).st_mtime_ns for f in before}
    assert open(os.path.join(work, "rejected.tsv")).read() == rows
    other = str(tmp_path / "other.pt")
    save_frontend(build_frontend("cnn", hidden=512, channels=(8,)), other, preset="lipread")
    assert stage.main(["--out_dir", work, "--frontend", other, "--splits", "test"]) == 0
    n_test = shards.read_meta(os.path.join(work, "shards", "test"))["count"]
    assert f"{n_test} embedded now" in capsys.readouterr().out
    assert shards.read_meta(os.path.join(work, "shards_emb", "test"))["frontend"]["file"] == other
    assert set(read_rejected(work)) == {bad, unlisted}  # the train rows stay


def test_stage_errors_are_named(prep, tmp_path, capsys):
    root, out, fe_file = prep
    os.makedirs(tmp_path / "p" / "shards")
    shutil.copytree(os.path.join(out, "shards", "val"), tmp_path / "p" / "shards" / "val")
    for argv, message in (
            (["--out_dir", out, "--frontend", str(tmp_path / "x.pt")], "x.pt not found"),
            (["--out_dir", out, "--frontend", fe_file, "--splits", "dev"],
             "--splits: unknown or no name(s) ['dev']"),
            (["--out_dir", str(tmp_path), "--frontend", fe_file], "holds no finished shard split"),
            (["--out_dir", out, "--frontend", fe_file, "--emb_dir", "shards"],
             "a folder name other than 'shards'"),
            (["--out_dir", str(tmp_path / "p"), "--frontend", fe_file, "--preset", "lipread"],
             "manifest.jsonl not found")):
        assert stage.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
    assert not os.path.exists(tmp_path / "p" / "shards_emb" / "val")
