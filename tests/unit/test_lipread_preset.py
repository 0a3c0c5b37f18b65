"""avse.video.lipread: the published lip-reading preprocessing (OpenCV's gray, 224, central 112).

The bit-for-bit comparison with OpenCV itself is tests/integration/test_lipread_opencv.py.
"""
import av
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from avse.video.crops import PRESET_GRAY, crop_faces
from avse.video.faces import FaceScan, write_face_frames
from avse.video.frames import gray_frame, iter_video, probe, rgb_frame
from avse.video.lipread import (LIPREAD_SIZE, bgr2gray_cv, decode_lipread, linear_taps,
                                lipread_frames)
from avse.video.media import MediaError, set_display_rotation
from avse.video.track import Track


def _write_clip(path, frames, fps=25):
    """An H.264 yuv420p mp4 of RGB ``frames [T, H, W, 3]``."""
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.height, st.width = frames.shape[1:3]
        st.pix_fmt = "yuv420p"
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return str(path)


@pytest.fixture(scope="module")
def face_rgb():
    """8 frames of the astronaut's face (RGB 224x224), shifted a little per frame."""
    photo = Image.fromarray(skimage.data.astronaut())
    return np.stack([np.asarray(photo.resize((224, 224), Image.BILINEAR,
                                             box=(147 + 2 * k, 62, 301 + 2 * k, 216)))
                     for k in range(8)])


