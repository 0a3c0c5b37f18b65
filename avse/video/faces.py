"""Pass 1 of real-video extraction: decode, detect, track, and write each track's face frames.

:func:`scan_faces` reads a video twice, streaming (memory does not grow with its length):

1. every frame of the 25 fps grid gets a thumbnail (shot cuts); every ``detect_every``-th
   frame, and the first frame of every shot, goes through the face detector on a copy
   downscaled to ``max_side``. :func:`avse.video.track.track_faces` turns the detections into
   tracks (smoothed boxes and 5 landmarks on every frame of each track).
2. each track's frames are cut from the full-resolution gray frames (the luma plane, or
   through RGB with OpenCV's weights for the ``lipread`` preset:
   :data:`avse.video.crops.PRESET_GRAY`), framed as VoxCeleb2 /
   LRS3 clips are (:func:`avse.video.crops.face_window`), and written to
   ``work_dir/face<k>.npy`` (uint8 ``[n, 224, 224]``, appended frame by frame and read back
   by rows with plain file reads: no memory map, whose touched pages would count in the
   process' resident memory and grow with the video's length) with the landmarks in face-frame
   coordinates (``face<k>_landmarks.npy``, ``[n, 5, 2]``).

:func:`write_faces_json` and :func:`write_faces_png` describe the tracks for a person.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from avse.data.align import FPS
from avse.video.frames import MediaInfo, gray_frame, iter_video, probe, rgb_frame
from avse.video.media import MediaError

logger = logging.getLogger(__name__)


class NoFaceError(MediaError):
    """No face track was found in a video."""


@dataclass
class FaceScan:
    """What pass 1 found in one video.

    Attributes
    ----------
    info : MediaInfo
    origin : float
        source time (s) of grid frame 0 and of output audio sample 0.
    n_frames : int
        frames on the 25 fps grid.
    tracks : list of avse.video.track.Track
        the kept tracks, numbered left to right (``track.id``).
    dropped : list
        tracks too short to keep.
    cuts : list of int
        grid frames where a shot starts.
    face_files, landmark_files : dict
        track id -> ``.npy`` of its ``[n, 224, 224]`` uint8 face frames and its ``[n, 5, 2]``
        landmarks (face-frame pixels), rows in the order of ``track.frames``.
    overview : np.ndarray
        an RGB frame (downscaled) that shows the most faces, and ``overview_frame`` its index.
    seconds : dict
        wall-clock time of each step.
    """

    info: MediaInfo
    origin: float
    n_frames: int
    tracks: list
    dropped: list
    cuts: list
    face_files: dict = field(default_factory=dict)
    landmark_files: dict = field(default_factory=dict)
    overview: np.ndarray | None = None
    overview_frame: int = 0
    overview_scale: float = 1.0
    seconds: dict = field(default_factory=dict)

    def track(self, k: int):
        """The track with id ``k``."""
        return next(t for t in self.tracks if t.id == k)

    def faces(self, k: int) -> np.ndarray:
        """Track ``k``'s face frames ``[n, 224, 224]`` uint8 (memory-mapped)."""
        return FrameFile(self.face_files[k])

    def landmarks(self, k: int) -> np.ndarray:
        """Track ``k``'s landmarks ``[n, 5, 2]`` in face-frame pixels."""
        return np.load(self.landmark_files[k])


