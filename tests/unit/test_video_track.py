"""Face tracking on synthetic detections (no detector) and shot-cut detection on real photos."""
import numpy as np
import pytest
from skimage import data as skimage_data
from skimage.color import rgb2gray
from skimage.transform import resize

from avse.video.detect import Detections, appearance
from avse.video.track import (
    CUT_THRESHOLD,
    cut_score,
    is_shot_cut,
    thumbnail,
    track_faces,
)

FACE_BOX = np.array([181, 62, 268, 172], np.float32)  # astronaut()


def _landmarks(box):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])
    return np.stack([x0 + rel[:, 0] * w, y0 + rel[:, 1] * h], 1)


def _det(boxes, feats=None) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    lms = np.stack([_landmarks(b) for b in boxes]).astype(np.float32) if len(boxes) \
        else np.zeros((0, 5, 2), np.float32)
    f = None if feats is None else np.asarray(feats, np.float32).reshape(len(boxes), -1) \
        if len(boxes) else np.zeros((0, 125), np.float32)
    return Detections(boxes, np.full(len(boxes), 0.99, np.float32), lms, f)


def _box(cx, cy=200.0, side=80.0):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def _faces(frames, *faces, feats=None):
    """``{k: Detections}``; each face is a function k -> box or None (not visible)."""
    out = {}
    for k in frames:
        boxes, fs = [], []
        for i, face in enumerate(faces):
            b = face(k)
            if b is not None:
                boxes.append(b)
                fs.append(feats[i](k) if feats else None)
        out[k] = _det(boxes, fs if feats else None)
    return out


def test_two_faces_moving_apart_give_two_tracks_left_to_right():
    right = lambda k: _box(600 + 3 * k)
    left = lambda k: _box(400 - 3 * k)
    tracks = track_faces(_faces(range(0, 100, 5), right, left), n_frames=100)
    assert [t.id for t in tracks] == [0, 1]
    a, b = tracks
    assert a.mean_cx < b.mean_cx and a.mean_cx < 400 < 600 < b.mean_cx
    # both seen up to frame 95, the last look: extended to the end of the video
    assert a.segments == [(0, 99)] == b.segments and len(a) == 100
    assert a.observed.sum() == 20 and np.isnan(a.scores[~a.observed]).all()
    np.testing.assert_allclose(a.box_at(52), _box(400 - 3 * 52), atol=1e-3)  # uniform motion
    np.testing.assert_allclose(b.box_at(52), _box(600 + 3 * 52), atol=1e-3)
    assert a.n_interpolated == 0 and b.landmarks_at(52).shape == (5, 2)


def test_missed_detection_is_interpolated_linearly():
    face = lambda k: None if k == 20 else _box(200 + 2 * k, 150 + k)
    dets = _faces(range(0, 100, 5), face)
    del dets[40]  # not examined: a normal hole, not a miss
    (t,) = track_faces(dets, n_frames=100)
    assert t.n_interpolated == 9  # frames 16..24: the face was missed on frame 20
    assert not t.observed[20] and t.observed[15] and t.observed[25] and not t.observed[40]
    truth = np.array([_box(200 + 2 * k, 150 + k) for k in range(15, 26)])
    np.testing.assert_allclose(t.boxes[15:26], truth, atol=1e-3)
    np.testing.assert_allclose(t.landmarks[20], _landmarks(truth[5]), atol=1e-3)


@pytest.mark.parametrize("misses, n_tracks", [((55, 60), 1), ((55, 60, 65), 2)])
def test_gap_longer_than_max_gap_splits(misses, n_tracks):
    face = lambda k: None if k in misses else _box(300)
    same = [lambda k: appearance(skimage_data.astronaut(), FACE_BOX)]  # same look: no merge
    dets = _faces(range(0, 150, 5), face, feats=same)
    tracks = track_faces(dets, n_frames=150)  # max_gap_s 0.6 s = 15 frames
    assert len(tracks) == n_tracks
    if n_tracks == 1:
        assert tracks[0].segments == [(0, 149)] and tracks[0].n_interpolated == 14
    else:  # a split inside one shot is never merged back
        assert sorted(t.segments[0] for t in tracks) == [(0, 50), (70, 149)]


