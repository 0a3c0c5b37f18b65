"""The VoxCeleb2/LRS3 face-centred 224x224 framing, and the mouth crop presets cut from it.

Real video reaches the models the way the training corpora were framed. VoxCeleb2 and LRS3
clips are face tracks cut by the syncnet-style pipeline (crop scale ``cs = 0.4``): for a
face detection box with half-size ``bs = max(w, h) / 2`` and centre ``(mx, my)`` the frame
keeps rows ``[my - bs, my + bs (1 + 2 cs)]`` and columns ``[mx - bs (1 + cs), mx + bs (1 + cs)]``
(a square of side ``2.8 bs = 1.4 max(w, h)``, centred horizontally on the box and ``0.4 bs``
below its centre), padded with gray 110 outside the picture and resized to 224x224.
:func:`face_window` computes that square, :func:`cut_face` cuts it from a gray frame.

From such face frames :func:`crop_faces` cuts the mouth by preset:

==========  =====  =============================================================================
preset      side   what
==========  =====  =============================================================================
voxceleb2   88     the fixed box ``MOUTH_CROPS['voxceleb2']``: rows 113..200, cols 68..155
lrs3        88     the same box (LRS3 is framed like VoxCeleb2)
lrs2        88     frame resized to 160x160 (LRS2's frame size), then ``MOUTH_CROPS['lrs2']``;
                   assumes LRS2 frames are framed like LRS3 ones, only smaller
lipread     112    frame resized to 224x224 (bilinear as ``cv2.resize``; a no-op for our 224x224
                   face frames), then its central 112x112, rows and columns 56..167: the region
                   the published deep lip-reading front-end reads (:mod:`avse.video.lipread`,
                   whose float version is that preprocessing exactly); the frames are made
                   through RGB with OpenCV's gray (:data:`PRESET_GRAY`)
landmarks   88     :func:`align_mouth`: similarity-aligned to :data:`REFERENCE_FACE` with the
                   face's 5 landmarks, a 96x96 mouth box, its central 88x88
==========  =====  =============================================================================

Coordinates are pixels, ``x`` to the right and ``y`` down; a point ``(x, y)`` and a box
``(x0, y0, x1, y1)`` use the continuous convention in which pixel ``(r, c)`` covers
``[c, c + 1) x [r, r + 1)`` (PIL's sampling convention, so cuts and warps agree exactly).

Example
-------
>>> gray = np.full((360, 640), 128, np.uint8)
>>> win = face_window(np.array([300.0, 100.0, 380.0, 200.0]))
>>> face = cut_face(gray, win)
>>> face.shape, crop_faces(face[None], "lrs3").shape
((224, 224), (1, 88, 88))
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from avse.data.align import ROI_SIZE
from avse.video.lipread import LIPREAD_FACE, LIPREAD_SIZE, LIPREAD_TOP, lipread_frames
from avse.video.media import MOUTH_CROPS

FACE_SIZE = 224
CROP_SCALE = 0.4
PAD_VALUE = 110
LRS2_SIZE = 160  # LRS2 frames are 160x160

CROP_PRESETS = ("voxceleb2", "lrs3", "lrs2", "lipread", "landmarks")
PRESET_SIZES = {"voxceleb2": ROI_SIZE, "lrs3": ROI_SIZE, "lrs2": ROI_SIZE, "lipread": LIPREAD_SIZE,
                "landmarks": ROI_SIZE}
#: How each preset's face frames are made gray (:func:`avse.video.frames.gray_frame` ``method``):
#: "lipread" through RGB with OpenCV's weights, as the published front-end's data; the others
#: from the luma plane, as the corpora's shards (:func:`avse.video.media.decode_media`).
PRESET_GRAY = {name: "rgb" if name == "lipread" else "luma" for name in CROP_PRESETS}

#: The 5 MTCNN landmarks (left eye, right eye, nose tip, left mouth corner, right mouth corner)
#: of a canonical frontal face, ``[5, 2]`` ``(x, y)`` pixels of a 112x112 face: the widely
#: used 5-point template of ArcFace/InsightFace face alignment (public numeric values).
#: "Left" is the left of the picture, as MTCNN reports them.
REFERENCE_FACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                           [41.5493, 92.3655], [70.7299, 92.2041]])

#: Mouth width (corner to corner) as a fraction of the side of the aligned mouth box
#: (:func:`align_mouth`): 0.45, so a 96x96 box holds the mouth with about a quarter of the box
#: as margin on each side; the nose tip falls ~18 px below the top edge of the box.
MOUTH_WIDTH_FRACTION = 0.45


# ----------------------------------------------------------------------------- face framing
def face_window(box, box_scale: float = 1.0, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """The VoxCeleb2/LRS3 face-centred square of a face detection box.

    Parameters
    ----------
    box : array_like
        ``[..., 4]`` boxes ``(x0, y0, x1, y1)`` in source pixels.
    box_scale : float
        multiplies the box half-size before framing. 1.0 (default) treats our MTCNN boxes
        as the S3FD boxes the corpora were cut with; MTCNN boxes are a little tighter around
        the chin and forehead, so values slightly above 1 zoom out.
    crop_scale : float
        ``cs`` of the framing rule (0.4 for VoxCeleb2/LRS3).

    Returns
    -------
    np.ndarray
        float64 ``[..., 3]``: ``(cx, cy, side)`` of the square in source pixels, with
        ``cx = mx``, ``cy = my + cs * bs`` and ``side = 2 (1 + cs) bs``, where
        ``bs = box_scale * max(w, h) / 2`` and ``(mx, my)`` is the box centre.

    Example
    -------
    >>> face_window([100, 50, 200, 150]).tolist()
    [150.0, 120.0, 140.0]
    """
    box = np.asarray(box, dtype=np.float64)
    if box.shape[-1:] != (4,):
        raise ValueError(f"face_window: box must have shape [..., 4] (x0, y0, x1, y1), got {box.shape}")
    if not box_scale > 0 or not crop_scale >= 0:
        raise ValueError(f"face_window: box_scale must be > 0 and crop_scale >= 0, got {box_scale}, {crop_scale}")
    mx, my = (box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2
    bs = box_scale * np.maximum(box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]) / 2
    return np.stack([mx, my + crop_scale * bs, 2 * (1 + crop_scale) * bs], axis=-1)


def _check_window(window, where: str):
    win = np.asarray(window, dtype=np.float64)
    if win.shape != (3,) or not np.all(np.isfinite(win)) or win[2] <= 0:
        raise ValueError(f"{where}: window must be (cx, cy, side) with a finite side > 0, got {window!r}")
    return win


def cut_face(gray: np.ndarray, window, size: int = FACE_SIZE, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Cut a square window from a gray frame and resize it (the face-centred frame).

    Only the window is padded, never the whole frame: the part of the window inside the
    picture is copied into a ``pad_value`` canvas and resized with PIL (bilinear, with
    PIL's antialiasing when shrinking). Sub-pixel windows are honoured.

    Parameters
    ----------
    gray : np.ndarray
        uint8 ``[H, W]`` frame.
    window : array_like
        ``(cx, cy, side)`` in source pixels (:func:`face_window`); it may lie partly or
        wholly outside the picture.
    size : int
        output side in pixels.
    pad_value : int
        gray level outside the picture (110 as in the VoxCeleb2 pipeline).

    Returns
    -------
    np.ndarray
        uint8 ``[size, size]``.

    Example
    -------
    >>> gray = np.zeros((100, 100), np.uint8)
    >>> cut_face(gray, (0.0, 0.0, 50.0), size=4).tolist()[0]
    [110, 110, 110, 110]
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"cut_face: gray must be a uint8 [H, W] frame, got {gray.dtype} {gray.shape}")
    cx, cy, side = _check_window(window, "cut_face")
    x0, y0 = cx - side / 2, cy - side / 2
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    ix1, iy1 = int(np.ceil(x0 + side)), int(np.ceil(y0 + side))
    h, w = gray.shape
    sx0, sx1, sy0, sy1 = max(ix0, 0), min(ix1, w), max(iy0, 0), min(iy1, h)
    if sx0 == ix0 and sy0 == iy0 and sx1 == ix1 and sy1 == iy1:
        canvas = gray[iy0:iy1, ix0:ix1]  # wholly inside: no copy needed
    else:
        canvas = np.full((iy1 - iy0, ix1 - ix0), pad_value, np.uint8)
        if sx0 < sx1 and sy0 < sy1:
            canvas[sy0 - iy0:sy1 - iy0, sx0 - ix0:sx1 - ix0] = gray[sy0:sy1, sx0:sx1]
    img = Image.fromarray(np.ascontiguousarray(canvas))
    crop_box = (x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side)
    return np.asarray(img.resize((size, size), Image.BILINEAR, box=crop_box))


def to_face_coords(points, window, size: int = FACE_SIZE) -> np.ndarray:
    """Map source-pixel points into the frame :func:`cut_face` makes from ``window``.

    Parameters
    ----------
    points : array_like
        ``[..., 2]`` ``(x, y)`` in source pixels.
    window : array_like
        ``(cx, cy, side)`` of the cut.
    size : int
        side of the cut face frame.

    Returns
    -------
    np.ndarray
        float64 ``[..., 2]`` in face-frame pixels.

    Example
    -------
    >>> to_face_coords([[150.0, 120.0]], (150.0, 120.0, 140.0)).tolist()
    [[112.0, 112.0]]
    """
    cx, cy, side = _check_window(window, "to_face_coords")
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1:] != (2,):
        raise ValueError(f"to_face_coords: points must have shape [..., 2], got {points.shape}")
    corner = np.array([cx - side / 2, cy - side / 2])
    return (points - corner) * (size / side)


# ----------------------------------------------------------------------------- mouth presets
def _resize_frames(frames: np.ndarray, side: int) -> np.ndarray:
    """Resize ``[T, S, S]`` uint8 frames to ``[T, side, side]`` (PIL bilinear, antialiased)."""
    if frames.shape[1] == side:
        return frames
    out = np.empty((len(frames), side, side), np.uint8)
    for k, f in enumerate(frames):
        out[k] = np.asarray(Image.fromarray(f).resize((side, side), Image.BILINEAR))
    return out


def _box_crop(frames: np.ndarray, preset: str) -> np.ndarray:
    top, left, side = MOUTH_CROPS[preset].box(frames.shape[1], frames.shape[2])
    out = frames[:, top:top + side, left:left + side]
    return _resize_frames(np.ascontiguousarray(out), ROI_SIZE)


def crop_faces(faces: np.ndarray, preset: str, landmarks: np.ndarray | None = None) -> np.ndarray:
    """Cut mouth crops from face-centred frames, by preset (see the module table).

    Parameters
    ----------
    faces : np.ndarray
        uint8 ``[T, 224, 224]`` face-centred frames (:func:`cut_face`); other square sizes
        work and are treated as the same framing.
    preset : str
        one of :data:`CROP_PRESETS`.
    landmarks : np.ndarray, optional
        ``[T, 5, 2]`` MTCNN landmarks in face-frame pixels (:func:`to_face_coords`);
        required by ``"landmarks"``, ignored otherwise.

    Returns
    -------
    np.ndarray
        uint8 ``[T, S, S]`` with ``S = PRESET_SIZES[preset]``.

    Example
    -------
    >>> faces = np.random.default_rng(0).integers(0, 255, (2, 224, 224), dtype=np.uint8)
    >>> bool(np.array_equal(crop_faces(faces, "voxceleb2"), faces[:, 113:201, 68:156]))
    True
    """
    if preset not in CROP_PRESETS:
        raise ValueError(f"crop_faces: unknown preset {preset!r}; known presets: {', '.join(CROP_PRESETS)}")
    faces = np.asarray(faces)
    if faces.ndim != 3 or faces.shape[1] != faces.shape[2] or faces.dtype != np.uint8:
        raise ValueError(f"crop_faces: faces must be uint8 [T, S, S] face-centred frames, "
                         f"got {faces.dtype} {faces.shape}")
    if preset in ("voxceleb2", "lrs3"):
        return _box_crop(faces, preset)
    if preset == "lrs2":
        return _box_crop(_resize_frames(faces, LRS2_SIZE), "lrs2")
    if preset == "lipread":
        if faces.shape[1] == LIPREAD_FACE:
            sl = slice(LIPREAD_TOP, LIPREAD_TOP + LIPREAD_SIZE)
            return np.ascontiguousarray(faces[:, sl, sl])
        return np.clip(np.rint(lipread_frames(faces)), 0, 255).astype(np.uint8)
    if landmarks is None:
        raise ValueError("crop_faces: preset 'landmarks' needs landmarks [T, 5, 2] in face-frame "
                         "pixels; pass landmarks= or choose another preset")
    return align_mouths(faces, landmarks)


# ----------------------------------------------------------------------------- alignment
def similarity_transform(src, dst) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection).

    Umeyama's closed form: the ``[2, 3]`` matrix ``M`` minimising
    ``sum |M @ [src_i, 1] - dst_i|^2``.

    Parameters
    ----------
    src, dst : array_like
        ``[N, 2]`` corresponding points, ``N >= 2``.

    Returns
    -------
    np.ndarray
        float64 ``[2, 3]``; ``dst ~ src @ M[:, :2].T + M[:, 2]``.

    Example
    -------
    >>> src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> np.round(similarity_transform(src, 2 * src + 5), 6).tolist()
    [[2.0, 0.0, 5.0], [0.0, 2.0, 5.0]]
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"similarity_transform: src and dst must both be [N, 2] with N >= 2, "
                         f"got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = np.mean(np.sum(s_c**2, axis=1))
    if not var_s > 1e-12 or not np.all(np.isfinite(dst)):
        raise ValueError("similarity_transform: src points coincide (or dst is not finite); "
                         "a similarity needs at least two distinct points")
    u, sig, vt = np.linalg.svd(d_c.T @ s_c / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    scale = np.sum(sig * d) / var_s
    out = np.empty((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out


def mouth_template(size: int = 96, mouth_width: float = MOUTH_WIDTH_FRACTION) -> np.ndarray:
    """:data:`REFERENCE_FACE` placed in the ``size x size`` mouth box of :func:`align_mouth`.

    Scaled so that the mouth corners are ``mouth_width * size`` apart and shifted so that
    their midpoint is the box centre. Returns ``[5, 2]`` ``(x, y)`` box pixels.
    """
    corners = REFERENCE_FACE[3:5]
    k = mouth_width * size / np.linalg.norm(corners[1] - corners[0])
    return (REFERENCE_FACE - corners.mean(0)) * k + size / 2.0


def align_mouth(gray: np.ndarray, landmarks: np.ndarray, size: int = 96, crop: int = ROI_SIZE,
                mouth_width: float = MOUTH_WIDTH_FRACTION, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Landmark-aligned mouth crop of any gray frame.

    The frame is rotated and scaled by the similarity that best maps its 5 landmarks onto
    :func:`mouth_template` (the reference face scaled so that its mouth is ``mouth_width`` of
    a ``size`` box), then shifted so that *this face's* mouth centre (the midpoint of its
    mouth corners) lands on the box centre; the box's central ``crop x crop`` is returned. Only those ``crop^2`` pixels are sampled: one inverse-affine PIL transform
    (bilinear) straight from the frame, identical to warping the ``size`` box and cutting
    its centre.

    Parameters
    ----------
    gray : np.ndarray
        uint8 ``[H, W]`` frame.
    landmarks : np.ndarray
        ``[5, 2]`` ``(x, y)`` in that frame's pixels: left eye, right eye, nose, left and
        right mouth corners (MTCNN order).
    size, crop : int
        the aligned mouth box (96, as the lip-reading literature's mouth ROI) and the
        returned central crop (88).
    mouth_width : float
        mouth corner distance as a fraction of ``size`` (:data:`MOUTH_WIDTH_FRACTION`).
    pad_value : int
        gray level where the box leaves the picture.

    Returns
    -------
    np.ndarray
        uint8 ``[crop, crop]``.

    Example
    -------
    >>> gray = np.full((200, 200), 90, np.uint8)
    >>> align_mouth(gray, REFERENCE_FACE + 40).shape
    (88, 88)
    """
    gray = np.asarray(gray)
    landmarks = np.asarray(landmarks, np.float64)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"align_mouth: gray must be a uint8 [H, W] frame, got {gray.dtype} {gray.shape}")
    if landmarks.shape != (5, 2) or not np.all(np.isfinite(landmarks)):
        raise ValueError(f"align_mouth: landmarks must be finite [5, 2] (x, y), got {landmarks.shape}")
    if not 0 < crop <= size:
        raise ValueError(f"align_mouth: crop must be in (0, size], got crop={crop}, size={size}")
    m = similarity_transform(landmarks, mouth_template(size, mouth_width))
    mouth = m[:, :2] @ landmarks[3:5].mean(0) + m[:, 2]
    m[:, 2] += size / 2.0 - mouth  # this face's mouth centre, not the template's, at the centre
    off = (size - crop) / 2.0
    a = np.linalg.inv(m[:, :2])  # crop pixel p -> box p + off -> source a @ (p + off - t)
    t = a @ (np.array([off, off]) - m[:, 2])
    coeffs = (a[0, 0], a[0, 1], t[0], a[1, 0], a[1, 1], t[1])
    img = Image.fromarray(np.ascontiguousarray(gray))
    return np.asarray(img.transform((crop, crop), Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=pad_value))


def align_mouths(frames: np.ndarray, landmarks: np.ndarray, size: int = 96, crop: int = ROI_SIZE,
                 mouth_width: float = MOUTH_WIDTH_FRACTION) -> np.ndarray:
    """:func:`align_mouth` for ``frames [T, H, W]`` uint8 and ``landmarks [T, 5, 2]``.

    Returns uint8 ``[T, crop, crop]``.

    Example
    -------
    >>> frames = np.full((3, 120, 120), 50, np.uint8)
    >>> align_mouths(frames, np.repeat(REFERENCE_FACE[None], 3, 0)).shape
    (3, 88, 88)
    """
    frames, landmarks = np.asarray(frames), np.asarray(landmarks)
    if frames.ndim != 3 or landmarks.shape != (len(frames), 5, 2):
        raise ValueError(f"align_mouths: need frames [T, H, W] and landmarks [T, 5, 2], "
                         f"got {frames.shape} and {landmarks.shape}")
    out = np.empty((len(frames), crop, crop), np.uint8)
    for k in range(len(frames)):
        out[k] = align_mouth(frames[k], landmarks[k], size, crop, mouth_width)
    return out
