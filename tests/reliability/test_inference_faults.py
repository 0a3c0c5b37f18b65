"""avse-extract on fuzzed inputs and under a kill: usable odd inputs (120 fps, 1 fps, 48 kHz
stereo, silence, clipping, a header that overstates its length) work; the others are refused
in one line on stderr naming the file, exit code 2, nothing written; a killed run leaves
nothing under the final name (only hidden temporaries, removed by the next run).

The entry point is called in-process (``main(argv)``); one subprocess run for the kill."""
import builtins
import contextlib
import io
import os
import signal
import struct

import av
import numpy as np
import pytest
import soundfile as sf

from avse.inference import main
from avse.video.scenes import FaceSpec, write_scene
from tests.conftest import run_cmd
from tests.model_helpers import tiny_model_folder

FACE = [FaceSpec(height=120, start_xy=(160, 120), end_xy=(164, 122))]


def _mp4(path, seconds=1.0, size=(96, 96), fps=25, codec="libx264", pix="yuv420p",
         audio=(16000, 1), opts=None):
    """A small mp4: noise frames (size (W, H)) at ``fps``; noise audio (rate, channels) or None."""
    rng = np.random.default_rng(0)
    w, h = size
    with av.open(str(path), "w", format="mp4", options=opts or {}) as out:
        vs = out.add_stream(codec, rate=fps,
                            options={"preset": "ultrafast"} if codec == "libx264" else {})
        vs.width, vs.height, vs.pix_fmt = w, h, pix
        if audio:
            aus = out.add_stream("aac", rate=audio[0], layout="stereo" if audio[1] == 2 else "mono")
        for k in range(max(int(round(seconds * fps)), 1)):
            frame = av.VideoFrame(w, h, pix)
            for plane in frame.planes:  # noise (a constant for big frames: fast to encode)
                plane.update(rng.integers(60, 200, plane.buffer_size, np.uint8).tobytes()
                             if w * h < 1e5 else bytes([128]) * plane.buffer_size)
            frame.pts = k
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if audio:
            rate, ch = audio
            wav = (0.1 * rng.standard_normal((ch, int(seconds * rate)))).astype(np.float32)
            for s in range(0, wav.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, s:s + 1024]),
                                                format="fltp", layout=aus.layout.name)
                af.sample_rate, af.pts = rate, s
                out.mux(aus.encode(af))
            out.mux(aus.encode())
    return str(path)


