"""Shared fixtures: everything is generated inside the tests (PyAV writes mp4, numpy audio)."""
import os
import subprocess
import sys

# One thread per process: tests run tiny models, often several processes at once (torchrun),
# where OpenMP threads competing for 2 cores slow everything down by orders of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cmd(args, check=True, **kw):
    """Run a command with this interpreter's bin dir first on PATH; return CompletedProcess."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.run(args, cwd=kw.pop("cwd", REPO), env=env, capture_output=True, text=True,
                          **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_test_mp4(path, n_frames, fps=25, size=224, sr=16000, seed=0, with_audio=True):
    """Write a small mp4 whose frame k is uniformly gray (value 8k mod 256) at ``fps``."""
    import av

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "10"})
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        if with_audio:
            aus = out.add_stream("aac", rate=sr, layout="mono")
        for k in range(n_frames):
            img = np.full((size, size, 3), (8 * k) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = k
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if with_audio:
            wav = (0.3 * rng.standard_normal(int(n_frames / fps * sr))).astype(np.float32)
            for start in range(0, len(wav), 1024):
                af = av.AudioFrame.from_ndarray(wav[None, start:start + 1024], format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts = sr, start
                out.mux(aus.encode(af))
            out.mux(aus.encode())
    return path


@pytest.fixture(scope="session")
def tiny_vox_corpus(tmp_path_factory):
    """A tiny synthetic VoxCeleb2 tree (7 speakers x 3 clips, 3 in test) plus three bad clips:
    a corrupt file, a truncated mp4 and a 0.4 s clip."""
    from avse.data.synthetic import make_voxceleb2_corpus

    root = tmp_path_factory.mktemp("vox2") / "corpus"
    make_voxceleb2_corpus(root, n_speakers=7, n_clips=3, seed=11, test_fraction=0.45, nj=2,
                          progress=False)
    bad = {}
    corrupt = root / "dev" / "mp4" / "id09990" / "corruptVid01" / "00001.mp4"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    bad["id09990/corruptVid01/00001"] = corrupt
    good = sorted((root / "dev" / "mp4").rglob("*.mp4"))[0]
    trunc = root / "dev" / "mp4" / "id09991" / "truncateV01" / "00001.mp4"
    trunc.parent.mkdir(parents=True)
    data = good.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    bad["id09991/truncateV01/00001"] = trunc
    short = root / "dev" / "mp4" / "id09992" / "shortClip01" / "00001.mp4"
    write_test_mp4(short, n_frames=10)
    bad["id09992/shortClip01/00001"] = short
    return root, bad
