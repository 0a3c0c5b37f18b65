"""avse-extract on real-photo videos (avse.video.scenes): faces tracked and numbered left to
right, late tracks placed at their own time in the wav and in the muxed mp4 (a click
against the video frame that flashes with it), 30 fps and rotated inputs, face-centred
clips framed as they went in, recipes' --crop landmarks, and the errors."""
import json
from types import SimpleNamespace

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from avse.inference import AVSEExtractor, main
from avse.video.frames import probe
from avse.video.media import MouthCrop, decode_media
from avse.video.scenes import FaceSpec, two_face_scene, write_scene
from tests.model_helpers import tiny_model_folder

LATE = 2.6  # face 1 enters at this time (s)


class PassThrough(torch.nn.Module):
    """A 'model' whose estimate is its input mixture: what the pipeline does to time is
    then visible in the output (a click stays where it is)."""

    visual_input = "lips"

    def forward(self, mixture, visual):
        assert visual.shape[-2:] == (88, 88) and visual.shape[1] * 640 == mixture.shape[-1]
        return SimpleNamespace(estimate=mixture)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "two.mp4"
    return two_face_scene(str(path), duration_s=6.0, late_start=LATE, click_at=4.4)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return tiny_model_folder(str(tmp_path_factory.mktemp("model") / "m"))


def test_list_faces_numbers_tracks_left_to_right_with_their_times(scene, tmp_path, capsys):
    assert main(["--video", scene.path, "--list_faces", "--out_dir", str(tmp_path),
                 "--noprogressbar"]) == 0
    doc = json.loads((tmp_path / "faces.json").read_text())
    assert (tmp_path / "faces.png").stat().st_size > 10_000
    assert not list(tmp_path.glob("*.wav")) and not list(tmp_path.glob("*.mp4"))
    tracks = doc["tracks"]
    assert [t["id"] for t in tracks] == [0, 1]
    assert tracks[0]["mean_box"][0] < tracks[1]["mean_box"][0]  # left to right
    assert tracks[0]["first_time"] == 0.0 and tracks[0]["last_time"] == pytest.approx(6.0, abs=0.25)
    assert tracks[1]["first_time"] == pytest.approx(LATE, abs=0.25)  # detection every 0.2 s
    for t, box in zip(tracks, scene.boxes):  # mean boxes near the truth (source pixels)
        true_cx = float(np.mean(box[:, [0, 2]]))
        assert abs((t["mean_box"][0] + t["mean_box"][2]) / 2 - true_cx) < 15
        assert set(t) >= {"first_frame", "last_frame", "mean_score", "interpolated_frames"}
    out = capsys.readouterr().out
    assert "2 face track(s)" in out and "face" in out


def test_every_face_out_in_sync_late_track_at_its_own_time(scene, tmp_path):
    ex = AVSEExtractor(PassThrough())
    ex.extract_video(scene.path, out_dir=str(tmp_path / "out"), chunk_seconds=1.5)
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["face0.mp4", "face0.wav", "face1.mp4", "face1.wav", "faces.json", "faces.png"]
    doc = json.loads((out / "faces.json").read_text())  # no activity head: no speaking keys
    assert not any(k.startswith("speaking") for t in doc["tracks"] for k in t)
    assert "speaking" not in doc["extraction"] and "gate" not in doc["extraction"]
    mix_len = len(decode_media(scene.path, want_video=False)[0])
    w0, sr = sf.read(out / "face0.wav", dtype="float32")
    w1, _ = sf.read(out / "face1.wav", dtype="float32")
    assert sr == 16000 and len(w0) == len(w1) == mix_len  # exactly the input audio's length
    first1 = json.loads((out / "faces.json").read_text())["tracks"][1]["first_frame"]
    assert not np.any(w1[: first1 * 640]) and np.abs(w1[first1 * 640:]).max() > 0.1
    # the click, through the muxed mp4: its audio against the frame that flashes with it
    info = probe(str(out / "face1.mp4"))
    assert info.video_codec == probe(scene.path).video_codec  # the video stream copied
    corner = MouthCrop(cx=0.03, cy=0.05, size=0.05)
    wav, corner_frames = decode_media(str(out / "face1.mp4"), crop=corner)
    flash = int(np.argmax(corner_frames.reshape(len(corner_frames), -1).mean(1)))
    burst = scene.mixture - scene.sources.sum(0)  # the click alone, at its true time
    start = int(np.flatnonzero(np.abs(burst) > 1e-6)[0])
    kernel = burst[start:start + 80]
    click = int(np.argmax(np.correlate(wav, kernel, "valid")))  # where it is in the mp4
    assert start == round(scene.click_time * 16000)
    assert flash == round(scene.click_time * 25)
    assert abs(click - flash * 640) <= 160, (click, flash * 640)  # within 10 ms


