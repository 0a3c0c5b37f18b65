"""The "lipread" preset against the original OpenCV preprocessing of the MuSE data scripts.

The original path (written here with OpenCV, a dev dependency): ``cv2.VideoCapture`` BGR
frames, ``cvtColor(BGR2GRAY)``, ``/ 255.``, ``cv2.resize((224, 224))``, ``[56:168, 56:168]``,
``(x - 0.4161) / 0.1688``. Ours: :func:`avse.video.lipread.decode_lipread` (PyAV, through
RGB). Both feed the published-architecture front-end ("dlr", random weights with non-trivial
BatchNorm statistics, eval mode) on the same face-centred mp4 made from a real photo. The
toolkit's luma-plane gray (``gray_frame`` default, limited range expanded) and the raw luma
plane are measured the same way; the numbers are printed (``pytest -s``).
"""
import av
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from avse.models.frontends import build_frontend
from avse.video.frames import gray_frame, iter_video, probe
from avse.video.lipread import LIPREAD_MEAN, LIPREAD_STD, bgr2gray_cv, decode_lipread, lipread_frames

try:
    import cv2
except ImportError as err:  # a dev dependency: this test is never skipped
    raise ImportError("tests/integration/test_lipread_opencv.py needs OpenCV: "
                      "pip install -c constraints.txt -e .[dev]") from err
# astronaut(): face box (181, 62, 268, 172) -> its VoxCeleb2-style face window (cx, cy, side)
WINDOW = (224.4, 139.0, 154.0)


def _face_clip(path, size: int, n: int = 20) -> str:
    """A face-centred ``size`` x ``size`` H.264 yuv420p mp4 at 25 fps: the astronaut's face
    cut with a window that drifts and zooms a little from frame to frame."""
    photo = Image.fromarray(skimage.data.astronaut())
    cx, cy, side = WINDOW
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25, options={"crf": "18"})
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        for k in range(n):
            s = side * (1 + 0.05 * np.sin(k / 3))
            x, y = cx + 4 * np.sin(k / 4), cy + 3 * np.cos(k / 5)
            img = photo.resize((size, size), Image.BILINEAR, box=(x - s / 2, y - s / 2, x + s / 2, y + s / 2))
            for p in st.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return str(path)


def _opencv_original(path: str) -> np.ndarray:
    """The MuSE data scripts' preprocessing, step by step with OpenCV (float64, normalised)."""
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) / 255.
        frames.append(cv2.resize(gray, (224, 224))[56:168, 56:168])
    cap.release()
    return (np.array(frames) - 0.4161) / 0.1688


def _normalise(x255: np.ndarray) -> np.ndarray:
    return (x255 / 255. - LIPREAD_MEAN) / LIPREAD_STD


def _dlr(seed: int = 0):
    torch.manual_seed(seed)
    fe = build_frontend("dlr")
    g = torch.Generator().manual_seed(seed + 1)
    for m in fe.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return fe.eval()


def test_gray_weights_equal_opencv_for_every_colour():
    v = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(4096, 4096, 3)
    assert np.array_equal(bgr2gray_cv(rgb), cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]),
                                                         cv2.COLOR_BGR2GRAY))


@pytest.mark.parametrize("size", [224, 160])
def test_inputs_equal_opencv_original(tmp_path, size):
    path = _face_clip(tmp_path / f"face{size}.mp4", size)
    ref = _opencv_original(path)
    ours = _normalise(decode_lipread(path).astype(np.float64))
    assert ours.shape == ref.shape == (20, 112, 112)
    diff = np.abs(ours - ref).max()
    print(f"\n{size}x{size} clip: max |ours - OpenCV| of the normalised inputs = {diff:.2e}")
    # 224: float32 rounding only; 160: OpenCV's resize (IPP) differs from exact bilinear by ~1e-5
    assert diff < (1e-6 if size == 224 else 1e-4)


def test_embeddings_match_opencv_original_and_the_luma_shortcuts_do_not(tmp_path):
    path = _face_clip(tmp_path / "face.mp4", 224)
    info = probe(path)
    frames = [f for _, f in iter_video(path, origin=info.video_start, info=info)]
    luma = np.stack([gray_frame(f) for f in frames])  # limited range expanded to 0..255
    raw = np.stack([np.frombuffer(f.planes[0], np.uint8).reshape(-1, f.planes[0].line_size)
                    [:f.height, :f.width] for f in frames])  # the luma plane as stored (16..235)
    ref255 = (_opencv_original(path) * LIPREAD_STD + LIPREAD_MEAN) * 255.  # back to 0..255
    inputs = np.stack([ref255, decode_lipread(path), lipread_frames(luma), lipread_frames(raw)])
    with torch.no_grad():
        emb = _dlr()(torch.from_numpy(inputs.astype(np.float32)))  # [4, 20, 512], whole clips
    assert emb.shape == (4, 20, 512) and emb[0].std() > 0
    rel = [float((e - emb[0]).norm() / emb[0].norm()) for e in emb[1:]]
    print(f"\nrelative embedding difference vs OpenCV's path: ours (through RGB) {rel[0]:.2e}, "
          f"luma plane limited->full {rel[1]:.2e}, raw luma plane {rel[2]:.2e}")
    assert rel[0] <= 1e-2 and rel[0] < 1e-5  # the requirement, and what is measured (float rounding)
    assert rel[1] > 1e-3 and rel[2] > rel[1]  # the shortcuts see another picture
