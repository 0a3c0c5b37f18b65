"""Face detection with MTCNN (facenet-pytorch 2.5.3; the weights ship in its wheel).

:class:`FaceDetector` finds every face of a batch of RGB images and returns one
:class:`Detections` per image, boxes and five landmarks in *source* pixels (the caller
downscales the frames and passes the scales). :func:`appearance` is the cheap colour
descriptor that :mod:`avse.video.track` uses to join the same person across shot cuts.
:func:`shared_detector` keeps one detector per device and process (the recipes' extract
workers reuse it over their clips); :func:`check_device` says whether a device is usable.

Batching and the ragged-array bug
---------------------------------
Images of the same shape and scale go through MTCNN in one call (``max_batch`` at a
time). In facenet-pytorch 2.5.3, ``MTCNN.__call__`` (``forward`` with
``keep_all=False``) and ``MTCNN.select_boxes`` build ``np.array`` from a list holding a
``[1, 4]`` array for an image with a face and ``None`` for an image without one; with
numpy >= 1.24 that raises ``ValueError: ... inhomogeneous shape``, so a batch where some
frames have a face and others have none breaks. ``MTCNN.detect`` itself builds its output
with ``dtype=object`` and survives ragged batches, but returns a different container for
each case: ``None`` for an image without faces, a ``float32`` array when the counts
differ, and an ``[B, n, 4]`` *object* array when every image holds ``n`` faces. We only
call ``detect``, convert each image's entry on its own (``None`` -> empty, anything else
-> ``float32``), and, should a batched call still raise ``ValueError`` (another numpy or
facenet version), run that batch again one image at a time.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

MIN_MTCNN_FACE = 12
"""MTCNN's smallest window (image pixels): faces smaller than this in the *downscaled*
image cannot be found, whatever ``min_face`` says; downscale less to find them."""

_INSTALL_HINT = (
    "avse.video.detect needs facenet-pytorch (MTCNN; its weights ship in the wheel): "
    "pip install facenet-pytorch==2.5.3"
)


@dataclass
class Detections:
    """The faces found in one image.

    Attributes
    ----------
    boxes : np.ndarray
        ``[N, 4]`` float32 ``(x0, y0, x1, y1)`` in source (display) pixels.
    scores : np.ndarray
        ``[N]`` float32 MTCNN final-stage probability, in ``[threshold, 1]``.
    landmarks : np.ndarray
        ``[N, 5, 2]`` float32 ``(x, y)`` in source pixels, in the order image-left eye,
        image-right eye, nose, image-left mouth corner, image-right mouth corner.
    features : np.ndarray or None
        ``[N, D]`` float32 appearance descriptors (:func:`appearance`), or None.

    Example
    -------
    >>> d = Detections.empty()
    >>> len(d), d.boxes.shape, d.landmarks.shape
    (0, (0, 4), (0, 5, 2))
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    features: np.ndarray | None = None

    @classmethod
    def empty(cls, feature_dim: int | None = None) -> "Detections":
        """No face: ``[0, 4]``, ``[0]``, ``[0, 5, 2]`` arrays (features ``[0, feature_dim]``)."""
        features = None if feature_dim is None else np.zeros((0, feature_dim), np.float32)
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros((0, 5, 2), np.float32), features)

    def __len__(self) -> int:
        return len(self.boxes)

    def __post_init__(self):
        n = len(self.boxes)
        if np.shape(self.boxes) != (n, 4) or np.shape(self.scores) != (n,) or \
                np.shape(self.landmarks) != (n, 5, 2):
            raise ValueError(
                "Detections: boxes must be [N, 4], scores [N] and landmarks [N, 5, 2] with one N; "
                f"got {np.shape(self.boxes)}, {np.shape(self.scores)}, {np.shape(self.landmarks)}")
        if self.features is not None and len(self.features) != n:
            raise ValueError(f"Detections.features must have one row per box ({n}); "
                             f"got shape {np.shape(self.features)}")


HIST_BINS = 5
"""Bins per RGB channel of :func:`appearance` (``5 ** 3 = 125`` dimensions)."""


STANDARD_STD = 48.0
"""The grey-level standard deviation :func:`appearance` gives each patch before binning."""