def test_one_face_with_out_and_the_error_for_several(scene, small_model, tmp_path):
    one = tmp_path / "one.mp4"
    write_scene(str(one), [FaceSpec(height=140, start_xy=(320, 170), end_xy=(330, 175))], 3.0)
    assert main(["--model", small_model, "--video", str(one), "--out", str(tmp_path / "t.wav"),
                 "--noprogressbar"]) == 0
    wav, sr = sf.read(tmp_path / "t.wav")
    assert sr == 16000 and abs(len(wav) - 3 * 16000) <= 1024 and np.all(np.isfinite(wav))
    # several faces and no --face: an error listing them, nothing written
    target = tmp_path / "x.wav"
    assert main(["--model", small_model, "--video", scene.path, "--out", str(target),
                 "--noprogressbar"]) == 2
    assert not target.exists()
    assert main(["--model", small_model, "--video", scene.path, "--out", str(target),
                 "--face", "largest", "--noprogressbar"]) == 0 and target.exists()
    assert main(["--model", small_model, "--video", scene.path, "--out_dir",
                 str(tmp_path / "o"), "--face", "7", "--noprogressbar"]) == 2
    assert not (tmp_path / "o").exists()


def test_errors_name_the_file_and_write_nothing(small_model, tmp_path, capsys):
    empty = tmp_path / "empty.mp4"
    write_scene(str(empty), [], 2.0)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    audio_only = tmp_path / "a.wav"
    sf.write(audio_only, np.zeros(16000), 16000)
    silent = tmp_path / "silent.mp4"  # a video stream only
    with av.open(str(silent), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    for video, says in [(empty, "no face"), (junk, str(junk)), (audio_only, "no video stream"),
                        (silent, "--mixture")]:
        out = tmp_path / ("out_" + video.stem)
        assert main(["--model", small_model, "--video", str(video), "--out_dir", str(out),
                     "--noprogressbar"]) == 2
        err = capsys.readouterr().err
        assert says in err and str(video) in err, err
        assert not out.exists()
    with pytest.raises(SystemExit) as exit_:  # options out of range: named, before any work
        main(["--model", small_model, "--video", str(empty), "--out_dir", str(tmp_path / "z"),
              "--detect_every", "0"])
    assert exit_.value.code == 2 and "--detect_every must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_30fps_rotated_44k_stereo_video_tracks_in_display_orientation(tmp_path):
    from avse.inference import list_faces

    truth = two_face_scene(str(tmp_path / "r.mp4"), duration_s=4.0, late_start=1.6, fps=30,
                           rotation=90, audio_rate=44100, audio_channels=2)
    assert probe(truth.path).rotation in (90, 270) and probe(truth.path).fps == pytest.approx(30)
    scan = list_faces(truth.path)
    assert len(scan.tracks) == 2 and scan.n_frames == pytest.approx(100, abs=1)
    t0, t1 = scan.tracks
    assert t0.mean_cx < t1.mean_cx and scan.info.width > scan.info.height  # display: landscape
    assert t1.frames[0] / 25 == pytest.approx(1.6, abs=0.25)
    for track, box in zip(scan.tracks, truth.boxes):
        assert abs(track.mean_box[1] - float(np.mean(box[:, 1]))) < 15
    # extraction: 16 kHz mono wavs as long as the (44.1 kHz) input audio; the mp4 keeps the
    # source's rotation metadata and its 30 fps stream
    AVSEExtractor(PassThrough()).extract_video(truth.path, out_dir=str(tmp_path / "o"))
    wav, sr = sf.read(tmp_path / "o" / "face1.wav")
    assert sr == 16000 and wav.ndim == 1
    assert abs(len(wav) / 16000 - probe(truth.path).audio_duration) < 0.002
    out = probe(str(tmp_path / "o" / "face1.mp4"))
    assert out.rotation == probe(truth.path).rotation and out.fps == pytest.approx(30)


def test_a_face_centred_clip_comes_out_framed_as_it_went_in(tmp_path):
    """Frames cut by our framing from a photo go through detection + tracking + framing
    again: the face frames must come back nearly identical."""
    from skimage import data

    from avse.video import faces as F
    from avse.video.crops import cut_face, face_window
    from avse.video.detect import FaceDetector

    rgb = data.astronaut()
    box = FaceDetector().detect([rgb])[0].boxes[0]
    gray = (rgb @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
    frames = [cut_face(gray, face_window(box + [dx, 0, dx, 0])) for dx in np.linspace(-3, 3, 40)]
    path = tmp_path / "centred.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25, options={"crf": "12", "preset": "ultrafast"})
        vs.width = vs.height = 224
        vs.pix_fmt = "yuv420p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, 2), format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
        out.mux(vs.encode())
    scan = F.scan_faces(str(path), str(tmp_path / "work"), origin=0.0, min_track_s=0.5)
    assert len(scan.tracks) == 1
    back = np.asarray(scan.faces(0)).astype(np.float32)
    ref = np.stack(frames)[np.asarray(scan.tracks[0].frames)].astype(np.float32)
    inner = (slice(None), slice(30, 194), slice(30, 194))  # the face, not the padded border
    err = np.abs(back[inner] - ref[inner]).mean()
    corr = np.corrcoef(back[inner].ravel(), ref[inner].ravel())[0, 1]
    window = face_window(np.asarray(scan.tracks[0].boxes)).mean(0)  # where it cut the frame
    assert np.all(np.abs(window - [112, 112, 224]) < [6, 6, 16]), window  # within ~3 % / 7 %
    assert err < 16 and corr > 0.9, (err, corr)


def test_recipe_crop_landmarks_uses_the_tracked_face(tmp_path):
    from avse.recipes.stages import extract_utterance

    clip = tmp_path / "clip.mp4"
    truth = write_scene(str(clip), [FaceSpec(height=150, start_xy=(112, 95), end_xy=(114, 97))],
                        1.92, size=(224, 224))  # 48 video frames = 30 whole AAC frames
    entry = {"media": str(clip), "audio": None, "emb": None, "duration": 1.92, "key": "s/v/1",
             "spk": "s", "video": "v", "clip": "1", "subset": "dev", "split": "train"}
    wav, lips, info = extract_utterance(entry, crop="landmarks")
    fixed = extract_utterance(entry, crop="voxceleb2")[1]
    assert lips.shape == fixed.shape == (48, 88, 88) and lips.dtype == np.uint8
    assert len(wav) == 48 * 640 and info["num_frames"] == 48
    # the drawn mouth (dark inner ellipse) is centred in the aligned crop
    dark = lips.min(axis=0) < 60
    ys, xs = np.nonzero(dark)
    assert abs(ys.mean() - 44) < 8 and abs(xs.mean() - 44) < 8
    assert truth.spans[0][:2] == (0, 47)


def _concat_scenes(parts, path):
    """One mp4 (H.264 + AAC 16 kHz) of the given scenes back to back: hard shot cuts."""
    frames = []
    for truth in parts:
        with av.open(truth.path) as c:
            frames += [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    audio = np.concatenate([t.mixture[: round(t.duration * 16000)] for t in parts])
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "20"})
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        aus = out.add_stream("aac", rate=16000, layout="mono")
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
        out.mux(vs.encode())
        audio = np.pad(audio, (0, -len(audio) % 1024)).astype(np.float32)
        for s in range(0, len(audio), 1024):
            af = av.AudioFrame.from_ndarray(audio[None, s:s + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, s
            out.mux(aus.encode(af))
        out.mux(aus.encode())
    return str(path)


def test_a_shot_cut_ends_tracks_and_the_same_face_is_merged_across_it(tmp_path):
    from avse.inference import list_faces

    def shot(name, x, seed, tint=(1.0, 1.0, 1.0)):
        face = FaceSpec(height=130, start_xy=(x, 170), end_xy=(x + 10, 172), tint=tint)
        return write_scene(str(tmp_path / name), [face], 2.4, seed=seed)

    same = _concat_scenes([shot("a.mp4", 200, 1), shot("b.mp4", 430, 2)], tmp_path / "same.mp4")
    scan = list_faces(same)
    assert scan.cuts == [60]  # 2.4 s x 25 fps: the second shot starts at grid frame 60
    assert len(scan.tracks) == 1 and scan.tracks[0].segments == [(0, 59), (60, 119)]
    apart = list_faces(same, merge=False)
    assert [(t.frames[0], t.frames[-1]) for t in apart.tracks] == [(0, 59), (60, 119)]
    # another look after the cut (a strong tint): two tracks, not merged
    other = _concat_scenes([shot("c.mp4", 200, 1), shot("d.mp4", 430, 2, (0.55, 0.8, 1.3))],
                           tmp_path / "other.mp4")
    assert len(list_faces(other).tracks) == 2


def test_speaking_time_per_face_in_faces_json_and_gate(scene, tmp_path, capsys, monkeypatch):
    """A model with an activity head whose logits follow the mixture's loudness (a mixture
    given with --mixture: loud over 0.4-2.0 s and 3.2-5.0 s): each extracted face gets its
    speaking time and spans over its own on-screen time; --gate turns the rest down."""
    from avse.models import AVSEModel, save_model
    from avse.models.activity import frame_log_power

    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32},
                      {"type": "cnn", "out_dim": 16},
                      {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 2,
                       "num_repeats": 1, "norm": "cln"}, fusion="concat",
                      activity_head={"hidden": 8})
    folder = save_model(model, str(tmp_path / "m"))

    def controlled(mix, est, feats, est_feats, visual):
        return torch.where(frame_log_power(mix, visual.shape[-1]) > -22.0, 8.0, -8.0)

    real = AVSEExtractor.from_hparams.__func__

    def from_hparams(cls, *args, **kwargs):
        ex = real(cls, *args, **kwargs)
        ex.model.activity_head.forward = controlled
        return ex

    monkeypatch.setattr(AVSEExtractor, "from_hparams", classmethod(from_hparams))
    t = np.arange(6 * 16000) / 16000
    loud = ((t >= 0.4) & (t < 2.0)) | ((t >= 3.2) & (t < 5.0))
    rng = np.random.default_rng(0)
    mix = np.clip(np.where(loud, 0.2, 0.02) * rng.standard_normal(len(t)), -0.95, 0.95)
    sf.write(tmp_path / "mix.wav", mix.astype(np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "out"
    assert main(["--model", folder, "--video", scene.path, "--mixture", str(tmp_path / "mix.wav"),
                 "--out_dir", str(out), "--gate", "--gate_db", "30", "--noprogressbar"]) == 0
    doc = json.loads((out / "faces.json").read_text())
    t0, t1 = doc["tracks"]
    assert t0["speaking_spans"] == [[0.4, 2.0], [3.2, 5.0]] and t0["speaking_seconds"] == 3.4
    assert t1["speaking_spans"] == [[3.2, 5.0]] and t1["speaking_seconds"] == 1.8
    on_screen = t1["frames"] / 25  # face 1 enters at 2.6 s: its fraction of its own time
    assert t1["speaking_fraction"] == pytest.approx(1.8 / on_screen, abs=1e-3)
    assert t0["speaking_fraction"] == pytest.approx(3.4 / (t0["frames"] / 25), abs=1e-3)
    assert doc["extraction"]["gate"]["on"] and doc["extraction"]["gate"]["attenuation_db"] == 30
    printed = capsys.readouterr().out
    assert "face 0: speaking 3.40 s" in printed and "face 1: speaking 1.80 s" in printed
    assert "3.20-5.00" in printed
    # gated: the silent stretch 2.3-3.0 s is ~30 dB further down than the mixture's -20 dB
    wav = sf.read(out / "face0.wav", dtype="float64")[0]
    quiet, speech = wav[round(2.3 * 16000): 3 * 16000], wav[round(3.4 * 16000): round(4.8 * 16000)]
    level = 20 * np.log10(np.std(quiet) / np.std(speech))
    assert level < -40.0, level
