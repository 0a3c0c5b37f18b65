"""MTCNN face detection on a real photograph: boxes and landmarks in source pixels, batches
with different numbers of faces per image (the ragged case), empty images, clear errors."""
import sys

import numpy as np
import pytest
import torch

from skimage import data as skimage_data
from skimage.transform import resize

from avse.video.detect import HIST_BINS, Detections, FaceDetector, appearance

FACE_BOX = np.array([181, 62, 268, 172], np.float32)  # astronaut(), as MTCNN finds it
LEFT_EYE, RIGHT_EYE = (205, 101), (247, 103)
MOUTH_LEFT, MOUTH_RIGHT = (202, 139), (245, 142)
D = HIST_BINS ** 3


@pytest.fixture(scope="module")
def detector():
    torch.set_num_threads(1)
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


def _resized(img, shape) -> np.ndarray:
    return (resize(img, shape, anti_aliasing=True) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def no_face():
    """A 512 x 512 photo of a coffee cup: no face."""
    return _resized(skimage_data.coffee(), (512, 512))


def test_astronaut_has_one_face_at_the_known_box(detector, astronaut):
    (d,) = detector.detect([astronaut])
    assert len(d) == 1 and d.scores[0] > 0.99
    assert d.boxes.dtype == np.float32 and d.landmarks.shape == (1, 5, 2)
    np.testing.assert_allclose(d.boxes[0], FACE_BOX, atol=4)
    lm = d.landmarks[0]
    for got, want in zip(lm[[0, 1, 3, 4]], (LEFT_EYE, RIGHT_EYE, MOUTH_LEFT, MOUTH_RIGHT)):
        np.testing.assert_allclose(got, want, atol=4)
    x0, y0, x1, y1 = d.boxes[0]  # the nose lies inside the box, between the eyes and mouth
    assert x0 < lm[2, 0] < x1 and lm[0, 1] < lm[2, 1] < lm[3, 1]
    assert d.features.shape == (1, D)
    assert abs(np.linalg.norm(d.features[0]) - 1) < 1e-5


def test_flipped_photo_mirrors_box_and_keeps_image_left_first(detector, astronaut):
    (d,) = detector.detect([np.ascontiguousarray(astronaut[:, ::-1])])
    assert len(d) == 1
    x0, y0, x1, y1 = FACE_BOX
    np.testing.assert_allclose(d.boxes[0], [512 - x1, y0, 512 - x0, y1], atol=5)
    lm = d.landmarks[0]
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left eye / mouth corner first
    # mirrored: the image-left mouth corner is the original image-right one
    np.testing.assert_allclose(lm[3], [512 - MOUTH_RIGHT[0], MOUTH_RIGHT[1]], atol=5)
    np.testing.assert_allclose(lm[4], [512 - MOUTH_LEFT[0], MOUTH_LEFT[1]], atol=5)


@pytest.mark.parametrize("scale", [0.5, 0.35])  # 1280 -> 640 and 1920 -> 640
def test_downscaled_image_gives_source_pixels(detector, astronaut, scale):
    side = int(round(512 * scale))
    (d,) = detector.detect([_resized(astronaut, (side, side))], scales=[side / 512])
    assert len(d) == 1
    np.testing.assert_allclose(d.boxes[0], FACE_BOX, atol=2 / scale)  # 2 image pixels
    np.testing.assert_allclose(d.landmarks[0, 3], MOUTH_LEFT, atol=2 / scale)
    assert d.features.shape == (1, D)


def _two_panel(left, right):
    return np.ascontiguousarray(np.concatenate([left, right], axis=1))


def test_batch_with_two_one_and_zero_faces(detector, astronaut, no_face, monkeypatch):
    """The ragged case: same-size frames holding 2, 1 and 0 faces go through one batch
    (MTCNN returns None for the empty frame and arrays of different lengths otherwise)."""
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    frames = [_two_panel(astronaut, flipped), _two_panel(astronaut, no_face),
              _two_panel(no_face, no_face)]
    calls = []
    real_detect = detector.mtcnn.detect
    monkeypatch.setattr(detector.mtcnn, "detect",
                        lambda imgs, **kw: calls.append(len(imgs)) or real_detect(imgs, **kw))
    batch = detector.detect(frames, scales=[1.0] * 3)
    assert calls == [3]  # one batched MTCNN call, no per-image fallback
    assert [len(d) for d in batch] == [2, 1, 0]
    assert batch[2].boxes.shape == (0, 4) and batch[2].features.shape == (0, D)
    left, right = sorted(batch[0].boxes, key=lambda b: b[0])
    np.testing.assert_allclose(left, FACE_BOX, atol=5)
    np.testing.assert_allclose(right, [1024 - FACE_BOX[2], FACE_BOX[1], 1024 - FACE_BOX[0],
                                       FACE_BOX[3]], atol=5)
    np.testing.assert_allclose(batch[1].boxes[0], FACE_BOX, atol=5)
    # the same counts in another order, and the all-equal case (MTCNN: an object array)
    assert [len(d) for d in detector.detect(frames[::-1])] == [0, 1, 2]
    assert [len(d) for d in detector.detect([frames[1], frames[1]])] == [1, 1]


def test_upstream_batched_forward_breaks_on_a_face_and_an_empty_frame(astronaut, no_face):
    """Why we call MTCNN.detect and convert each image ourselves: MTCNN.__call__
    (select_boxes) raises on exactly this batch with numpy >= 1.24. If this test fails,
    facenet-pytorch fixed it: update the note at the top of avse/video/detect.py."""
    from facenet_pytorch import MTCNN

    with pytest.raises(ValueError, match="inhomogeneous"):
        MTCNN()([_two_panel(astronaut, no_face), _two_panel(no_face, no_face)])


def test_a_batch_that_raises_is_run_again_per_image(detector, astronaut, no_face, monkeypatch):
    real_detect = detector.mtcnn.detect
    sizes = []

    def ragged_failure(imgs, **kw):
        sizes.append(len(imgs))
        if len(imgs) > 1:
            raise ValueError("setting an array element with a sequence (inhomogeneous shape)")
        return real_detect(imgs, **kw)

    monkeypatch.setattr(detector.mtcnn, "detect", ragged_failure)
    out = detector.detect([astronaut, no_face])
    assert sizes == [2, 1, 1] and [len(d) for d in out] == [1, 0]


def test_images_of_different_shapes_are_grouped(detector, astronaut, no_face):
    small = _resized(astronaut, (256, 256))
    out = detector.detect([astronaut, small, no_face], scales=[1.0, 0.5, 1.0])
    assert [len(d) for d in out] == [1, 1, 0]
    np.testing.assert_allclose(out[1].boxes[0], out[0].boxes[0], atol=6)


def test_no_face_gives_empty(detector, no_face):
    (d,) = detector.detect([no_face], with_features=False)
    assert len(d) == 0 and d.features is None
    assert d.boxes.shape == (0, 4) and d.scores.shape == (0,) and d.landmarks.shape == (0, 5, 2)
    e = Detections.empty()
    assert len(e) == 0 and e.features is None


def test_bad_inputs_name_the_field(detector, astronaut):
    with pytest.raises(ValueError, match="scales"):
        detector.detect([astronaut], scales=[1.0, 0.5])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        detector.detect([astronaut[..., 0]])
    with pytest.raises(ValueError, match="landmarks"):
        Detections(np.zeros((2, 4)), np.zeros(2), np.zeros((1, 5, 2)))


def test_missing_facenet_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(ImportError, match=r"pip install facenet-pytorch==2\.5\.3"):
        FaceDetector()


def test_appearance_ignores_brightness_but_not_skin_tone(astronaut):
    f = appearance(astronaut, FACE_BOX)
    brighter = np.clip(astronaut.astype(int) + 30, 0, 255).astype(np.uint8)
    other_tone = (astronaut * np.array([0.55, 0.42, 0.35])).astype(np.uint8)
    assert f @ appearance(brighter, FACE_BOX) > 0.95
    assert f @ appearance(other_tone, FACE_BOX) < 0.7
    assert f @ appearance(astronaut, FACE_BOX + np.array([8, -8, 8, -8])) > 0.9
    assert not appearance(astronaut, np.array([600, 600, 700, 700])).any()  # outside: zeros