def test_short_track_is_dropped_and_reported():
    stays = lambda k: _box(200)
    passes = lambda k: _box(700) if 50 <= k <= 60 else None  # 11 frames = 0.44 s
    dropped = []
    tracks = track_faces(_faces(range(0, 150, 5), stays, passes), n_frames=150, dropped=dropped)
    assert len(tracks) == 1 and tracks[0].segments == [(0, 149)]
    assert len(dropped) == 1 and (dropped[0].first, dropped[0].last) == (50, 60)
    assert len(track_faces(_faces(range(0, 150, 5), stays, passes), 150, min_track_s=0.4)) == 2


@pytest.fixture(scope="module")
def looks():
    """Appearance descriptors of real faces: the astronaut, the same face brighter and
    smaller (another shot), and the face recoloured to two other colourings."""
    a = skimage_data.astronaut()
    small = (resize(a, (256, 256), anti_aliasing=True) * 255).round().astype(np.uint8)
    brighter = np.clip(small.astype(int) + 25, 0, 255).astype(np.uint8)
    other = (a * np.array([0.55, 0.42, 0.35])).astype(np.uint8)
    bluish = (a * np.array([0.8, 0.9, 1.0])).astype(np.uint8)
    rng = np.random.default_rng(0)
    box = lambda j: FACE_BOX + rng.uniform(-6, 6, 4)
    return {"a": lambda k: appearance(a, box(k)),
            "a_other_shot": lambda k: appearance(brighter, box(k) / 2),
            "b": lambda k: appearance(other, box(k)),
            "c": lambda k: appearance(bluish, box(k))}


def test_cut_ends_tracks_and_same_look_is_merged(looks):
    cut = 75
    # shot 1: A left, B right; shot 2: A right (where B was), B absent, C left (where A was)
    a = lambda k: _box(150) if k < cut else _box(620)
    b = lambda k: _box(620) if k < cut else None
    c = lambda k: None if k < cut else _box(150)
    feats = [lambda k: looks["a"](k) if k < cut else looks["a_other_shot"](k),
             looks["b"], looks["c"]]
    frames = sorted(set(range(0, 150, 5)) | {cut})
    dets = _faces(frames, a, b, c, feats=feats)

    unmerged = track_faces(dets, n_frames=150, cuts=[cut], merge=False)
    assert sorted(t.segments[0] for t in unmerged) == [(0, 74), (0, 74), (75, 149), (75, 149)]
    for t in unmerged:  # nothing crosses the cut, boxes never jump
        assert len(t.segments) == 1 and not t.first < cut <= t.last
        assert np.ptp(t.boxes[:, 0]) < 1

    tracks = track_faces(dets, n_frames=150, cuts=[cut])
    by_segments = {tuple(t.segments): t for t in tracks}
    assert set(by_segments) == {((0, 74), (75, 149)), ((0, 74),), ((75, 149),)}
    merged = by_segments[((0, 74), (75, 149))]
    assert merged.box_at(74)[0] < 200 < 560 < merged.box_at(75)[0]  # A: left, then right
    assert len(merged) == 150 and merged.observed.sum() == 30
    assert by_segments[((0, 74),)].box_at(10)[0] > 560  # B and C: different looks, not joined
    assert by_segments[((75, 149),)].box_at(80)[0] < 200
    # a different look is never merged, even when it is the only candidate
    only_b_and_a = track_faces(_faces(frames, b, lambda k: None if k < cut else _box(150),
                                      feats=[looks["b"], looks["a_other_shot"]]),
                               n_frames=150, cuts=[cut])
    assert len(only_b_and_a) == 2
    assert len(track_faces(dets, 150, cuts=[cut], merge_threshold=0.999)) == 4


def test_track_ending_at_a_cut_fills_its_shot():
    face = lambda k: _box(300) if k < 77 else None
    frames = sorted(set(range(0, 150, 5)) | {77})
    (t,) = track_faces(_faces(frames, face), n_frames=150, cuts=[77])
    assert t.segments == [(0, 76)]  # last look at 75, the shot ends at 76
    face = lambda k: _box(300) if k <= 60 else None  # gone at the look on 65
    (t,) = track_faces(_faces(range(0, 150, 5), face), n_frames=150)
    assert t.segments == [(0, 60)]