def appearance(image: np.ndarray, box_in_image: np.ndarray) -> np.ndarray:
    """A cheap colour descriptor of one face: a coarse RGB histogram of the box centre.

    The central half of the box (half its width and height: skin, eyes, mouth, little
    background) is standardised with one mean and one standard deviation over all three
    channels (so a brightness or contrast change between two shots moves no pixel across
    bins, while a change of hue or of the ratios between channels does), then
    histogrammed on a ``5 x 5 x 5`` RGB grid; the square roots of the bin fractions form
    the descriptor, so it has unit L2 norm and the cosine of two descriptors is their
    Bhattacharyya coefficient (1 = same colour distribution, 0 = disjoint).

    Measured on ``skimage.data.astronaut()`` (the face at box (181, 62, 268, 172)),
    cosine to the original: the same face downscaled to 15 % 0.92, box moved by up to
    15 px 0.96, +40 grey levels 0.95, contrast x0.7 1.00 and x1.3 (clipping) 0.90,
    Gaussian noise sigma 10 0.96, a 5 % white-balance shift 0.96; the face recoloured to
    another skin tone (RGB gains 0.55/0.42/0.35) 0.59, paler (1.0/1.1/1.2) 0.80, hue
    rotated by 18 degrees 0.82, the suit 0.65, the background 0.65, and a cat's face
    (``data.chelsea()``) 0.94.

    Limits: it describes colour, not identity. Two people of similar skin tone and hair
    under the same light look alike to it (so does a ginger cat), and the same person
    under a differently coloured light (a colour-graded shot, a stage light; a 15 %
    white-balance shift gives 0.87) looks different. A box reaching outside the image is
    clipped to it. It is meant to tell apart the few faces of *one* video across cuts,
    not to recognise people.

    Parameters
    ----------
    image : np.ndarray
        ``[h, w, 3]`` uint8 RGB (any scale).
    box_in_image : np.ndarray
        ``[4]`` ``(x0, y0, x1, y1)`` in the pixels of ``image``.

    Returns
    -------
    np.ndarray
        ``[125]`` float32, unit L2 norm (all zeros when the box holds no pixel).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    >>> f = appearance(img, np.array([8, 8, 56, 56]))
    >>> f.shape, round(float(np.linalg.norm(f)), 3)
    ((125,), 1.0)
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"appearance: image must be [h, w, 3] RGB; got shape {image.shape}")
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box_in_image, np.float64)[:4])
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
    h, w = image.shape[:2]
    c0, c1 = int(np.clip(round(cx - hw), 0, w)), int(np.clip(round(cx + hw), 0, w))
    r0, r1 = int(np.clip(round(cy - hh), 0, h)), int(np.clip(round(cy + hh), 0, h))
    patch = image[r0:r1, c0:c1].reshape(-1, 3).astype(np.float32)
    out = np.zeros(HIST_BINS ** 3, np.float32)
    if len(patch) == 0:
        return out
    patch = np.clip((patch - patch.mean()) * (STANDARD_STD / (patch.std() + 1e-3)) + 127.5, 0, 255)
    q = np.minimum((patch * (HIST_BINS / 256.0)).astype(np.int64), HIST_BINS - 1)
    idx = (q[:, 0] * HIST_BINS + q[:, 1]) * HIST_BINS + q[:, 2]
    hist = np.bincount(idx, minlength=HIST_BINS ** 3).astype(np.float32)
    return np.sqrt(hist / hist.sum())


class FaceDetector:
    """MTCNN from facenet-pytorch 2.5.3 (weights in the wheel; nothing downloads).

    Parameters
    ----------
    min_face : int
        Smallest face searched for, in source pixels (converted per image with its scale;
        never below :data:`MIN_MTCNN_FACE` image pixels). Approximate: MTCNN's box
        regression may return slightly smaller boxes.
    threshold : float
        Minimum final (O-Net) score kept.
    device : str
        Torch device of the three MTCNN networks.
    thresholds : tuple of float
        MTCNN's P-, R- and O-Net candidate thresholds.
    max_batch : int
        Most images per MTCNN call (memory bound; same-shape images are batched). On CPU
        with one thread a batch costs about as much per frame as single calls
        (``benchmarks/face_detect.py``: 640x360, 1-4 faces, 45-150 ms per frame either
        way); batching is for accelerators.

    Example
    -------
    >>> det = FaceDetector()
    >>> out = det.detect([np.zeros((120, 160, 3), np.uint8)], scales=[0.5])
    >>> len(out), len(out[0])
    (1, 0)
    """

    def __init__(self, min_face: int = 40, threshold: float = 0.9, device: str = "cpu",
                 thresholds=(0.6, 0.7, 0.7), max_batch: int = 16):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as e:
            raise ImportError(f"{_INSTALL_HINT} ({e})") from e
        if min_face <= 0:
            raise ValueError(f"FaceDetector: min_face must be > 0 source pixels; got {min_face}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"FaceDetector: threshold must be in [0, 1]; got {threshold}")
        if len(thresholds) != 3:
            raise ValueError(f"FaceDetector: thresholds must be 3 numbers (P-, R-, O-Net); "
                             f"got {thresholds!r}")
        if max_batch < 1:
            raise ValueError(f"FaceDetector: max_batch must be >= 1; got {max_batch}")
        self.min_face, self.threshold, self.max_batch = float(min_face), float(threshold), max_batch
        self.mtcnn = MTCNN(keep_all=True, select_largest=False, min_face_size=MIN_MTCNN_FACE,
                           thresholds=list(thresholds), device=device)
        self.mtcnn.eval()

    def detect(self, images: list, scales: list | None = None,
               with_features: bool = True) -> list:
        """Every face of every image.

        Parameters
        ----------
        images : list of np.ndarray
            RGB uint8 ``[h, w, 3]`` images, already downscaled by the caller.
        scales : list of float or None
            ``scales[i]`` = image size / source size (None: all 1). Boxes and landmarks
            come back divided by it, in source pixels.
        with_features : bool
            Also compute :func:`appearance` descriptors (``Detections.features``).

        Returns
        -------
        list of Detections
            One per image, in order; :meth:`Detections.empty` where no face was found.
            Faces are sorted by descending score.
        """
        images = list(images)
        scales = [1.0] * len(images) if scales is None else [float(s) for s in scales]
        if len(scales) != len(images):
            raise ValueError(f"FaceDetector.detect: {len(images)} images but {len(scales)} scales; "
                             "give one scale (image size / source size) per image")
        groups = defaultdict(list)
        for i, (img, s) in enumerate(zip(images, scales)):
            if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 \
                    or img.dtype != np.uint8:
                raise ValueError(f"FaceDetector.detect: images[{i}] must be an RGB uint8 "
                                 f"[h, w, 3] array; got {getattr(img, 'dtype', type(img))} "
                                 f"{getattr(img, 'shape', '')}")
            if not s > 0:
                raise ValueError(f"FaceDetector.detect: scales[{i}] must be > 0; got {s}")
            groups[(img.shape, self._min_size(s))].append(i)
        out = [None] * len(images)
        for (_, min_size), idx in groups.items():
            for start in range(0, len(idx), self.max_batch):
                chunk = idx[start:start + self.max_batch]
                raw = self._mtcnn_detect([images[i] for i in chunk], min_size)
                for i, (boxes, probs, points) in zip(chunk, raw):
                    out[i] = self._to_detections(images[i], scales[i], boxes, probs, points,
                                                 with_features)
        return out

    def _min_size(self, scale: float) -> float:
        return max(float(MIN_MTCNN_FACE), round(self.min_face * scale, 1))

    def _mtcnn_detect(self, batch: list, min_size: float) -> list:
        """``[(boxes, probs, points)]`` per image, batched; per image if the batch raises."""
        self.mtcnn.min_face_size = min_size
        try:
            boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
        except ValueError:
            if len(batch) == 1:
                raise
            return [self._mtcnn_detect([img], min_size)[0] for img in batch]
        return list(zip(boxes, probs, points))

    def _to_detections(self, image, scale, boxes, probs, points, with_features) -> Detections:
        if boxes is None or len(boxes) == 0:
            return Detections.empty(HIST_BINS ** 3 if with_features else None)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        probs = np.asarray(probs, np.float32).reshape(-1)
        points = np.asarray(points, np.float32).reshape(-1, 5, 2)
        keep = np.flatnonzero(probs >= self.threshold)
        keep = keep[np.argsort(-probs[keep], kind="stable")]
        boxes, probs, points = boxes[keep], probs[keep], points[keep].copy()
        for a, b in ((0, 1), (3, 4)):  # eyes, mouth corners: image-left first
            swap = points[:, a, 0] > points[:, b, 0]
            points[swap, a], points[swap, b] = points[swap, b].copy(), points[swap, a].copy()
        features = None
        if with_features:
            features = np.stack([appearance(image, b) for b in boxes]) if len(boxes) \
                else np.zeros((0, HIST_BINS ** 3), np.float32)
        return Detections(boxes / scale, probs, points / scale, features)


_SHARED: dict = {}


def check_device(device: str) -> str:
    """``device`` when a :class:`FaceDetector` can run on it (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``); ValueError saying why not. CUDA is checked with ``torch.cuda.device_count()``
    (NVML where it can, so the check does not initialise CUDA and forked workers can still
    use it).

    Example
    -------
    >>> check_device("cpu")
    'cpu'
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{device!r} is not a torch device ({err}); expected cpu, cuda, "
                         "cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"CUDA is not available here (torch {torch.__version__}: "
                             "torch.cuda.device_count() is 0; no GPU, no driver, or a CPU "
                             "build of torch)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"only {count} CUDA device(s) visible (cuda:0 .. cuda:{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("MPS is not available here (torch.backends.mps.is_available() "
                             "is False)")
    elif dev.type != "cpu":
        raise ValueError(f"the detector runs on cpu, cuda, cuda:N or mps, not {dev.type}")
    return device


def shared_detector(device: str = "cpu") -> FaceDetector:
    """One default :class:`FaceDetector` on ``device`` per process, built on first use and
    reused by every later call (the recipes' extract workers: one detector load per worker
    rather than per clip). Keyed by process id too, so a forked worker builds its own rather
    than using one its parent built (a CUDA model does not survive a fork)."""
    key = (os.getpid(), str(device))
    if key not in _SHARED:
        _SHARED[key] = FaceDetector(device=device)
    return _SHARED[key]
