"""avse.video.scenes: photo-based talking-face scenes, decoded back and checked against their truth."""
import av
import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN

from avse.data.align import SAMPLES_PER_FRAME
from avse.video.media import resample
from avse.video.scenes import FaceSpec, two_face_scene, write_scene

LATE, CLICK = 1.5, 0.9
FIRST1 = 38  # the first 25 fps grid frame at or after LATE (frame k shows k / 25 s)


def _decode(path, rate=16000):
    """All video frames (rgb [T, H, W, 3]), the stream, the mono audio resampled to ``rate``."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        fps, n_meta = vs.average_rate, vs.frames
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        a_rate = c.streams.audio[0].rate
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    return frames, fps, n_meta, resample(audio.mean(0).astype(np.float32), a_rate, rate), audio.shape[0], a_rate


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "two.mp4"
    truth = two_face_scene(path, duration_s=3.0, size=(360, 640), seed=0, late_start=LATE, click_at=CLICK)
    return truth, _decode(path)


@pytest.fixture(scope="module")
def mtcnn():
    torch.set_num_threads(1)
    return MTCNN(keep_all=True, device="cpu")


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_decoded_stream_matches_truth(scene):
    truth, (frames, fps, n_meta, audio, channels, _) = scene
    assert frames.shape == (75, 360, 640, 3) and n_meta == 75 and fps == 25
    assert truth.n_frames == 75 and truth.duration == pytest.approx(3.0) and truth.size == (360, 640)
    assert truth.mixture.shape == (48000,) and truth.sources.shape == (2, 48000) and channels == 1
    assert len(audio) == 47 * 1024  # the soundtrack zero-padded to whole AAC frames
    assert np.corrcoef(audio[:48000], truth.mixture)[0, 1] > 0.95
    assert np.max(np.abs(truth.mixture)) == pytest.approx(0.9, abs=1e-6)
    # spans on the 25 fps grid; face 1's speech is zero before it appears, and both faces speak
    assert truth.spans[0][:2] == (0, 74) and truth.spans[1][:3] == (FIRST1, 74, LATE)
    assert [len(b) for b in truth.boxes] == [75, 75 - FIRST1]
    assert not np.any(truth.sources[1, : int(LATE * 16000)])
    assert np.abs(truth.sources[1, int(LATE * 16000):]).max() > 0.1 and np.abs(truth.sources[0]).max() > 0.1
    click = np.zeros(48000, np.float32)
    click[int(round(truth.click_time * 16000)):] = 1
    residual = truth.mixture - truth.sources.sum(0)
    assert np.allclose(residual * (1 - click), 0, atol=1e-6) and np.abs(residual).max() > 0.3


def test_mtcnn_finds_the_faces_where_the_truth_says(scene, mtcnn):
    truth, (frames, *_) = scene
    before, after = FIRST1 - 10, FIRST1 + 20
    boxes, _ = mtcnn.detect(frames[before])
    assert boxes is not None and len(boxes) == 1
    assert _iou(np.asarray(boxes[0], float), truth.boxes[0][before]) > 0.6
    boxes, _ = mtcnn.detect(frames[after])
    assert boxes is not None and len(boxes) == 2
    boxes = sorted(np.asarray(boxes, float).tolist())  # left face first
    assert _iou(boxes[0], truth.boxes[0][after]) > 0.6
    assert _iou(boxes[1], truth.boxes[1][after - truth.spans[1][0]]) > 0.6
    assert truth.box_at(1, after / 25) == pytest.approx(tuple(truth.boxes[1][after - truth.spans[1][0]]))
    assert truth.box_at(1, 0.5) is None


def test_mouths_move_with_their_voice(scene):
    truth, (frames, *_) = scene
    gray = frames.astype(np.float32).mean(-1)

    def mouth_and_voice(face, voice):
        """Per on-screen grid frame: darkness of the mouth region, RMS of ``voice``'s source."""
        first, last = truth.spans[face][:2]
        lms = truth.landmarks[face]
        dark, env = [], []
        for k in range(first, last + 1):
            (x0, y0), (x1, y1) = lms[k - first, 3], lms[k - first, 4]
            cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0)
            region = gray[k, int(cy - 0.35 * w):int(cy + 0.35 * w), int(cx - 0.5 * w):int(cx + 0.5 * w)]
            dark.append(255 - region.mean())
            seg = truth.sources[voice, k * SAMPLES_PER_FRAME:(k + 1) * SAMPLES_PER_FRAME]
            env.append(np.sqrt(np.mean(seg**2)))
        return np.array(dark), np.array(env)

    for face in (0, 1):
        dark, env = mouth_and_voice(face, face)
        assert np.corrcoef(dark, env)[0, 1] > 0.5, face
        loud, silent = env > np.percentile(env, 80), env < 1e-3
        assert silent.sum() >= 3 and dark[loud].mean() > dark[silent].mean() + 10, face
    dark, env = mouth_and_voice(1, 0)  # face 1's mouth does not follow face 0's voice
    assert abs(np.corrcoef(dark, env)[0, 1]) < 0.3


def test_click_flash_on_its_frame(scene):
    truth, (frames, *_) = scene
    k = int(CLICK * 25)
    assert truth.click_time == pytest.approx(k / 25)
    corner = frames[:, :20, :20].mean(axis=(1, 2, 3))
    assert corner[k] > 235 and np.all(np.delete(corner, k) < 200)
    assert np.argmax(np.abs(truth.mixture)) // SAMPLES_PER_FRAME == k


def test_fps30_stereo_and_no_face(tmp_path):
    spec = FaceSpec(height=100, start_xy=(160, 120), end_xy=(170, 120))
    truth = write_scene(tmp_path / "a.mp4", [spec], 1.0, size=(240, 320), fps=30, audio_rate=48000,
                        audio_channels=2)
    frames, fps, n_meta, audio, channels, a_rate = _decode(truth.path)
    assert len(frames) == 30 and fps == 30 and truth.fps == 30 and truth.n_frames == 30
    assert channels == 2 and a_rate == 48000 and abs(len(audio) - 16000) < 1024 * 16000 / 48000 + 1
    empty = write_scene(tmp_path / "b.mp4", [], 0.4, size=(120, 160))
    assert empty.sources.shape == (0, 6400) and not np.any(empty.mixture)
    assert len(_decode(empty.path)[0]) == 10
    with pytest.raises(ValueError, match="even"):
        write_scene(tmp_path / "c.mp4", [], 0.4, size=(121, 160))


def test_rotation_displays_upright(tmp_path):
    spec = FaceSpec(height=100, start_xy=(160, 110), end_xy=(160, 110), speaks=False)
    upright = write_scene(tmp_path / "u.mp4", [spec], 0.2, size=(240, 320))
    turned = write_scene(tmp_path / "r.mp4", [spec], 0.2, size=(240, 320), rotation=90)
    assert turned.size == (240, 320) and turned.rotation == 90
    with av.open(turned.path) as c:
        frame = next(c.decode(video=0))
        stored, degrees = frame.to_ndarray(format="rgb24"), frame.rotation
    assert stored.shape == (320, 240, 3) and degrees == 90
    ref = _decode(upright.path)[0][0].astype(float)
    assert np.abs(np.rot90(stored, k=degrees // 90) - ref).mean() < 3.0