def _lie_about_duration(src, dst, factor):
    """Copy an mp4 with the durations of mvhd, tkhd and mdhd (not the samples) scaled."""
    data = bytearray(open(src, "rb").read())
    for box, offset in ((b"mvhd", 16), (b"tkhd", 20), (b"mdhd", 16)):
        at = data.find(box)
        while at >= 0:
            assert data[at + 4] == 0, "version-0 boxes only"
            pos = at + 4 + offset
            (value,) = struct.unpack(">I", data[pos:pos + 4])
            data[pos:pos + 4] = struct.pack(">I", max(1, min(int(value * factor), 2 ** 32 - 1)))
            at = data.find(box, at + 4)
    open(dst, "wb").write(bytes(data))
    return str(dst)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_folder(str(tmp_path_factory.mktemp("model") / "m"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Every fuzzed input: name -> path (and the mixtures)."""
    d = tmp_path_factory.mktemp("fuzz")
    m = {"random": d / "random.mp4", "empty": d / "empty.mp4", "loop": d / "loop.mp4"}
    m["random"].write_bytes(np.random.default_rng(1).bytes(6000))
    m["empty"].write_bytes(b"")
    os.symlink(d / "loop2.mp4", m["loop"])
    os.symlink(m["loop"], d / "loop2.mp4")
    m["ok"] = _mp4(d / "ok.mp4", 2.0)
    whole = open(m["ok"], "rb").read()
    (d / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # moov at the end: unreadable
    m["cut"] = d / "cut.mp4"
    fast = _mp4(d / "fast.mp4", 2.0, opts={"movflags": "faststart"})  # header first, data cut
    (d / "truncated.mp4").write_bytes(open(fast, "rb").read()[: len(whole) // 2])
    m["truncated"] = d / "truncated.mp4"
    m["understated"] = _lie_about_duration(m["ok"], d / "understated.mp4", 0.1)
    m["overstated"] = _lie_about_duration(m["ok"], d / "overstated.mp4", 10)
    m["no_video"] = d / "no_video.mp4"
    with av.open(str(m["no_video"]), "w", format="mp4") as out:
        aus = out.add_stream("aac", rate=16000, layout="mono")
        for s in range(0, 16000, 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                            layout="mono")
            af.sample_rate, af.pts = 16000, s
            out.mux(aus.encode(af))
        out.mux(aus.encode())
    m["no_audio"] = _mp4(d / "no_audio.mp4", 1.0, audio=None)
    m["one_pixel"] = _mp4(d / "one_pixel.mp4", 0.4, size=(1, 1), codec="mjpeg", pix="yuvj420p")
    m["fps120"] = _mp4(d / "fps120.mp4", 1.0, fps=120)
    m["fps1"] = _mp4(d / "fps1.mp4", 3.0, fps=1)
    m["stereo48k"] = _mp4(d / "stereo48k.mp4", 1.0, audio=(48000, 2))
    m["unreadable"] = d / "unreadable.mp4"  # its open() is patched to fail
    m["unreadable"].write_bytes(whole)
    m["short_mix"] = d / "short.wav"  # 20 ms: shorter than one video frame
    sf.write(m["short_mix"], np.full(320, 0.1, np.float32), 16000)
    m["silence"] = d / "silence.wav"
    sf.write(m["silence"], np.zeros(16000, np.float32), 16000)
    m["clipping"] = d / "clipping.wav"  # a square wave stuck at full scale
    t = np.arange(16000) / 16000
    sf.write(m["clipping"], np.sign(np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000,
             subtype="PCM_16")
    return {k: str(v) for k, v in m.items()}


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """One 6144x6144 mjpeg frame (38 Mpixel), no audio."""
    return _mp4(tmp_path_factory.mktemp("huge") / "huge.mp4", 0.04, size=(6144, 6144),
                codec="mjpeg", pix="yuvj420p", audio=None)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Videos with a face: 120 fps with 48 kHz stereo audio, and 1 fps."""
    d = tmp_path_factory.mktemp("scenes")
    write_scene(str(d / "scene.mp4"), FACE, 1.6, size=(240, 320), fps=120, audio_rate=48000,
                audio_channels=2)
    write_scene(str(d / "scene_1fps.mp4"), FACE, 3.0, size=(240, 320), fps=1)
    return {"scene": str(d / "scene.mp4"), "scene_1fps": str(d / "scene_1fps.mp4")}


def _run(argv, unreadable=None):
    """``main(argv)`` -> (exit code, stdout, stderr); ``unreadable``: a path whose open()
    raises PermissionError (tests run as root: permissions cannot make one)."""
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if unreadable and os.fspath(file) == unreadable:
            raise PermissionError(13, "Permission denied", file)
        return real_open(file, *args, **kwargs)

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        builtins.open = guarded
        try:
            code = main(argv + ["--noprogressbar"])
        except SystemExit as exit_:
            code = exit_.code
        finally:
            builtins.open = real_open
    return code, out.getvalue(), err.getvalue()


def _leftovers(folder):
    return sorted(p for p in os.listdir(folder) if p.startswith("."))


REFUSED = [  # (input, --mixture, what the line says)
    ("random", None, "not a media file FFmpeg can read"),
    ("empty", None, "empty file (0 bytes)"),
    ("cut", None, "not a media file FFmpeg can read"),
    ("truncated", None, "truncated"),
    ("understated", None, "lies about its duration"),
    ("no_video", None, "no video stream"),
    ("no_audio", None, "give the mixture with --mixture"),
    ("one_pixel", None, "too small to show a face"),
    ("huge_frame", "silence", "Mpixel"),
    ("unreadable", None, "permission denied"),
    ("loop", None, "loop of symbolic links"),
    ("ok", "short_mix", "shorter than one video frame"),
    ("ok", "random", "not a media file FFmpeg can read"),
]
USABLE = ["fps120", "fps1", "stereo48k", "overstated", ("no_audio", "silence"),
          ("ok", "silence"), ("ok", "clipping")]


def test_fuzzed_inputs_are_refused_in_one_line_exit_2_nothing_written(media, huge, model,
                                                                      tmp_path):
    """Each bad input through both paths (face tracking --out_dir, face-centred --out)."""
    media = {**media, "huge_frame": huge}
    runs = 0
    for name, mixture, says in REFUSED:
        video = media[name]
        blamed = media[mixture] if mixture in ("short_mix", "random") else video
        for mode in ("--out_dir", "--out"):
            target = tmp_path / f"{name}-{mixture}{'' if mode == '--out_dir' else '.wav'}"
            argv = ["--model", model, "--video", video, mode, str(target)]
            argv += ["--face_centred"] if mode == "--out" else []
            argv += ["--mixture", media[mixture]] if mixture else []
            code, _, err = _run(argv, unreadable=video if name == "unreadable" else None)
            lines = err.strip().splitlines()
            assert code == 2, (name, mode, err)
            assert len(lines) == 1 and lines[0].startswith("avse-extract: error: "), err
            assert blamed in lines[0] and says in lines[0], (name, mode, lines[0])
            assert not os.path.lexists(target), (name, mode)
            runs += 1
    assert _leftovers(tmp_path) == [] and runs == 2 * len(REFUSED)
    print(f"\nRELIABILITY avse-extract: {len(REFUSED)} bad inputs x 2 paths = {runs} runs, all "
          "exit 2 in one line naming the file, 0 outputs or temporaries left")


def test_odd_but_usable_inputs_work_face_centred(media, model, tmp_path):
    for item in USABLE:
        name, mixture = item if isinstance(item, tuple) else (item, None)
        target = tmp_path / f"{name}-{mixture}.wav"
        argv = ["--model", model, "--video", media[name], "--face_centred", "--out", str(target)]
        argv += ["--mixture", media[mixture]] if mixture else []
        code, out, err = _run(argv)
        assert code == 0, (name, err)
        wav, sr = sf.read(target, dtype="float32")
        ref = media[mixture] if mixture else media[name]
        n_in = len(sf.read(ref)[0]) if mixture else int(round(
            av.open(ref).streams.audio[0].duration * av.open(ref).streams.audio[0].time_base
            * 16000))
        assert sr == 16000 and wav.ndim == 1 and np.all(np.isfinite(wav)), name
        assert abs(len(wav) - n_in) <= 1024, (name, len(wav), n_in)  # the real length
        if mixture == "silence":
            assert not np.any(wav), name
        else:
            assert np.abs(wav).max() > 0, name
    assert _leftovers(tmp_path) == []


def test_odd_but_usable_inputs_work_with_face_tracking(media, scenes, model, tmp_path):
    """120 fps + 48 kHz stereo (every face out, mp4s muxed); 1 fps with a silent mixture."""
    media = {**media, **scenes}
    code, out, err = _run(["--model", model, "--video", media["scene"], "--out_dir",
                           str(tmp_path / "all")])
    assert code == 0, err
    names = sorted(os.listdir(tmp_path / "all"))
    assert names == ["face0.mp4", "face0.wav", "faces.json", "faces.png"]
    wav, sr = sf.read(tmp_path / "all" / "face0.wav")
    assert sr == 16000 and abs(len(wav) - 1.6 * 16000) <= 1024 and np.all(np.isfinite(wav))
    # 1 fps with a silent mixture: silence out, as long as the mixture
    target = tmp_path / "one.wav"
    code, out, err = _run(["--model", model, "--video", media["scene_1fps"], "--mixture",
                           media["silence"], "--out", str(target)])
    assert code == 0, err
    wav = sf.read(target)[0]
    assert len(wav) == 16000 and not np.any(wav)
    assert _leftovers(tmp_path) == []


def test_a_failed_or_killed_extraction_leaves_nothing_under_the_final_name(media, scenes, model,
                                                                          tmp_path, monkeypatch):
    import avse.faults
    import avse.safe_io

    media = {**media, **scenes}
    out = tmp_path / "t.wav"
    argv = ["--model", model, "--video", media["ok"], "--face_centred", "--out", str(out)]
    # an error at the last moment (the output written under its temporary name): nothing left
    monkeypatch.setenv("AVSE_FAULTS", "extract_write=1:raise")
    avse.faults.reset()
    code, _, err = _run(argv)
    assert code == 2 and "injected fault at extract_write" in err
    assert os.listdir(tmp_path) == []
    monkeypatch.delenv("AVSE_FAULTS")
    # kill -9 there (a subprocess): no output under the final name, only a hidden temporary
    folder = tmp_path / "faces"
    kill = ["--model", model, "--video", media["scene"], "--out_dir", str(folder),
            "--noprogressbar"]
    monkeypatch.setenv("AVSE_FAULTS", "extract_write=1:kill")
    work_root = tmp_path.parent / f"{tmp_path.name}-work"
    work_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(work_root))  # where its working folder goes
    proc = run_cmd(["python", "-m", "avse.inference"] + kill, check=False)
    monkeypatch.delenv("AVSE_FAULTS")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not folder.exists()
    stale = [p for p in os.listdir(work_root) if p.startswith("avse-extract-")]
    assert len(stale) == 1  # the killed run's working folder: the next one removes it
    fresh = avse.safe_io.work_folder(str(work_root))
    assert [p for p in os.listdir(work_root) if p.startswith("avse-extract-")] == [
        os.path.basename(fresh)]
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(".faces.tmp-"), left
    assert {"face0.wav", "face0.mp4", "faces.json"} <= set(os.listdir(tmp_path / left[0]))
    # the next run writing there removes the stale temporary (its process is gone)
    code, _, _ = _run(argv)
    assert code == 0 and sf.info(out).frames > 0 and _leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["t.wav"]
