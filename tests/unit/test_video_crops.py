"""avse.video.crops: the VoxCeleb2 face framing, face cuts, mouth presets and landmark alignment."""
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter

from avse.video.crops import (CROP_PRESETS, FACE_SIZE, PRESET_SIZES, REFERENCE_FACE, align_mouth, align_mouths,
                              crop_faces, cut_face, face_window, mouth_template, similarity_transform,
                              to_face_coords)

# MTCNN (facenet-pytorch 2.5.3) on skimage.data.astronaut(): left eye, right eye, nose, mouth corners
ASTRONAUT_LANDMARKS = np.array([[205.01, 101.73], [246.76, 103.71], [224.67, 128.96],
                                [201.72, 139.25], [245.27, 141.86]])


@pytest.fixture(scope="module")
def astronaut_gray():
    return np.asarray(Image.fromarray(skimage.data.astronaut()).convert("L"))


def _affine_warp(gray, mat):
    """Warp a whole frame by the forward 2x3 ``mat`` (source -> output), same size."""
    inv = np.linalg.inv(mat[:, :2])
    t = -inv @ mat[:, 2]
    coeffs = (inv[0, 0], inv[0, 1], t[0], inv[1, 0], inv[1, 1], t[1])
    return np.asarray(Image.fromarray(gray).transform(gray.shape[::-1], Image.AFFINE, coeffs, Image.BILINEAR))


def test_face_window_framing_rule():
    cs = 0.4
    boxes = np.array([[100.0, 50.0, 180.0, 170.0], [10.0, 20.0, 70.0, 60.0]])  # tall, then wide
    for box, win in zip(boxes, face_window(boxes)):
        x0, y0, x1, y1 = box
        bs, mx, my = max(x1 - x0, y1 - y0) / 2, (x0 + x1) / 2, (y0 + y1) / 2
        top, bottom = my - bs, my + bs * (1 + 2 * cs)
        left, right = mx - bs * (1 + cs), mx + bs * (1 + cs)
        cx, cy, side = win
        assert np.allclose([cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2], [left, right, top, bottom])
        assert side == pytest.approx(1.4 * max(x1 - x0, y1 - y0))
    # vectorised over leading dims, box_scale scales the half-size
    assert face_window(boxes[None, None]).shape == (1, 1, 2, 3)
    assert face_window(boxes[0], box_scale=1.2)[2] == pytest.approx(1.2 * face_window(boxes[0])[2])
    with pytest.raises(ValueError, match="box"):
        face_window([1.0, 2.0, 3.0])


def test_cut_face_inside_equals_crop_and_resize():
    gray = np.random.default_rng(0).integers(0, 256, (300, 400), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(gray).filter(ImageFilter.GaussianBlur(2)))
    window = (200.0, 150.0, 140.0)  # integer corners: x 130..270, y 80..220
    ref = np.asarray(Image.fromarray(gray[80:220, 130:270]).resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR))
    out = cut_face(gray, window)
    assert out.dtype == np.uint8 and out.shape == (FACE_SIZE, FACE_SIZE)
    assert np.array_equal(out, ref)
    # a half-pixel shift moves the content by half a source pixel (sub-pixel windows honoured)
    shifted = cut_face(gray, (200.5, 150.0, 140.0)).astype(float)
    assert 0 < np.abs(shifted - out).mean() < np.abs(np.roll(out, 2, axis=1).astype(float) - out).mean()


def test_cut_face_partly_and_wholly_outside_is_padded():
    gray = np.full((100, 120), 7, np.uint8)
    out = cut_face(gray, (0.0, 50.0, 100.0), size=100)  # left half of the window is outside
    assert np.all(out[:, :48] == 110) and np.all(out[:, 52:] == 7)
    out = cut_face(gray, (60.0, 100.0, 40.0), size=40, pad_value=0)  # bottom half outside
    assert np.all(out[:18] == 7) and np.all(out[22:] == 0)
    assert np.all(cut_face(gray, (-500.0, -500.0, 30.0)) == 110)  # wholly outside
    with pytest.raises(ValueError, match="side"):
        cut_face(gray, (10.0, 10.0, 0.0))
    with pytest.raises(ValueError, match="uint8"):
        cut_face(gray.astype(float), (10.0, 10.0, 5.0))


def test_to_face_coords_follows_the_cut():
    gray = np.zeros((200, 300), np.uint8)
    gray[118:123, 178:183] = 255  # a bright dot centred on (180.5, 120.5)
    window = (170.0, 110.0, 112.0)
    face = cut_face(gray, window)
    x, y = to_face_coords([180.5, 120.5], window)
    ys, xs = np.nonzero(face > 40)
    w = face[ys, xs].astype(float)
    # pixel (r, c) covers [c, c+1): its centre is c + 0.5
    assert np.average(xs + 0.5, weights=w) == pytest.approx(x, abs=0.3)
    assert np.average(ys + 0.5, weights=w) == pytest.approx(y, abs=0.3)


