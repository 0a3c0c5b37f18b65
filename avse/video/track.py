"""Face tracks on the 25 fps grid: shot cuts, IoU association, gap interpolation, smoothing,
and joining the same person across cuts by appearance.

Shot cuts (:func:`thumbnail`, :func:`is_shot_cut`)
---------------------------------------------------
Each grid frame is summarised by an ``18 x 32`` grid of block means of its grey image.
Two consecutive thumbnails are compared by :func:`cut_score`, one minus their Pearson
correlation with a small variance floor (``CUT_EPS`` = 4 grey levels squared): it ignores
a change of brightness or contrast (a flicker, an exposure change), two flat (black)
frames score 0, and a flat frame against a textured one scores near 1. Measured on
``skimage.data`` photos cropped to 288 x 512 (grey): a moving face (the astronaut's face
moved by 5-30 px) 0.003-0.037, Gaussian noise (sigma 15) 0.000, a mouth opening 0.008,
brightness -8..+20 levels 0.000, contrast x1.1 0.000, a 3-px camera shake 0.018, a
20-px-per-frame pan 0.335; hard cuts between any two of astronaut / coffee / chelsea /
rocket / camera / the bottom half of astronaut 0.70-1.48. :data:`CUT_THRESHOLD` = 0.5 lies
in that gap. Limits: a whip pan (tens of pixels per frame) can read as a cut; a dissolve
or fade is not a hard cut and is not found (its tracks end by IoU instead); a cut between
two shots of the same set from nearly the same angle can be missed.

Tracks (:func:`track_faces`)
----------------------------
Detections come only on the frames where the detector ran (every ``detect_every`` frames
and on every cut). Inside one shot, each detection frame's faces are matched to the
running tracks greedily by descending IoU (against the track's last box and its box
extrapolated at constant velocity, whichever overlaps more), pairs under
``iou_threshold`` are not matched, and unmatched faces start new tracks. A cut ends every
track. A track not matched for more than ``max_gap_s`` (between two matched detection
frames) ends at its last match; a shorter gap is bridged. Every grid frame from a track's
first to its last match is covered: boxes and landmarks are linear between matched
detection frames. ``n_interpolated`` counts the frames of gaps that contain at least one
detection frame where the face was missed (the ordinary frames between two consecutive
detections are not counted).

Ends: a track starts at its first matched detection frame and ends at its last one. It is
extended, holding its box, only when no detection frame of the same shot lies beyond
that end, i.e. the video or the shot ended before the next look: then to the shot's
edge, at most ``detect_every - 1`` frames. A face that appears between two detection
frames therefore starts at the first detection that sees it.

Then tracks shorter than ``min_track_s`` are dropped (reported through ``dropped``), boxes
and landmarks are smoothed in each segment separately (a running median then a running
mean over ``smooth_s``, odd windows, point-reflected at the ends so that uniform motion
passes unchanged; never across a cut), and, with ``merge``, tracks in different shots are
joined (:func:`merge_tracks`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

THUMB_SHAPE = (18, 32)
"""``(rows, cols)`` of :func:`thumbnail`: block means of the grey frame."""
CUT_EPS = 16.0
"""Variance floor (grey levels squared) of :func:`cut_score`."""
CUT_THRESHOLD = 0.5
"""Default :func:`is_shot_cut` threshold on :func:`cut_score` (see the module notes)."""
MERGE_THRESHOLD = 0.85
"""Default cosine of mean appearance descriptors above which :func:`merge_tracks` joins two
tracks (see :func:`avse.video.detect.appearance` for measured values)."""


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """A small summary of one frame for cut detection: ``18 x 32`` block means.

    Parameters
    ----------
    gray : np.ndarray
        ``[H, W]`` grey frame (uint8 or float, grey levels 0..255), any size.

    Returns
    -------
    np.ndarray
        ``[18, 32]`` float32 mean grey level of each block.

    Example
    -------
    >>> t = thumbnail(np.full((360, 640), 7, np.uint8))
    >>> t.shape, float(t.mean())
    ((18, 32), 7.0)
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"thumbnail: gray must be a non-empty [H, W] grey frame; got shape "
                         f"{gray.shape} (convert RGB frames to grey first)")
    rows, cols = THUMB_SHAPE
    if gray.shape[0] < rows or gray.shape[1] < cols:  # tiny frame: repeat pixels first
        gray = np.repeat(gray, -(-rows // gray.shape[0]), 0)
        gray = np.repeat(gray, -(-cols // gray.shape[1]), 1)
    h, w = gray.shape
    r = np.linspace(0, h, rows + 1).astype(int)
    c = np.linspace(0, w, cols + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(gray, r[:-1], axis=0, dtype=np.float64), c[:-1], axis=1)
    return (sums / np.outer(np.diff(r), np.diff(c))).astype(np.float32)


def cut_score(prev: np.ndarray, cur: np.ndarray) -> float:
    """One minus the (variance-floored) correlation of two thumbnails, in ``[0, 2]``.

    ``1 - (cov + e) / sqrt((var_prev + e) * (var_cur + e))`` with ``e`` = :data:`CUT_EPS`.

    Example
    -------
    >>> a = thumbnail(np.tile(np.arange(64, dtype=np.uint8), (36, 10)))
    >>> round(cut_score(a, a + 3), 3), round(cut_score(a, a[:, ::-1]), 3)
    (0.0, 1.825)
    """
    p = np.asarray(prev, np.float64).ravel()
    q = np.asarray(cur, np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"cut_score: thumbnails differ in size ({np.shape(prev)} vs "
                         f"{np.shape(cur)}); make both with thumbnail()")
    p, q = p - p.mean(), q - q.mean()
    cov, vp, vq = (p * q).mean(), (p * p).mean(), (q * q).mean()
    return float(1.0 - (cov + CUT_EPS) / np.sqrt((vp + CUT_EPS) * (vq + CUT_EPS)))


def is_shot_cut(prev: np.ndarray, cur: np.ndarray, threshold: float = CUT_THRESHOLD) -> bool:
    """True when ``cur`` starts a new shot after ``prev`` (two :func:`thumbnail` outputs).

    ``cut_score(prev, cur) > threshold``; the default 0.5 and the measurements behind it
    are in the module notes.

    Example
    -------
    >>> a = thumbnail(np.tile(np.arange(64, dtype=np.uint8), (36, 10)))
    >>> is_shot_cut(a, a + 3), is_shot_cut(a, a[:, ::-1])
    (False, True)
    """
    return cut_score(prev, cur) > threshold


@dataclass
class Track:
    """One face over time, on the grid frames it covers.

    Attributes
    ----------
    frames : np.ndarray
        ``[n]`` int grid frame indices, sorted (holes only between merged segments).
    boxes : np.ndarray
        ``[n, 4]`` float32 smoothed ``(x0, y0, x1, y1)``, source pixels.
    landmarks : np.ndarray
        ``[n, 5, 2]`` float32 smoothed, source pixels (order as in ``Detections``).
    observed : np.ndarray
        ``[n]`` bool, True where a detection was matched on that frame.
    scores : np.ndarray
        ``[n]`` float32 detection score, NaN where not observed.
    n_interpolated : int
        Frames inside gaps where the face was missed on a detection frame.
    segments : list of tuple
        ``[(first, last), ...]`` contiguous spans (several only after a merge).
    id : int
        Index in the returned list (left to right), -1 before that.
    feature : np.ndarray or None
        ``[D]`` unit-norm mean appearance descriptor (None without features).
    """

    frames: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    observed: np.ndarray
    scores: np.ndarray
    n_interpolated: int
    segments: list
    id: int = -1
    feature: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def first(self) -> int:
        return int(self.frames[0])

    @property
    def last(self) -> int:
        return int(self.frames[-1])

    @property
    def n_observed(self) -> int:
        return int(self.observed.sum())

    @property
    def mean_box(self) -> np.ndarray:
        """``[4]`` mean box over the covered frames."""
        return self.boxes.mean(axis=0)

    @property
    def mean_score(self) -> float:
        return float(np.nanmean(self.scores)) if self.observed.any() else float("nan")

    @property
    def mean_cx(self) -> float:
        """Mean horizontal box centre (source pixels), the left-to-right sort key."""
        return float((self.boxes[:, 0] + self.boxes[:, 2]).mean() / 2)

    def index(self, k: int) -> int | None:
        """Row of grid frame ``k`` in the arrays, or None when the track does not cover it."""
        i = int(np.searchsorted(self.frames, k))
        return i if i < len(self.frames) and self.frames[i] == k else None

    def box_at(self, k: int) -> np.ndarray | None:
        """``[4]`` box on grid frame ``k`` (None when not covered)."""
        return None if self.index(k) is None else self.boxes[self.index(k)]

    def landmarks_at(self, k: int) -> np.ndarray | None:
        """``[5, 2]`` landmarks on grid frame ``k`` (None when not covered)."""
        return None if self.index(k) is None else self.landmarks[self.index(k)]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` IoU of two box sets ``[., 4]``."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda z: np.prod(np.clip(z[:, 2:] - z[:, :2], 0, None), axis=-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


class _Raw:
    """A track while it is being built: its matched detections, in order."""

    def __init__(self, shot: int):
        self.shot = shot
        self.frames, self.boxes, self.landmarks, self.scores, self.features = [], [], [], [], []

    def add(self, k, det, j):
        self.frames.append(k)
        self.boxes.append(np.asarray(det.boxes[j], np.float64))
        self.landmarks.append(np.asarray(det.landmarks[j], np.float64))
        self.scores.append(float(det.scores[j]))
        if det.features is not None:
            self.features.append(np.asarray(det.features[j], np.float64))

    def predict(self, k) -> tuple:
        last = self.boxes[-1]
        if len(self.frames) < 2:
            return last, last
        v = (last - self.boxes[-2]) / (self.frames[-1] - self.frames[-2])
        return last, last + v * (k - self.frames[-1])


def _greedy_match(ious: np.ndarray, threshold: float) -> list:
    """``[(row, col)]`` pairs taken by descending IoU, each row and column at most once."""
    pairs, used_r, used_c = [], set(), set()
    for flat in np.argsort(-ious, axis=None, kind="stable"):
        r, c = divmod(int(flat), ious.shape[1])
        if ious[r, c] < threshold:
            break
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r), used_c.add(c)
    return pairs


def _odd_window(n_frames: float, length: int) -> int:
    w = min(max(1, int(round(n_frames))), length)
    return w if w % 2 else w - 1


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Running median then running mean over ``window`` frames (odd) along axis 0.

    The ends are point-reflected (``2 x[0] - x[i]``) so that uniform motion passes
    unchanged. ``window`` is clipped to the series length (and made odd).

    Example
    -------
    >>> smooth(np.arange(6.0), 5).tolist()  # uniform motion: unchanged
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    >>> smooth(np.array([0.0, 1, 2, 30, 4, 5, 6]), 3).round(2).tolist()  # the outlier is gone
    [0.0, 1.0, 2.33, 3.67, 4.67, 5.33, 6.0]
    """
    x = np.asarray(x, np.float64)
    w = _odd_window(window, len(x))
    if w <= 1:
        return x.copy()
    p = w // 2

    def pad(y):
        return np.concatenate([2 * y[:1] - y[p:0:-1], y, 2 * y[-1:] - y[-2:-p - 2:-1]])

    win = np.lib.stride_tricks.sliding_window_view
    y = np.median(win(pad(x), w, axis=0), axis=-1)
    return win(pad(y), w, axis=0).mean(axis=-1)


def _densify(raw: _Raw, examined: np.ndarray, shot_lo: int, shot_hi: int, detect_every: int,
             smooth_frames: float) -> Track:
    """Every grid frame of one raw track: interpolated, end-extended, smoothed."""
    f = np.asarray(raw.frames)
    first, last = int(f[0]), int(f[-1])
    lo_i, hi_i = np.searchsorted(examined, [shot_lo, shot_hi + 1])
    in_shot = examined[lo_i:hi_i]
    # extend only where no detection frame of this shot lies beyond the end (module notes)
    last_ext = last if np.any(in_shot > last) else min(shot_hi, last + detect_every - 1)
    first_ext = first if np.any(in_shot < first) else max(shot_lo, first - detect_every + 1)
    frames = np.arange(first_ext, last_ext + 1)
    q = np.clip(frames, first, last)
    boxes = np.stack([np.interp(q, f, np.asarray(raw.boxes)[:, i]) for i in range(4)], 1)
    lm = np.asarray(raw.landmarks).reshape(len(f), 10)
    lms = np.stack([np.interp(q, f, lm[:, i]) for i in range(10)], 1)
    observed = np.isin(frames, f)
    scores = np.full(len(frames), np.nan, np.float32)
    scores[np.searchsorted(frames, f)] = raw.scores
    n_interp = 0
    for a, b in zip(f[:-1], f[1:]):
        i, j = np.searchsorted(in_shot, [a + 1, b])
        if j > i:  # a detection frame inside (a, b) missed this face
            n_interp += int(b - a - 1)
    smoothed = smooth(np.concatenate([boxes, lms], 1), _odd_window(smooth_frames, len(frames)))
    feature = None
    if len(raw.features) == len(raw.frames) and raw.features:
        feature = np.mean(raw.features, axis=0)
        feature = (feature / max(np.linalg.norm(feature), 1e-12)).astype(np.float32)
    return Track(frames=frames, boxes=smoothed[:, :4].astype(np.float32),
                 landmarks=smoothed[:, 4:].reshape(-1, 5, 2).astype(np.float32),
                 observed=observed, scores=scores, n_interpolated=n_interp,
                 segments=[(int(frames[0]), int(frames[-1]))], feature=feature)


def _shot_edges(cuts, n_frames: int) -> np.ndarray:
    """Sorted shot starts ``[0, cut, ...]`` (cuts outside ``(0, n_frames)`` ignored)."""
    return np.array(sorted({0, *(int(c) for c in cuts if 0 < int(c) < n_frames)}), int)


def track_faces(detections: dict, n_frames: int, cuts=(), fps: int = 25, detect_every: int = 5,
                iou_threshold: float = 0.2, max_gap_s: float = 0.6, min_track_s: float = 1.0,
                smooth_s: float = 0.5, merge: bool = True,
                merge_threshold: float = MERGE_THRESHOLD, dropped: list | None = None) -> list:
    """Face tracks from per-frame detections (method and limits in the module notes).

    Parameters
    ----------
    detections : dict
        ``{grid frame k: Detections}`` for the frames where the detector ran; a frame
        absent was not examined, a present but empty ``Detections`` means "no face".
    n_frames : int
        Grid frames in the video (``@fps``).
    cuts : iterable of int
        Grid frames where a new shot starts.
    fps : int
        Grid rate (frames per second).
    detect_every : int
        Regular detection spacing (grid frames); bounds the end extension.
    iou_threshold : float
        Smallest IoU that matches a detection to a track.
    max_gap_s : float
        Longest time between two matched detections that a track bridges (seconds);
        at least ``detect_every / fps``.
    min_track_s : float
        Tracks covering fewer than ``min_track_s * fps`` frames are dropped (before merging).
    smooth_s : float
        Smoothing window (seconds; 0 = none).
    merge : bool
        Join tracks of different shots with similar appearance (:func:`merge_tracks`).
    merge_threshold : float
        Cosine of the mean appearance descriptors above which tracks are joined.
    dropped : list or None
        When given, the tracks dropped as too short are appended to it.

    Returns
    -------
    list of Track
        Sorted left to right by :attr:`Track.mean_cx`, ``id`` 0..n-1 in that order.

    Example
    -------
    >>> from avse.video.detect import Detections
    >>> box = np.array([[100, 50, 180, 150]], np.float32)
    >>> dets = {k: Detections(box + k, np.ones(1, np.float32), np.zeros((1, 5, 2), np.float32))
    ...         for k in range(0, 50, 5)}
    >>> (t,) = track_faces(dets, n_frames=50)
    >>> t.segments, int(t.observed.sum()), t.box_at(12).round(1).tolist()
    ([(0, 49)], 10, [112.0, 62.0, 192.0, 162.0])
    """
    if n_frames < 0 or fps <= 0 or detect_every < 1:
        raise ValueError(f"track_faces: need n_frames >= 0, fps > 0 and detect_every >= 1; "
                         f"got {n_frames}, {fps}, {detect_every}")
    max_gap = int(round(max_gap_s * fps))
    if max_gap < detect_every:
        raise ValueError(f"track_faces: max_gap_s={max_gap_s} s is shorter than the detection "
                         f"spacing detect_every / fps = {detect_every / fps} s, so every track "
                         "would end at its next detection; raise max_gap_s or lower detect_every")
    bad = [k for k in detections if not 0 <= int(k) < n_frames]
    if bad:
        raise ValueError(f"track_faces: detection frames {bad[:5]} lie outside 0..{n_frames - 1} "
                         "(n_frames); pass grid frame indices of this video")
    edges = _shot_edges(cuts, n_frames)
    examined = np.array(sorted(int(k) for k in detections), int)
    finished, active = [], []
    for k in examined:
        det = detections[k]
        shot = int(np.searchsorted(edges, k, side="right")) - 1
        still = []
        for t in active:  # a cut or a too-long gap ends a track
            (still if t.shot == shot and k - t.frames[-1] <= max_gap else finished).append(t)
        active = still
        pairs = []
        if active and len(det):
            boxes = np.asarray(det.boxes, np.float64)
            ious = np.stack([np.maximum(*(_iou(b[None], boxes)[0] for b in t.predict(k)))
                             for t in active])
            pairs = _greedy_match(ious, iou_threshold)
        for i, j in pairs:
            active[i].add(k, det, j)
        for j in sorted(set(range(len(det))) - {j for _, j in pairs}):
            active.append(_Raw(shot))
            active[-1].add(k, det, j)
    finished.extend(active)
    kept = []
    for raw in finished:
        lo = int(edges[raw.shot])
        hi = int(edges[raw.shot + 1]) - 1 if raw.shot + 1 < len(edges) else n_frames - 1
        track = _densify(raw, examined, lo, hi, detect_every, smooth_s * fps)
        if len(track) < min_track_s * fps:
            if dropped is not None:
                dropped.append(track)
        else:
            kept.append(track)
    if merge:
        kept = merge_tracks(kept, edges, merge_threshold)
    kept.sort(key=lambda t: (t.mean_cx, t.first))
    for i, t in enumerate(kept):
        t.id = i
    return kept


def _shots_of(track: Track, edges: np.ndarray) -> set:
    return {int(np.searchsorted(edges, a, side="right")) - 1 for a, _ in track.segments}


def merge_tracks(tracks: list, edges: np.ndarray, threshold: float = MERGE_THRESHOLD) -> list:
    """Join tracks of different shots whose mean appearance descriptors are similar.

    Greedy agglomeration: repeatedly join the two groups with the highest cosine between
    their (observation-weighted, renormalised) mean descriptors, if it is above
    ``threshold`` and no shot holds a member of both (so two faces seen in the same shot,
    at the same time or not, are never joined; a track split by a long gap inside one
    shot stays split). A merged track keeps each member's smoothed frames as one segment.

    Limits: the descriptor is a colour histogram (:func:`avse.video.detect.appearance`):
    two people of similar colouring can be joined, and the same person under very
    different light is not. Tracks without features are never joined.

    Parameters
    ----------
    tracks : list of Track
        Each with a single segment, or already merged.
    edges : np.ndarray
        ``[n_shots]`` sorted shot start frames (0 first).
    threshold : float
        Cosine above which two groups may be joined.

    Returns
    -------
    list of Track
        The merged tracks (unsorted; ``id`` unset).
    """
    groups = [[t] for t in tracks]
    shots = [_shots_of(t, edges) for t in tracks]

    def mean_feature(group):
        if any(t.feature is None for t in group):
            return None
        f = sum(t.feature.astype(np.float64) * max(t.n_observed, 1) for t in group)
        return f / max(np.linalg.norm(f), 1e-12)

    while True:
        feats = [mean_feature(g) for g in groups]
        best, pair = threshold, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if feats[i] is None or feats[j] is None or shots[i] & shots[j]:
                    continue
                cos = float(feats[i] @ feats[j])
                if cos > best:
                    best, pair = cos, (i, j)
        if pair is None:
            break
        i, j = pair
        groups[i] += groups.pop(j)
        shots[i] |= shots.pop(j)
    return [_concat(g, mean_feature(g)) for g in groups]


def _concat(group: list, feature) -> Track:
    if len(group) == 1:
        return group[0]
    group = sorted(group, key=lambda t: t.first)
    cat = lambda name: np.concatenate([getattr(t, name) for t in group])
    return Track(frames=cat("frames"), boxes=cat("boxes"), landmarks=cat("landmarks"),
                 observed=cat("observed"), scores=cat("scores"),
                 n_interpolated=sum(t.n_interpolated for t in group),
                 segments=[s for t in group for s in t.segments],
                 feature=None if feature is None else feature.astype(np.float32))
