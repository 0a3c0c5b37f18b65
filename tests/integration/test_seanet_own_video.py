r"""The route from the SEANet repository's released checkpoint and the published lip-reading
front-end to avse-extract on one's own video, end to end with random weights in both
published formats (full-size SEANet, the published front-end's architecture):

    avse-convert-seanet --arch seanet --checkpoint seanet.model \
        --frontend visual_frontend.pt --out DIR
    avse-extract --model DIR --video any.mp4 --out_dir OUT
"""
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from avse.inference import main as extract_main
from avse.models import AVSEModel
from avse.models.frontends import build_frontend, frontend_info, load_frontend
from avse.models.reference import cli as convert
from avse.models.reference import seanet
from avse.models.reference.dlr import to_reference_state_dict
from avse.video.media import decode_media
from avse.video.scenes import two_face_scene
from tests.model_helpers import randomise


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A SEANet trainer checkpoint and a visual_frontend.pt (DataParallel keys), random."""
    root = tmp_path_factory.mktemp("published")
    torch.manual_seed(0)
    model = randomise(AVSEModel(**convert.reference_config("seanet")), 0, scale=0.05).eval()
    torch.save(seanet.to_reference_state_dict(model.state_dict()), root / "seanet.model")
    fe = randomise(build_frontend("dlr"), 1, scale=0.05).eval()
    torch.save({"module." + k: v for k, v in to_reference_state_dict(fe.state_dict()).items()},
               root / "visual_frontend.pt")
    return root, fe


def test_released_seanet_and_frontend_extract_every_face_of_a_video(published, tmp_path,
                                                                     capsys):
    root, fe = published
    out = str(tmp_path / "seanet")
    assert convert.main(["--arch", "seanet", "--checkpoint", str(root / "seanet.model"),
                         "--frontend", str(root / "visual_frontend.pt"), "--out", out]) == 0
    assert "with the front-end" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["frontend.pt", "model.ckpt", "model.yaml"]
    section = yaml.safe_load(open(os.path.join(out, "model.yaml")))["inference"]
    assert section["frontend"] == "frontend.pt" and section["crop"] == "lipread"
    info = frontend_info(os.path.join(out, "frontend.pt"))
    assert info["format"] == "avse" and info["type"] == "dlr" and info["preset"] == "lipread"
    x = torch.randint(0, 256, (1, 6, 112, 112), dtype=torch.uint8)
    with torch.no_grad():  # the published weights, converted exactly
        assert torch.equal(load_frontend(os.path.join(out, "frontend.pt"))(x), fe(x))
    # a user's own video: a real photo, two faces, the second one entering late
    scene = two_face_scene(str(tmp_path / "own.mp4"), duration_s=3.0, late_start=1.2)
    res = tmp_path / "out"
    assert extract_main(["--model", out, "--video", scene.path, "--out_dir", str(res),
                         "--noprogressbar"]) == 0
    assert sorted(os.listdir(res)) == ["face0.mp4", "face0.wav", "face1.mp4", "face1.wav",
                                       "faces.json", "faces.png"]
    n_mix = len(decode_media(scene.path, want_video=False)[0])
    tracks = json.loads((res / "faces.json").read_text())["tracks"]
    for k, track in enumerate(tracks):
        wav, sr = sf.read(res / f"face{k}.wav", dtype="float32")
        assert sr == 16000 and len(wav) == n_mix and np.all(np.isfinite(wav))
        first = track["first_frame"] * 640
        assert np.abs(wav[first:]).max() > 0 and not wav[:first].any()  # silence before the face
        audio, _ = decode_media(str(res / f"face{k}.mp4"), want_video=False)
        assert abs(len(audio) - n_mix) <= 1024  # the muxed mp4 carries the whole extraction
    assert tracks[1]["first_time"] == pytest.approx(1.2, abs=0.25)


def test_a_frontend_that_does_not_fit_fails_before_writing(published, tmp_path, capsys):
    root, _ = published
    narrow = tmp_path / "narrow.pt"
    from avse.models.frontends import save_frontend

    save_frontend(build_frontend("cnn", hidden=64, channels=(4,)), str(narrow), preset="lrs2")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    for frontend, message in ((narrow, "64-d features"), (junk, "not a readable torch file")):
        out = tmp_path / frontend.stem
        assert convert.main(["--arch", "seanet", "--checkpoint", str(root / "seanet.model"),
                             "--frontend", str(frontend), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert str(frontend) in err and message in err, err
        assert not out.exists()