def test_smoothing_reduces_jitter():
    rng = np.random.default_rng(0)
    jitter = {k: rng.normal(0, 3, 2) for k in range(0, 250, 5)}
    face = lambda k: _box(400 + jitter[k][0], 200 + jitter[k][1])
    dets = _faces(range(0, 250, 5), face)
    raw, = track_faces(dets, n_frames=250, smooth_s=0)
    smooth, = track_faces(dets, n_frames=250)
    centre = lambda t: (t.boxes[:, 0] + t.boxes[:, 2]) / 2
    assert np.std(np.diff(centre(smooth))) < 0.35 * np.std(np.diff(centre(raw)))
    assert abs(centre(smooth).mean() - 400) < 1
    assert np.std(centre(smooth)) < 0.8 * np.std(centre(raw))  # 0.5 s: ~3 detections


def test_late_face_starts_at_its_first_detection():
    early = lambda k: _box(200)
    late = lambda k: _box(700) if k >= 37 else None  # appears at 37, first seen at 40
    tracks = track_faces(_faces(range(0, 150, 5), early, late), n_frames=150)
    assert [(t.first, t.last) for t in tracks] == [(0, 149), (40, 149)]
    assert tracks[1].observed[0] and tracks[1].box_at(39) is None


def test_bad_arguments_name_the_field():
    dets = _faces(range(0, 50, 5), lambda k: _box(200))
    with pytest.raises(ValueError, match="max_gap_s"):
        track_faces(dets, n_frames=50, max_gap_s=0.1)
    with pytest.raises(ValueError, match="n_frames"):
        track_faces(dets, n_frames=30)
    assert track_faces({}, n_frames=0) == []


# ---- shot cuts on real photographs -------------------------------------------------------

H, W = 288, 512


def _gray(rgb):
    g = rgb2gray(rgb)
    return (resize(g, (H, W), anti_aliasing=True) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def scene():
    """The astronaut's photo as a 288 x 512 grey frame (rows 20..307; face at y 42..152)."""
    g = (rgb2gray(skimage_data.astronaut()) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(g[20:20 + H])


@pytest.mark.parametrize("other", ["coffee", "chelsea", "rocket", "camera"])
def test_hard_cut_to_another_scene(scene, other):
    img = getattr(skimage_data, other)()
    cur = _gray(img) if img.ndim == 3 else (resize(img, (H, W)) * 255).astype(np.uint8)
    assert is_shot_cut(thumbnail(scene), thumbnail(cur))
    assert is_shot_cut(thumbnail(cur), thumbnail(scene))


def _moved_face(g, dx, dy):
    out = g.copy()
    out[40 + dy:160 + dy, 170 + dx:280 + dx] = g[40:160, 170:280]
    return out


def test_same_scene_changes_are_not_cuts(scene):
    rng = np.random.default_rng(0)
    mouth = scene.copy()
    mouth[115:130, 200:245] = 20  # the mouth opens: a dark hole
    same = {
        "face moved 20 px": _moved_face(scene, 20, 10),
        "noise sigma 10": np.clip(scene + rng.normal(0, 10, scene.shape), 0, 255).astype(np.uint8),
        "mouth opening": mouth,
        "flicker -4": np.clip(scene.astype(int) - 4, 0, 255).astype(np.uint8),
        "flicker +8": np.clip(scene.astype(int) + 8, 0, 255).astype(np.uint8),
        "contrast x1.1": np.clip(scene * 1.1, 0, 255).astype(np.uint8),
    }
    t0 = thumbnail(scene)
    scores = {name: cut_score(t0, thumbnail(g)) for name, g in same.items()}
    assert max(scores.values()) < CUT_THRESHOLD / 5, scores
    assert not any(is_shot_cut(t0, thumbnail(g)) for g in same.values())


def test_another_view_of_the_same_photo_is_a_cut(scene):
    full = (rgb2gray(skimage_data.astronaut()) * 255).round().astype(np.uint8)
    assert is_shot_cut(thumbnail(scene), thumbnail(np.ascontiguousarray(full[224:])))


def test_black_frames_and_thumbnail_shape(scene):
    black = np.zeros((H, W), np.uint8)
    assert not is_shot_cut(thumbnail(black), thumbnail(black + 1))  # black stays black
    assert is_shot_cut(thumbnail(black), thumbnail(scene))  # black -> a scene: a cut
    t = thumbnail(scene)
    assert t.shape == (18, 32) and t.dtype == np.float32
    assert abs(t.mean() - scene.mean()) < 1
    assert thumbnail(np.full((9, 16), 5, np.uint8)).shape == (18, 32)  # tiny frames work
    with pytest.raises(ValueError, match="grey"):
        thumbnail(np.zeros((H, W, 3), np.uint8))