def test_bgr2gray_cv_arithmetic():
    # OpenCV 4.13's cvtColor(BGR2GRAY) of these colours (recorded): red, green, blue, skin
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 140, 200], [255, 255, 255]], np.uint8)
    assert bgr2gray_cv(rgb).tolist() == [76, 150, 29, 132, 255]
    # the weights sum to 1 exactly: gray stays gray
    v = np.arange(256, dtype=np.uint8)
    assert np.array_equal(bgr2gray_cv(np.stack([v, v, v], -1)), v)
    # within rounding of 0.299 R + 0.587 G + 0.114 B for any colour, shape kept
    x = np.random.default_rng(0).integers(0, 256, (4, 50, 60, 3), dtype=np.uint8)
    y = bgr2gray_cv(x)
    assert y.shape == (4, 50, 60) and y.dtype == np.uint8
    assert np.abs(y - x.astype(float) @ [0.299, 0.587, 0.114]).max() < 0.51  # 15-bit weights
    with pytest.raises(ValueError, match="uint8 RGB"):
        bgr2gray_cv(x.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        bgr2gray_cv(x[..., :2])


def test_region_of_a_224_face_is_rows_and_columns_56_to_167(face_rgb):
    gray = bgr2gray_cv(face_rgb)
    out = lipread_frames(face_rgb)
    assert out.dtype == np.float32 and out.shape == (8, LIPREAD_SIZE, LIPREAD_SIZE)
    assert np.array_equal(out, gray[:, 56:168, 56:168])  # no resize, 0..255 scale kept
    assert np.array_equal(lipread_frames(gray), out)  # gray input is taken as it is
    assert np.array_equal(crop_faces(gray, "lipread"), gray[:, 56:168, 56:168])
    assert lipread_frames(gray[:0]).shape == (0, 112, 112)


@pytest.mark.parametrize("size", [(160, 160), (300, 300), (90, 120)])
def test_other_sizes_resize_like_cv2_inter_linear(size):
    """Half-pixel bilinear without antialiasing (torch's align_corners=False), then the crop."""
    gray = np.random.default_rng(1).integers(0, 256, (3,) + size, dtype=np.uint8)
    ref = F.interpolate(torch.from_numpy(gray).double()[:, None], size=(224, 224), mode="bilinear",
                        align_corners=False, antialias=False)[:, 0, 56:168, 56:168].numpy()
    out = lipread_frames(gray)
    assert out.shape == (3, 112, 112)
    assert np.abs(out - ref).max() < 5e-3  # OpenCV rounds source coordinates to float32
    if size == (160, 160):  # upsampling 1.4x: output pixel 56 reads x = 56.5 / 1.4 - 0.5
        i0, i1, w0, w1 = linear_taps(160, 224, 56, 58)
        assert i0.tolist() == [39, 40] and i1.tolist() == [40, 41]
        assert np.allclose(w1, [6 / 7, 4 / 7], atol=1e-5) and np.allclose(w0 + w1, 1)


def test_long_clips_are_processed_in_blocks_with_the_same_result():
    rgb = np.random.default_rng(2).integers(0, 256, (150, 20, 24, 3), dtype=np.uint8)
    out = lipread_frames(rgb)
    assert out.shape == (150, 112, 112)
    assert np.array_equal(out[[0, 64, 149]], lipread_frames(rgb[[0, 64, 149]]))
    assert np.array_equal(out, lipread_frames(bgr2gray_cv(rgb)))


def test_bad_input_is_named():
    for bad in (np.zeros((2, 50, 50), np.float32), np.zeros((50, 50), np.uint8),
                np.zeros((2, 50, 50, 4), np.uint8), np.zeros((2, 0, 50), np.uint8)):
        with pytest.raises(ValueError, match="lipread_frames: need uint8 RGB"):
            lipread_frames(bad)
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        linear_taps(0, 224)


def test_decode_lipread_goes_through_rgb_on_the_grid(tmp_path, face_rgb):
    path = _write_clip(tmp_path / "face.mp4", face_rgb)
    out = decode_lipread(path)
    assert out.dtype == np.float32 and out.shape == (8, 112, 112)  # every frame of a 25 fps clip
    with av.open(path) as c:
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert np.array_equal(out, lipread_frames(rgb))
    # the toolkit's luma gray is a different picture (limited-range luma expanded)
    info = probe(path)
    luma = np.stack([gray_frame(f, 0) for _, f in iter_video(path, origin=info.video_start, info=info)])
    assert 0.3 < np.abs(lipread_frames(luma) - out).mean() < 5
    # an origin 2 frames before the video repeats its first frame
    early = decode_lipread(path, origin=info.video_start - 0.08)
    assert len(early) == 10 and np.array_equal(early[:3], out[[0, 0, 0]]) and np.array_equal(early[2:], out)


def test_decode_lipread_honours_rotation(tmp_path, face_rgb):
    wide = np.ascontiguousarray(face_rgb[:4, :, 32:192])  # stored 224 high, 160 wide
    path = _write_clip(tmp_path / "rot.mp4", wide)
    plain = decode_lipread(path)
    set_display_rotation(path, 90)  # displayed turned a quarter counter-clockwise: 160 x 224
    turned = decode_lipread(path)
    with av.open(path) as c:
        frames = list(c.decode(video=0))
    upright = np.stack([np.rot90(f.to_ndarray(format="rgb24"), 1) for f in frames])
    assert np.array_equal(turned, lipread_frames(upright))
    assert not np.allclose(turned, plain)
    assert np.array_equal(gray_frame(frames[0], 90, method="rgb"), bgr2gray_cv(upright[0]))


def test_decode_lipread_errors_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="nope.mp4: no such file"):
        decode_lipread(str(tmp_path / "nope.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(MediaError, match="junk.mp4: cannot open"):
        decode_lipread(str(junk))
    import soundfile as sf

    sf.write(str(tmp_path / "voice.wav"), np.zeros(1600, np.float32), 16000)
    with pytest.raises(MediaError, match="voice.wav: no video stream"):
        decode_lipread(str(tmp_path / "voice.wav"))


def test_gray_frame_methods(tmp_path, face_rgb):
    path = _write_clip(tmp_path / "g.mp4", face_rgb[:2])
    with av.open(path) as c:
        frame = next(iter(c.decode(video=0)))
        rgb = rgb_frame(frame)[0]
        assert np.array_equal(gray_frame(frame, method="rgb"), bgr2gray_cv(rgb))
        assert np.array_equal(gray_frame(frame), gray_frame(frame, method="luma"))
        with pytest.raises(ValueError, match="'luma' or 'rgb'"):
            gray_frame(frame, method="bgr")


def test_face_frames_of_the_lipread_preset_are_made_through_rgb(tmp_path, face_rgb):
    path = _write_clip(tmp_path / "f.mp4", face_rgb[:3])
    info = probe(path)
    box = np.array([[60.0, 40.0, 160.0, 150.0]] * 3, np.float32)
    track = Track(frames=np.arange(3), boxes=box, landmarks=np.zeros((3, 5, 2), np.float32),
                  observed=np.ones(3, bool), scores=np.ones(3, np.float32), n_interpolated=0,
                  segments=[(0, 2)], id=0)
    faces = {}
    for preset in ("lipread", "lrs3", None):
        scan = FaceScan(info=info, origin=info.video_start, n_frames=3, tracks=[track], dropped=[], cuts=[])
        write_face_frames(scan, path, str(tmp_path / str(preset)), preset=preset)
        faces[preset] = np.asarray(scan.faces(0))
    from avse.video.crops import cut_face, face_window

    frames = [f for _, f in iter_video(path, origin=info.video_start, info=info)]
    win = face_window(box[0])
    assert np.array_equal(faces["lipread"], [cut_face(gray_frame(f, method="rgb"), win) for f in frames])
    assert np.array_equal(faces[None], [cut_face(gray_frame(f), win) for f in frames])
    assert np.array_equal(faces["lrs3"], faces[None]) and not np.array_equal(faces["lipread"], faces[None])
    assert PRESET_GRAY["lipread"] == "rgb" and PRESET_GRAY["voxceleb2"] == "luma"
    with pytest.raises(ValueError, match="unknown crop preset 'lrs4'"):
        write_face_frames(scan, path, str(tmp_path / "x"), preset="lrs4")