def test_crop_faces_presets():
    faces = np.random.default_rng(1).integers(0, 256, (3, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    for name in ("voxceleb2", "lrs3"):
        assert np.array_equal(crop_faces(faces, name), faces[:, 113:201, 68:156])
    small = np.stack([np.asarray(Image.fromarray(f).resize((160, 160), Image.BILINEAR)) for f in faces])
    assert np.array_equal(crop_faces(faces, "lrs2"), small[:, 71:159, 36:124])
    # lipread: the published region, rows/cols 56..167 of the 224x224 face frame
    assert np.array_equal(crop_faces(faces, "lipread"), faces[:, 56:168, 56:168])
    # a 160x160 frame is first upsampled to 224 (bilinear, half-pixel centres): a horizontal
    # ramp 0, 1.6, 3.2, ... keeps its slope 160/224 in the centre, rounded to uint8
    ramp = np.tile((np.arange(160) * 1.6).astype(np.uint8), (2, 160, 1))
    x = (np.arange(56, 168) + 0.5) * 160 / 224 - 0.5
    want = np.rint(np.interp(x, np.arange(160), ramp[0, 0].astype(float)))
    out = crop_faces(ramp, "lipread")
    assert out.shape == (2, 112, 112) and out.dtype == np.uint8
    assert np.array_equal(out[0, 0], want) and np.all(out == out[:, :1])
    lms = np.repeat(to_face_coords(REFERENCE_FACE * 1.5 + 30, (112.0, 112.0, 224.0))[None], 3, 0)
    for name in CROP_PRESETS:
        out = crop_faces(faces, name, landmarks=lms)
        assert out.shape == (3, PRESET_SIZES[name], PRESET_SIZES[name]) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="landmarks"):
        crop_faces(faces, "landmarks")
    with pytest.raises(ValueError, match="voxceleb2, lrs3, lrs2, lipread, landmarks"):
        crop_faces(faces, "lrs4")
    with pytest.raises(ValueError, match="faces"):
        crop_faces(faces[0], "lrs3")


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (5, 2))
    th, s, t = np.deg2rad(-23.0), 1.7, np.array([12.0, -40.0])
    mat = np.array([[s * np.cos(th), -s * np.sin(th), t[0]], [s * np.sin(th), s * np.cos(th), t[1]]])
    dst = src @ mat[:, :2].T + mat[:, 2]
    assert np.allclose(similarity_transform(src, dst), mat, atol=1e-9)
    # noisy correspondences: still close, and a mirrored target gives a rotation, never a reflection
    assert np.allclose(similarity_transform(src, dst + rng.normal(0, 0.05, dst.shape)), mat, atol=0.05)
    est = similarity_transform(src, dst * [-1, 1])
    assert np.linalg.det(est[:, :2]) > 0
    with pytest.raises(ValueError, match="distinct"):
        similarity_transform(np.ones((5, 2)), dst)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        similarity_transform(src, dst[:4])


def test_align_mouth_invariant_to_rotation_and_scale(astronaut_gray):
    th, s = np.deg2rad(15.0), 0.7
    rot = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    centre = np.array([256.0, 256.0])
    mat = np.concatenate([rot, (centre - rot @ centre + [20.0, -10.0])[:, None]], axis=1)
    warped = _affine_warp(astronaut_gray, mat)
    warped_lms = ASTRONAUT_LANDMARKS @ mat[:, :2].T + mat[:, 2]
    ref = align_mouth(astronaut_gray, ASTRONAUT_LANDMARKS).astype(float)
    out = align_mouth(warped, warped_lms).astype(float)
    wrong = align_mouth(warped, ASTRONAUT_LANDMARKS).astype(float)  # landmarks not transformed
    assert out.shape == (88, 88)
    assert np.abs(out - ref).mean() < 4.0
    assert np.abs(wrong - ref).mean() > 8 * np.abs(out - ref).mean()
    batched = align_mouths(np.stack([astronaut_gray, warped]), np.stack([ASTRONAUT_LANDMARKS, warped_lms]))
    assert np.array_equal(batched[0], ref.astype(np.uint8)) and np.array_equal(batched[1], out.astype(np.uint8))


def test_align_mouth_centres_the_mouth(astronaut_gray):
    # the similarity fitted to the template, shifted as align_mouth does, sends the mouth centre to the centre
    tmpl = mouth_template(96)
    corners = tmpl[3:5]
    assert np.allclose(corners.mean(0), [48.0, 48.0])
    assert np.linalg.norm(corners[1] - corners[0]) == pytest.approx(0.45 * 96)
    # the image: a dark dot drawn on the astronaut's mouth centre lands on the crop centre
    gray = astronaut_gray.copy()
    mx, my = ASTRONAUT_LANDMARKS[3:5].mean(0)
    gray[int(my) - 1:int(my) + 2, int(mx) - 1:int(mx) + 2] = 0
    marked = align_mouth(gray, ASTRONAUT_LANDMARKS).astype(float)
    diff = np.abs(marked - align_mouth(astronaut_gray, ASTRONAUT_LANDMARKS))
    ys, xs = np.nonzero(diff > 10)
    w = diff[ys, xs]
    dot = np.array([int(mx) + 0.5, int(my) + 0.5]) - [mx, my]  # the dot's centre relative to the mouth centre
    scale = np.sqrt(abs(np.linalg.det(similarity_transform(ASTRONAUT_LANDMARKS, tmpl)[:, :2])))
    expect = 44.0 + dot * scale  # crop centre (continuous coords) + the dot's offset, rotated by < 3 deg
    assert np.average(xs + 0.5, weights=w) == pytest.approx(expect[0], abs=0.6)
    assert np.average(ys + 0.5, weights=w) == pytest.approx(expect[1], abs=0.6)
    with pytest.raises(ValueError, match="landmarks"):
        align_mouth(gray, ASTRONAUT_LANDMARKS[:4])