class FrameFile:
    """A ``.npy`` of uint8 frames ``[n, H, W]`` written row after row and read by row slices
    with plain reads (``reader[a:b]``, ``reader[i]``, ``len``, ``np.asarray``)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
            self.offset = f.tell()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._file = None
        self._next = None

    @classmethod
    def create(cls, path: str, shape: tuple, dtype=np.uint8) -> "FrameFile":
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                    "shape": tuple(shape)})
        out = cls(path)
        out._file, out._next = open(path, "r+b"), 0
        out._file.seek(out.offset)
        return out

    def append(self, row: int, frame: np.ndarray):
        """Write row ``row`` (rows come in order; skipped rows are left as zeros)."""
        if row != self._next:
            self._file.seek(self.offset + row * self.row_bytes)
        self._file.write(np.ascontiguousarray(frame, self.dtype).tobytes())
        self._next = row + 1

    def close(self):
        if self._file is not None:
            self._file.truncate(self.offset + self.shape[0] * self.row_bytes)
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            a, b, step = index.indices(len(self))
            if step != 1:
                raise IndexError("FrameFile reads contiguous rows only")
            with open(self.path, "rb") as f:
                f.seek(self.offset + a * self.row_bytes)
                data = np.fromfile(f, self.dtype, count=max(b - a, 0) * self.row_bytes // self.dtype.itemsize)
            return data.reshape((max(b - a, 0),) + self.shape[1:])
        i = int(index) + (len(self) if int(index) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"row {index} of {self.path} ({len(self)} rows)")
        return self[i:i + 1][0]

    def __array__(self, dtype=None, copy=None):
        out = self[0:len(self)]
        return out if dtype is None else out.astype(dtype)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, dynamic_ncols=True,
                leave=False)


def detect_and_track(video: str, origin: float | None = None, info: MediaInfo | None = None,
                     detector=None, detect_every: int = 5, max_side: int = 640,
                     min_track_s: float = 1.0, merge: bool = True, progress: bool = False,
                     **track_opts) -> FaceScan:
    """Step 1 of pass 1: detections on a subset of grid frames, shot cuts, tracks.

    Arguments
    ---------
    video : str
        any video PyAV reads.
    origin : float, optional
        source time of grid frame 0 (default: the audio's start, else the video's).
    detector : avse.video.detect.FaceDetector, optional
        built with defaults when not given.
    detect_every : int
        run the detector on every ``detect_every``-th grid frame (and on each shot's first frame).
    max_side : int
        long side of the copy the detector sees.
    min_track_s, merge, track_opts
        passed to :func:`avse.video.track.track_faces`.
    """
    from avse.video.detect import FaceDetector
    from avse.video.track import is_shot_cut, thumbnail, track_faces

    info = info or probe(video)
    if origin is None:
        origin = info.audio_start if info.audio_start is not None else info.video_start
    detector = detector or FaceDetector()
    t0 = time.perf_counter()
    detections, cuts = {}, []
    prev_thumb, prev_frame, n_frames = None, None, 0
    best = (-1, None, 0, 1.0)  # (faces, image, frame, scale)
    expected = max(int(round((info.duration + info.video_start - origin) * FPS)), 1)
    with _progress(expected, "faces: detect", progress) as bar:
        for k, frame in iter_video(video, origin=origin, info=info):
            n_frames = k + 1
            bar.update(1)
            shot_start = prev_thumb is None
            if frame is not prev_frame:  # repeated source frames cannot start a shot
                thumb = thumbnail(gray_frame(frame, info.rotation))
                if prev_thumb is not None and is_shot_cut(prev_thumb, thumb):
                    cuts.append(k)
                    shot_start = True
                prev_thumb, prev_frame = thumb, frame
            if k % detect_every and not shot_start:
                continue
            image, scale = rgb_frame(frame, max_side=max_side, rotation=info.rotation)
            found = detector.detect([image], [scale])[0]
            detections[k] = found
            if len(found) > best[0]:
                best = (len(found), image, k, scale)
    if n_frames == 0:
        raise MediaError(f"{video}: no video frame at or after the audio's start")
    t1 = time.perf_counter()
    dropped: list = []
    tracks = track_faces(detections, n_frames, cuts=cuts, fps=FPS, detect_every=detect_every,
                         min_track_s=min_track_s, merge=merge, dropped=dropped, **track_opts)
    scan = FaceScan(info=info, origin=float(origin), n_frames=n_frames, tracks=tracks,
                    dropped=dropped, cuts=cuts, overview=best[1], overview_frame=best[2],
                    overview_scale=best[3])
    scan.seconds = {"detect": t1 - t0, "track": time.perf_counter() - t1,
                    "detections": len(detections)}
    return scan


def write_face_frames(scan: FaceScan, video: str, work_dir: str, tracks=None,
                      sample_only: int = 0, progress: bool = False,
                      preset: str | None = None) -> FaceScan:
    """Step 2 of pass 1: cut each track's face-centred frames into ``work_dir``.

    Arguments
    ---------
    tracks : list of int, optional
        track ids to write (default: all).
    sample_only : int
        when > 0, cut only that many evenly spaced frames per track (for ``faces.png``).
    preset : str, optional
        the crop preset the frames are for; it chooses the gray
        (:data:`avse.video.crops.PRESET_GRAY`): ``"lipread"`` converts each frame to RGB and
        applies OpenCV's gray weights (what the published lip-reading front-end saw; 3-15 ms
        more per 720p-1080p frame: ``benchmarks/face_detect.py``), the others and ``None``
        read the luma.
    """
    from avse.video.crops import FACE_SIZE, PRESET_GRAY, cut_face, face_window, to_face_coords

    if preset is not None and preset not in PRESET_GRAY:
        raise ValueError(f"write_face_frames: unknown crop preset {preset!r}; known presets: "
                         f"{', '.join(PRESET_GRAY)}")
    method = PRESET_GRAY.get(preset, "luma")

    os.makedirs(work_dir, exist_ok=True)
    wanted = [t for t in scan.tracks if tracks is None or t.id in tracks]
    rows, stores = {}, {}
    for t in wanted:
        frames = np.asarray(t.frames)
        keep = np.arange(len(frames))
        if sample_only:
            keep = np.unique(np.linspace(0, len(frames) - 1, min(sample_only, len(frames))).round()
                             .astype(int))
        path = os.path.join(work_dir, f"face{t.id}.npy")
        stores[t.id] = FrameFile.create(path, (len(keep), FACE_SIZE, FACE_SIZE))
        windows = face_window(np.asarray(t.boxes)[keep])
        lm_path = os.path.join(work_dir, f"face{t.id}_landmarks.npy")
        lms = np.asarray(t.landmarks, np.float64)[keep]
        np.save(lm_path, np.stack([to_face_coords(p, w) for p, w in zip(lms, windows)])
                .astype(np.float32).reshape(len(keep), -1, 2))
        for row, (k, w) in enumerate(zip(frames[keep], windows)):
            rows.setdefault(int(k), []).append((t.id, row, w))
        scan.face_files[t.id] = path
        scan.landmark_files[t.id] = lm_path
    t0 = time.perf_counter()
    last = max(rows) if rows else -1
    with _progress(last + 1, "faces: frames", progress) as bar:
        for k, frame in iter_video(video, origin=scan.origin, info=scan.info):
            bar.update(1)
            if k in rows:
                gray = gray_frame(frame, scan.info.rotation, method=method)
                for tid, row, window in rows[k]:
                    stores[tid].append(row, cut_face(gray, window))
            if k >= last:
                break
    for store in stores.values():
        store.close()
    scan.seconds["frames"] = time.perf_counter() - t0
    return scan


def require_faces(scan: FaceScan, video: str) -> FaceScan:
    """``scan``, or NoFaceError naming ``video`` when it kept no track."""
    if not scan.tracks:
        raise NoFaceError(f"{video}: no face found ({scan.seconds['detections']} frames examined, "
                          f"{len(scan.dropped)} track(s) shorter than the minimum dropped); "
                          "a face must be visible, frontal enough and at least ~40 px high")
    return scan


def largest_track(scan: FaceScan):
    """The track with the largest mean box."""
    def area(t):
        x0, y0, x1, y1 = t.mean_box
        return (x1 - x0) * (y1 - y0)

    return max(scan.tracks, key=area)


def scan_faces(video: str, work_dir: str, origin: float | None = None, detector=None,
               tracks=None, sample_only: int = 0, progress: bool = False, **opts) -> FaceScan:
    """Pass 1: :func:`detect_and_track`, then :func:`write_face_frames`.

    Raises
    ------
    NoFaceError when no track is kept (nothing is written).
    """
    scan = require_faces(detect_and_track(video, origin=origin, detector=detector,
                                          progress=progress, **opts), video)
    return write_face_frames(scan, video, work_dir, tracks=tracks, sample_only=sample_only,
                             progress=progress)


# --------------------------------------------------------------------------- description
def track_summary(scan: FaceScan) -> list:
    """Per track: the dict written to ``faces.json``."""
    out = []
    for t in scan.tracks:
        frames = np.asarray(t.frames)
        out.append({
            "id": int(t.id),
            "first_frame": int(frames[0]), "last_frame": int(frames[-1]),
            "first_time": round(float(frames[0]) / FPS, 3),
            "last_time": round(float(frames[-1] + 1) / FPS, 3),
            "segments": [[int(a), int(b)] for a, b in t.segments],
            "frames": int(len(frames)),
            "mean_box": [round(float(v), 1) for v in t.mean_box],
            "mean_score": round(float(t.mean_score), 4),
            "interpolated_frames": int(t.n_interpolated),
        })
    return out


def write_faces_json(scan: FaceScan, path: str, extra: dict | None = None,
                     speaking: dict | None = None) -> dict:
    """``faces.json``: the video, the grid, and one entry per track (times in seconds from
    output sample 0, i.e. ``origin``).

    ``speaking``: track id -> :func:`avse.gating.speaking_summary` of the tracks extracted by
    a model with an activity head; their entries get ``speaking_seconds``,
    ``speaking_fraction`` (of the track's on-screen time) and ``speaking_spans``
    (``[[start_s, end_s], ...]``). Other tracks (not extracted, or a model without a head)
    have none of these keys."""
    from avse.recipes.common import atomic_write

    tracks = track_summary(scan)
    for entry in tracks:
        said = (speaking or {}).get(entry["id"])
        if said is not None:
            entry.update(speaking_seconds=said["seconds"], speaking_fraction=said["fraction"],
                         speaking_spans=said["spans"])
    info = scan.info
    doc = {
        "video": info.path, "width": info.width, "height": info.height,
        "rotation": info.rotation, "source_fps": round(float(info.fps), 3), "fps": FPS,
        "origin": round(scan.origin, 6), "grid_frames": scan.n_frames,
        "shot_cuts": [int(c) for c in scan.cuts],
        "tracks": tracks,
        "dropped": [{"first_frame": int(t.frames[0]), "last_frame": int(t.frames[-1]),
                     "frames": int(len(t.frames))} for t in scan.dropped],
        **(extra or {}),
    }
    atomic_write(path, json.dumps(doc, indent=1) + "\n")
    return doc


def format_faces_table(scan: FaceScan) -> str:
    """A text table of the tracks (what ``--list_faces`` prints)."""
    lines = ["face  from (s)  to (s)  frames  interp  score   mean box [x0, y0, x1, y1]"]
    for row in track_summary(scan):
        box = ", ".join(f"{v:.0f}" for v in row["mean_box"])
        lines.append(f"{row['id']:>4}  {row['first_time']:>8.2f}  {row['last_time']:>6.2f}  "
                     f"{row['frames']:>6}  {row['interpolated_frames']:>6}  "
                     f"{row['mean_score']:.3f}   [{box}]")
    return "\n".join(lines)


def write_faces_png(scan: FaceScan, path: str, strip: int = 6, thumb: int = 96) -> str:
    """``faces.png``: the frame with the most faces, each track's mean box numbered on it,
    and under it one strip of ``strip`` face crops per track, so that a person sees which
    output is which face."""
    from PIL import Image, ImageDraw

    base = scan.overview if scan.overview is not None else np.zeros((360, 640, 3), np.uint8)
    top = Image.fromarray(np.ascontiguousarray(base))
    draw = ImageDraw.Draw(top)
    colours = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255)]
    for t in scan.tracks:
        frames = np.asarray(t.frames)
        at = np.flatnonzero(frames == scan.overview_frame)
        box = np.asarray(t.boxes)[at[0]] if len(at) else np.asarray(t.mean_box)
        x0, y0, x1, y1 = (box * scan.overview_scale).tolist()
        colour = colours[t.id % len(colours)]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=3)
        draw.text((x0 + 4, max(y0 - 14, 0)), f"face{t.id}", fill=colour)
    width = max(top.width, strip * thumb + 110)
    rows = []
    for t in scan.tracks:
        row = Image.new("RGB", (width, thumb + 4), (24, 24, 24))
        ImageDraw.Draw(row).text((6, thumb // 2 - 12), f"face{t.id}\n{t.frames[0] / FPS:.1f}-"
                                 f"{(t.frames[-1] + 1) / FPS:.1f} s",
                                 fill=colours[t.id % len(colours)])
        if t.id in scan.face_files:
            faces = scan.faces(t.id)
            pick = np.unique(np.linspace(0, len(faces) - 1, min(strip, len(faces))).round().astype(int))
            for j, r in enumerate(pick):
                crop = Image.fromarray(np.asarray(faces[r])).resize((thumb, thumb))
                row.paste(crop.convert("RGB"), (104 + j * thumb, 2))
        rows.append(row)
    out = Image.new("RGB", (width, top.height + sum(r.height for r in rows)), (24, 24, 24))
    out.paste(top, (0, 0))
    y = top.height
    for row in rows:
        out.paste(row, (0, y))
        y += row.height
    from avse.safe_io import temp_name

    tmp = temp_name(path)
    out.save(tmp)
    os.replace(tmp, path)
    return path


def clip_mouths(video: str, preset: str = "landmarks", detector=None, n_frames: int | None = None,
                **opts) -> np.ndarray:
    """Mouth crops of a face-centred clip (one speaker, as a corpus' clips are) by tracking:
    the recipes' ``--crop landmarks`` / ``--crop lipread``, the same functions as
    ``avse-extract``.

    The grid starts at the clip's first video frame. The largest track is used; grid frames
    outside it (a face found late or lost early) repeat its first / last crop.

    Returns
    -------
    ``[Tv, S, S]`` uint8 (``S = avse.video.crops.PRESET_SIZES[preset]``).

    Raises
    ------
    NoFaceError when no face track is found.
    """
    from avse.video.crops import crop_faces

    faces, landmarks, index = largest_track_faces(video, detector, n_frames, preset, **opts)
    return crop_faces(faces, preset, landmarks)[index]


def largest_track_faces(video: str, detector=None, n_frames: int | None = None,
                        preset: str | None = None, **opts):
    """The face-centred frames of a clip's largest face track (:func:`clip_mouths`, the
    recipes' ``--crop face``): ``(faces uint8 [F, 224, 224], landmarks [F, 5, 2] in face-frame
    pixels, index [Tv])``, where ``index`` maps each of the ``n_frames`` grid frames (default:
    the clip's) to a track frame, grid frames outside the track taking its first / last.
    ``preset`` as :func:`write_face_frames`. NoFaceError when no face track is found."""
    import tempfile

    info = probe(video)
    with tempfile.TemporaryDirectory(prefix="avse-clip-") as work:
        opts.setdefault("min_track_s", 0.2)
        scan = require_faces(detect_and_track(video, origin=info.video_start, info=info,
                                              detector=detector, **opts), video)
        best = largest_track(scan)
        write_face_frames(scan, video, work, tracks=[best.id], preset=preset)
        faces = np.asarray(scan.faces(best.id))
        landmarks = scan.landmarks(best.id)
    index = np.searchsorted(np.asarray(best.frames), np.arange(n_frames or scan.n_frames))
    return faces, landmarks, np.clip(index, 0, len(faces) - 1)
