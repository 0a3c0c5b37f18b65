"""``--detector_device``: the extract stage's face detector, one per device and process.

Two tiny GRID-like clips (MPEG-1 360x288, the astronaut's face) are staged with ``--crop
face`` through the GRID recipe's CLI: the detector is built once for both clips on the
device given, and the frames equal what a fresh detector per clip gives. A device this
machine does not have stops the stage before any clip is touched (exit 2, the message
naming ``--detector_device``), from the CLI and from ``run.sh``.
"""
import os

import numpy as np
import pytest
import torch

from avse.recipes import grid, stages
from avse.recipes.common import write_jsonl
from avse.video import detect
from tests.conftest import run_cmd
from tests.grid_fixture import N_FRAMES, write_mpg, write_wav


def _manifest(out, media):
    os.makedirs(out)
    entries = [{**stages.manifest_entry(f"s{k}/test/u{k}", f"s{k}", f"s{k}", f"u{k}", "test",
                                        video, "test"), "audio": wav}
               for k, (video, wav) in enumerate(media, 1)]
    write_jsonl(entries, os.path.join(out, "manifest.jsonl"))
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("detector_device")
    pairs = []
    for k in (1, 2):
        video, wav = str(root / f"u{k}.mpg"), str(root / f"u{k}.wav")
        write_mpg(video, seed=k)
        write_wav(wav, 25000, seed=k)
        pairs.append((video, wav))
    return root, pairs


@pytest.fixture
def built(monkeypatch):
    """The ``(pid, device)`` of every FaceDetector built (an empty detector cache first)."""
    calls = []

    class Counting(detect.FaceDetector):
        def __init__(self, *args, **kwargs):
            calls.append((os.getpid(), kwargs.get("device", "cpu")))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(detect, "FaceDetector", Counting)
    monkeypatch.setattr(detect, "_SHARED", {})
    return calls


def test_one_detector_for_every_clip_on_the_device_given(media, built):
    root, pairs = media
    out = _manifest(str(root / "cpu"), pairs)
    assert grid.main(["extract", "--out_dir", out, "--crop", "face",
                      "--detector_device", "cpu"]) == 0
    assert built == [(os.getpid(), "cpu")]  # lazily, once, for both clips
    infos = stages.read_extracted(out)
    assert len(infos) == 2 and all(i["num_frames"] == N_FRAMES for i in infos)
    # the frames equal the old path's: a fresh default detector for the clip
    faces, landmarks = stages.clip_faces(pairs[1][0], n_frames=N_FRAMES)
    staged = os.path.join(out, "extract", "test", "s2", "test", "u2")
    assert np.array_equal(np.load(staged + ".face.npy"), faces)
    assert np.array_equal(np.load(staged + ".facelm.npy"), landmarks)
    assert len(built) == 2  # that fresh one


def test_an_unusable_device_stops_before_any_clip(media, built, monkeypatch, capsys):
    root, pairs = media
    out = _manifest(str(root / "cuda"), pairs)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a CPU-only machine
    assert grid.main(["extract", "--out_dir", out, "--detector_device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--detector_device cuda: CUDA is not available" in err
    assert "pass --detector_device cpu" in err
    assert grid.main(["extract", "--out_dir", out, "--detector_device", "gpu"]) == 2
    assert "--detector_device gpu: 'gpu' is not a torch device" in capsys.readouterr().err
    assert built == [] and sorted(os.listdir(out)) == ["manifest.jsonl"]  # nothing touched
    # run.sh passes the option through (cuda:99: no machine has it)
    proc = run_cmd(["bash", "recipes/GRID/run.sh", "--corpus_dir", str(root), "--out_dir", out,
                    "--stage", "2", "--stop_stage", "2", "--detector_device", "cuda:99"],
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert "error: --detector_device cuda:99: " in proc.stderr
    assert sorted(os.listdir(out)) == ["manifest.jsonl"]


def test_a_detector_that_cannot_be_built_stops_the_stage(media, monkeypatch, capsys):
    root, pairs = media
    out = _manifest(str(root / "broken"), pairs)

    def broken(device="cpu"):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(detect, "shared_detector", broken)
    assert grid.main(["extract", "--out_dir", out, "--detector_device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--detector_device cpu: RuntimeError: out of memory" in err
    assert not os.path.isfile(os.path.join(out, "rejected.tsv"))  # no clip rejected for it
