"""Test and demo videos built from a real photograph, with talking mouths in sync with voices.

A scene is a textured background with any number of pasted faces: the face of the astronaut
photo (``skimage.data.astronaut()``, NASA, public domain; the one human photo shipped with
scikit-image), cut with a soft elliptical mask, scaled, flipped, tinted and moved as each
:class:`FaceSpec` asks. Over the photo's (smiling) mouth the synthetic corpus's mouth is
drawn (:func:`avse.data.synthetic.faces.draw_mouth`, lip colour from the photo's lips),
driven by the lip tracks of that face's synthetic voice, so the mouth moves with the speech
of that face and a real face detector (MTCNN) finds the faces.

:func:`write_scene` streams: frames are drawn and encoded one at a time (H.264 + AAC with
PyAV), so scenes of any length fit in memory; only the audio (``[n_faces, T]`` @16 kHz) is
held. :class:`SceneTruth` says what was written: the clean speech of each face, the
soundtrack, when each face is on screen and where its box and landmarks are.

Example
-------
>>> import os, tempfile
>>> truth = two_face_scene(os.path.join(tempfile.mkdtemp(), "two.mp4"), duration_s=1.0, late_start=0.5)
>>> truth.sources.shape, truth.spans[1][:2], truth.boxes[1].shape
((2, 16000), (13, 24), (12, 4))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import numpy as np
from PIL import Image

from avse.data.align import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from avse.data.synthetic.faces import draw_mouth
from avse.data.synthetic.speech import NEUTRAL_ROUNDNESS, NEUTRAL_WIDTH, seeded_rng, speaker_voice, \
    synthesize_utterance

TAG_SCENE = 11  # seed namespace of scene speech (see avse.data.synthetic.speech TAG_*)
AAC_FRAME = 1024

# facenet-pytorch 2.5.3 MTCNN on skimage.data.astronaut() (512x512 RGB), probability 0.99999:
ASTRONAUT_BOX = (181.05, 62.16, 267.75, 172.05)  # x0, y0, x1, y1
ASTRONAUT_LANDMARKS = ((205.01, 101.73), (246.76, 103.71), (224.67, 128.96),  # eyes, nose,
                       (201.72, 139.25), (245.27, 141.86))  # mouth corners (picture left first)
_PATCH = (130, 14, 320, 234)  # x0, y0, x1, y1 cut around the head (hair to neck)
_HEAD = (225.0, 122.0, 84.0, 100.0)  # cx, cy, rx, ry of the soft elliptical mask
_COVER = (223.5, 144.0, 27.0, 12.0)  # cx, cy, rx, ry: skin painted over the photo's smile
_LIPS_AT = (slice(149, 153), slice(215, 233))  # lower lip (rows, cols)
_SKIN_AT = (slice(157, 166), slice(212, 236))  # chin


@dataclass
class FaceSpec:
    """One pasted face: its size, motion, time on screen, look and voice.

    Attributes
    ----------
    height : float
        face box height in output pixels (the MTCNN box of the pasted photo).
    start_xy, end_xy : tuple
        face box centre ``(x, y)`` in output pixels at ``t_start`` and at ``t_end``
        (linear motion in between).
    t_start, t_end : float
        on screen during ``[t_start, t_end)`` seconds; ``t_end=None`` = end of the scene.
    flip : bool
        mirror the face left-right.
    tint : tuple
        RGB multipliers of the face (e.g. ``(1.1, 0.95, 0.85)``).
    speaker : int
        synthetic voice index: ``speaker_voice(seed, speaker)``.
    speaks : bool
        False: a silent face (closed mouth, zero source).
    """

    height: float
    start_xy: tuple
    end_xy: tuple
    t_start: float = 0.0
    t_end: float | None = None
    flip: bool = False
    tint: tuple = (1.0, 1.0, 1.0)
    speaker: int = 0
    speaks: bool = True


@dataclass
class SceneTruth:
    """What :func:`write_scene` wrote (audio arrays @16 kHz, positions in displayed pixels).

    Attributes
    ----------
    path : str
    fps : float
        video frame rate (frame ``i`` shows time ``i / fps``).
    size : tuple
        displayed ``(H, W)`` (after the display rotation).
    duration : float
        seconds (``n_frames / fps``).
    sample_rate : int
        16000, the rate of ``sources`` and ``mixture``.
    sources : np.ndarray
        float32 ``[n_faces, T]``: each face's clean speech placed in time, zero while the
        face is off screen, scaled by the same gain as the mixture.
    mixture : np.ndarray
        float32 ``[T]``: the soundtrack, ``sources.sum(0) + click``, peak 0.9. The file holds
        it resampled to ``audio_rate``, on ``audio_channels`` identical channels, zero-padded
        to whole 1024-sample AAC frames.
    spans : list
        per face ``(first_frame, last_frame, t_start, t_end)``: the 25 fps grid frames on
        screen (inclusive) and the seconds.
    boxes : list
        per face float ``[last - first + 1, 4]`` true boxes ``(x0, y0, x1, y1)`` on those
        grid frames (:meth:`box_at` gives any time).
    landmarks : list
        per face ``[last - first + 1, 5, 2]`` true MTCNN-style landmarks on the grid frames.
    click_time : float or None
        time of the click (snapped to its 25 fps grid frame), flash on that frame.
    """

    path: str
    fps: float
    size: tuple
    duration: float
    sample_rate: int
    sources: np.ndarray
    mixture: np.ndarray
    spans: list
    boxes: list
    click_time: float | None
    landmarks: list = field(default_factory=list)
    faces: list = field(default_factory=list)
    n_frames: int = 0
    audio_rate: int = SAMPLE_RATE
    audio_channels: int = 1
    rotation: int = 0

    def box_at(self, face: int, t: float):
        """True box ``(x0, y0, x1, y1)`` of face ``face`` at ``t`` seconds, None when off screen."""
        sprite = _sprite_of(self.faces[face])
        pos = _offset(self.faces[face], sprite, t, self.duration)
        return None if pos is None else tuple(np.add(sprite.box, [pos[0], pos[1], pos[0], pos[1]]))


# ----------------------------------------------------------------------------- the face sprite
def _load_astronaut() -> np.ndarray:
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("avse.video.scenes needs scikit-image for its photo: pip install scikit-image") from err
    return data.astronaut()


def _soft_ellipse(h, w, cx, cy, rx, ry, feather) -> np.ndarray:
    """Alpha ``[h, w]`` in [0, 1]: 1 inside the ellipse, a linear ramp ``feather`` px wide."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1.0 - r) * min(rx, ry) / feather + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class _Sprite:
    premult: np.ndarray  # float32 [h, w, 3]: rgb * alpha
    keep: np.ndarray  # float32 [h, w, 1]: 1 - alpha
    box: tuple  # x0, y0, x1, y1 in sprite pixels
    landmarks: np.ndarray  # [5, 2] in sprite pixels, picture-left first
    mouth: tuple  # cx, cy in sprite pixels
    unit: float  # draw_mouth unit in pixels
    lips: tuple
    inner: tuple


@lru_cache(maxsize=32)
def _sprite(height: float, flip: bool, tint: tuple) -> _Sprite:
    """The astronaut's head scaled so that its face box is ``height`` px tall (cached)."""
    photo = _load_astronaut().astype(np.float32)
    lips = photo[_LIPS_AT].reshape(-1, 3).mean(0)
    skin = photo[_SKIN_AT].reshape(-1, 3).mean(0)
    x0, y0, x1, y1 = _PATCH
    rgb = photo[y0:y1, x0:x1].copy()
    cx, cy, rx, ry = _COVER
    a = _soft_ellipse(y1 - y0, x1 - x0, cx - x0, cy - y0, rx, ry, 4.0)[..., None]
    rgb = rgb * (1 - a) + skin * a  # hide the smile: the drawn mouth replaces it
    cx, cy, rx, ry = _HEAD
    alpha = _soft_ellipse(y1 - y0, x1 - x0, cx - x0, cy - y0, rx, ry, 10.0)
    k = float(height) / (ASTRONAUT_BOX[3] - ASTRONAUT_BOX[1])
    w, h = max(1, int(round((x1 - x0) * k))), max(1, int(round((y1 - y0) * k)))
    kx, ky = w / (x1 - x0), h / (y1 - y0)
    rgb = np.stack([np.asarray(Image.fromarray(rgb[..., c]).resize((w, h), Image.BILINEAR)) for c in range(3)], -1)
    alpha = np.asarray(Image.fromarray(alpha).resize((w, h), Image.BILINEAR))
    box = np.array(ASTRONAUT_BOX) - [x0, y0, x0, y0]
    box = box * [kx, ky, kx, ky]
    lms = (np.array(ASTRONAUT_LANDMARKS) - [x0, y0]) * [kx, ky]
    if flip:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
        box = np.array([w - box[2], box[1], w - box[0], box[3]])
        lms[:, 0] = w - lms[:, 0]
        lms = lms[[1, 0, 2, 4, 3]]  # keep picture-left first
    tint = np.asarray(tint, np.float32)
    rgb = np.clip(rgb * tint, 0, 255)
    mouth = lms[3:5].mean(0)
    width = np.linalg.norm(lms[4] - lms[3])
    lip_colour = np.clip(lips * [0.9, 0.72, 0.72] * tint, 0, 255)
    return _Sprite(premult=np.ascontiguousarray(rgb * alpha[..., None]), keep=(1 - alpha)[..., None],
                   box=tuple(box), landmarks=lms, mouth=(float(mouth[0]), float(mouth[1])),
                   unit=float(width / 0.534),  # draw_mouth's closed neutral mouth is 0.534 unit wide
                   lips=tuple(lip_colour), inner=tuple(np.clip(np.array([60.0, 22.0, 28.0]) * tint, 0, 255)))


def _sprite_of(spec: FaceSpec) -> _Sprite:
    return _sprite(float(spec.height), bool(spec.flip), tuple(float(c) for c in spec.tint))


def _window(spec: FaceSpec, duration: float):
    t_end = duration if spec.t_end is None else min(float(spec.t_end), duration)
    return float(spec.t_start), t_end


def _offset(spec: FaceSpec, sprite: _Sprite, t: float, duration: float):
    """Integer top-left ``(x, y)`` of the sprite at time ``t``, or None when off screen."""
    t0, t1 = _window(spec, duration)
    if not t0 - 1e-9 <= t < t1 - 1e-9:
        return None
    a = 0.0 if t1 <= t0 else (t - t0) / (t1 - t0)
    x = (1 - a) * spec.start_xy[0] + a * spec.end_xy[0]
    y = (1 - a) * spec.start_xy[1] + a * spec.end_xy[1]
    bcx, bcy = (sprite.box[0] + sprite.box[2]) / 2, (sprite.box[1] + sprite.box[3]) / 2
    return int(round(x - bcx)), int(round(y - bcy))


def _paste(frame: np.ndarray, sprite: _Sprite, pos, lips) -> None:
    """Composite ``sprite`` at top-left ``pos`` into uint8 ``frame [H, W, 3]`` and draw its mouth."""
    h, w = sprite.keep.shape[:2]
    fx0, fy0 = max(pos[0], 0), max(pos[1], 0)
    fx1, fy1 = min(pos[0] + w, frame.shape[1]), min(pos[1] + h, frame.shape[0])
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sx0, sy0 = fx0 - pos[0], fy0 - pos[1]
    sub = (slice(sy0, sy0 + fy1 - fy0), slice(sx0, sx0 + fx1 - fx0))
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    region *= sprite.keep[sub]
    region += sprite.premult[sub]
    opening, width, roundness = (np.float32(v) for v in lips)
    draw_mouth(region, sprite.mouth[1] - sy0, sprite.mouth[0] - sx0, sprite.unit, opening, width, roundness,
               sprite.lips, sprite.inner)
    frame[fy0:fy1, fx0:fx1] = np.round(region).astype(np.uint8)


@lru_cache(maxsize=4)
def _background(h: int, w: int, seed: int) -> np.ndarray:
    """A textured backdrop ``[h, w, 3]`` uint8: two-way colour gradient, blotches, faint stripes."""
    rng = seeded_rng(seed, TAG_SCENE, 99)
    c = rng.uniform(40, 200, (4, 3)).astype(np.float32)
    v = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    u = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    img = (1 - v) * ((1 - u) * c[0] + u * c[1]) + v * ((1 - u) * c[2] + u * c[3])
    coarse = rng.normal(0, 1, (max(2, h // 40), max(2, w // 40), 3)).astype(np.float32)
    blot = np.stack([np.asarray(Image.fromarray(coarse[..., k]).resize((w, h), Image.BICUBIC)) for k in range(3)], -1)
    img += 22 * blot
    yy, xx = np.mgrid[0:h, 0:w]
    img += (6 * np.sin((xx + 0.6 * yy) * (2 * np.pi / 23)))[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    img.flags.writeable = False
    return img


# ----------------------------------------------------------------------------- speech
def _speech(spec: FaceSpec, index: int, seed: int, duration: float, n_samples: int):
    """Clean speech ``[n_samples]`` and lip tracks ``[3, n_grid]`` (opening, width, roundness)."""
    n_grid = int(np.ceil(duration * FPS - 1e-9))
    wav = np.zeros(n_samples, np.float32)
    tracks = np.empty((3, n_grid), np.float32)
    tracks[0], tracks[1], tracks[2] = 0.0, NEUTRAL_WIDTH, NEUTRAL_ROUNDNESS
    if not spec.speaks:
        return wav, tracks
    t0, t1 = _window(spec, duration)
    first = int(np.ceil(t0 * FPS - 1e-9))  # grid frames wholly inside [t0, t1) and the audio
    end = min(int(np.floor(t1 * FPS + 1e-9)), n_samples // SAMPLES_PER_FRAME)
    voice = speaker_voice(seed, spec.speaker)
    rng = seeded_rng(seed, TAG_SCENE, index)
    cursor = first + int(rng.integers(3, 10))
    while end - cursor >= 12:  # at least 0.5 s of room
        n = min(int(rng.integers(50, 101)), end - cursor)  # 2-4 s
        utt = synthesize_utterance(voice, rng, n / FPS)
        s = cursor * SAMPLES_PER_FRAME
        wav[s:s + len(utt.wav)] = utt.wav
        tracks[:, cursor:cursor + n] = utt.opening, utt.width, utt.roundness
        cursor += n + int(rng.integers(5, 16))  # 0.2-0.6 s pause
    return wav, tracks


def _click(n: int) -> np.ndarray:
    """A 5 ms decaying noise click, peak 1."""
    x = np.random.default_rng(1234).uniform(-1, 1, n) * np.exp(-np.arange(n) / (n / 4))
    return (x / np.max(np.abs(x))).astype(np.float32)


# ----------------------------------------------------------------------------- writer
def write_scene(path, faces: list, duration_s: float, size=(360, 640), fps: float = 25, seed: int = 0,
                audio_rate: int = SAMPLE_RATE, audio_channels: int = 1, rotation: int = 0,
                click_at: float | None = None, background=None, crf: int = 23) -> SceneTruth:
    """Write an mp4 scene of talking astronaut faces and return its ground truth.

    Each speaking face gets synthetic utterances of its voice, 2-4 s each with 0.2-0.6 s
    pauses, over the grid frames wholly inside its on-screen span; its mouth follows the
    utterances' lip tracks (interpolated to the frame times when ``fps != 25``). All
    utterances are synthesized (no bank of repeats: ~6 ms per 3 s utterance, so 20 minutes of
    speech per face cost ~3 s). Written to ``path + '.tmp'`` and renamed.

    Parameters
    ----------
    path : str or Path
        output mp4.
    faces : list of FaceSpec
        may be empty (a video without a face).
    duration_s : float
        seconds; ``round(duration_s * fps)`` frames, frame ``i`` at ``i / fps`` s.
    size : (int, int)
        displayed ``(H, W)``, both even.
    fps : float
        video frame rate (any positive value; stored as a fraction, e.g. 30000/1001).
    seed : int
        voices are ``speaker_voice(seed, spec.speaker)``; the background and speech are seeded.
    audio_rate, audio_channels : int
        the soundtrack's rate (resampled from 16 kHz) and number of (identical) channels.
    rotation : int
        0, 90, 180 or 270: frames are stored rotated and the display rotation is set
        (:func:`avse.video.media.set_display_rotation`), so players and decoders that
        apply it show the upright scene.
    click_at : float, optional
        seconds: a click in the soundtrack at the start of the 25 fps grid frame holding
        this time, and a white square (top-left corner) on the video frames of that grid frame.
    background : np.ndarray, optional
        uint8 ``[H, W, 3]`` backdrop; default a seeded textured gradient.
    crf : int
        x264 quality (ultrafast preset).

    Returns
    -------
    SceneTruth

    Notes
    -----
    Cost (one x264 thread, 2 faces, 1280x720): about 16 s of CPU per minute of video, encoding
    two thirds of it; memory is the audio only (about 270 MB for 3 minutes, ~0.7 GB for 20).

    Example
    -------
    >>> import os, tempfile
    >>> spec = FaceSpec(height=120, start_xy=(320, 170), end_xy=(330, 170), t_start=0.2)
    >>> truth = write_scene(os.path.join(tempfile.mkdtemp(), "one.mp4"), [spec], 0.6, fps=30)
    >>> truth.n_frames, truth.spans[0][:2], bool(truth.sources[0, :3200].any())
    (18, (5, 14), False)
    """
    import av

    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0 or h % 2 or w % 2:
        raise ValueError(f"write_scene: size must be positive even (H, W) for H.264 yuv420p, got {size}")
    if audio_channels not in (1, 2):
        raise ValueError(f"write_scene: audio_channels must be 1 or 2, got {audio_channels}")
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"write_scene: rotation must be 0, 90, 180 or 270, got {rotation}")
    if not fps > 0 or not duration_s > 0:
        raise ValueError(f"write_scene: fps and duration_s must be > 0, got fps={fps}, duration_s={duration_s}")
    for i, spec in enumerate(faces):
        if not isinstance(spec, FaceSpec) or not spec.height > 0:
            raise ValueError(f"write_scene: faces[{i}] must be a FaceSpec with height > 0, got {spec!r}")
    rate = Fraction(fps).limit_denominator(1001)
    n_frames = max(1, int(round(duration_s * float(rate))))
    duration = n_frames / float(rate)
    n_samples = int(round(duration * SAMPLE_RATE))
    if background is None:
        backdrop = _background(h, w, seed)
    else:
        backdrop = np.asarray(background)
        if backdrop.shape != (h, w, 3) or backdrop.dtype != np.uint8:
            raise ValueError(f"write_scene: background must be uint8 [{h}, {w}, 3], got {backdrop.dtype} {backdrop.shape}")

    # audio and lip tracks
    sprites = [_sprite_of(s) for s in faces]
    speech = [_speech(s, i, seed, duration, n_samples) for i, s in enumerate(faces)]
    sources = np.stack([sp[0] for sp in speech]) if faces else np.zeros((0, n_samples), np.float32)
    mixture = sources.sum(0)
    click_time, flash = None, set()
    if click_at is not None:
        k = int(np.floor(click_at * FPS + 1e-9))
        if not 0 <= k * SAMPLES_PER_FRAME < n_samples:
            raise ValueError(f"write_scene: click_at={click_at} is outside the scene (0..{duration:.3f} s)")
        click_time = k / FPS
        c = _click(80)[: n_samples - k * SAMPLES_PER_FRAME]
        clk = np.zeros(n_samples, np.float32)
        clk[k * SAMPLES_PER_FRAME:k * SAMPLES_PER_FRAME + len(c)] = c
        mixture = mixture + clk
        times = np.arange(n_frames) / float(rate)
        flash = set(np.nonzero((times >= click_time - 1e-9) & (times < click_time + 1 / FPS - 1e-9))[0].tolist())
        flash = flash or {int(np.argmin(np.abs(times - click_time)))}
    peak = float(np.max(np.abs(mixture))) if n_samples else 0.0
    gain = 0.9 / peak if peak > 0 else 1.0
    sources, mixture = (sources * gain).astype(np.float32), (mixture * gain).astype(np.float32)

    from avse.video.media import resample

    track_audio = resample(mixture, SAMPLE_RATE, int(audio_rate)).astype(np.float32)
    n_audio = AAC_FRAME * max(1, int(np.ceil(len(track_audio) / AAC_FRAME)))
    track_audio = np.pad(track_audio, (0, n_audio - len(track_audio)))

    # truth on the 25 fps grid
    spans, boxes, landmarks = [], [], []
    n_grid = int(np.ceil(duration * FPS - 1e-9))
    for spec, sprite in zip(faces, sprites):
        t0, t1 = _window(spec, duration)
        first, last = int(np.ceil(t0 * FPS - 1e-9)), min(int(np.ceil(t1 * FPS - 1e-9)) - 1, n_grid - 1)
        offs = [_offset(spec, sprite, k / FPS, duration) for k in range(first, last + 1)]
        offs = np.array([o for o in offs if o is not None], np.float64).reshape(-1, 2)
        spans.append((first, last, t0, t1))
        boxes.append(np.asarray(sprite.box)[None] + np.tile(offs, 2))
        landmarks.append(sprite.landmarks[None] + offs[:, None])

    # video, streamed
    tmp = f"{os.fspath(path)}.tmp"
    stored_hw = (w, h) if rotation in (90, 270) else (h, w)
    square = max(8, h // 12)
    with av.open(tmp, "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "ultrafast", "threads": "1"})
        vs.height, vs.width, vs.pix_fmt = stored_hw[0], stored_hw[1], "yuv420p"
        layout = "mono" if audio_channels == 1 else "stereo"
        aus = out.add_stream("aac", rate=int(audio_rate), layout=layout, options={"aac_coder": "fast"})
        aus.bit_rate = 64000 * audio_channels
        sent, grid = 0, np.arange(n_grid)
        for i in range(n_frames):
            t = i / float(rate)
            frame = backdrop.copy()
            for spec, sprite, (_, tracks) in zip(faces, sprites, speech):
                pos = _offset(spec, sprite, t, duration)
                if pos is not None:
                    lips = [np.interp(t * FPS, grid, tr) for tr in tracks]
                    _paste(frame, sprite, pos, lips)
            if i in flash:
                frame[:square, :square] = 255
            if rotation:
                frame = np.rot90(frame, k=-(rotation // 90))
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
            upto = min(n_audio, int(np.ceil((i + 1) / float(rate) * audio_rate / AAC_FRAME)) * AAC_FRAME)
            sent = _send_audio(out, aus, track_audio, sent, upto, audio_channels, layout, int(audio_rate))
        out.mux(vs.encode())
        _send_audio(out, aus, track_audio, sent, n_audio, audio_channels, layout, int(audio_rate))
        out.mux(aus.encode())
    if rotation:
        from avse.video.media import set_display_rotation

        set_display_rotation(tmp, rotation)
    os.replace(tmp, path)
    return SceneTruth(path=os.fspath(path), fps=float(rate), size=(h, w), duration=duration,
                      sample_rate=SAMPLE_RATE, sources=sources, mixture=mixture, spans=spans, boxes=boxes,
                      click_time=click_time, landmarks=landmarks, faces=list(faces), n_frames=n_frames,
                      audio_rate=int(audio_rate), audio_channels=int(audio_channels), rotation=rotation)


def _send_audio(out, stream, audio, start, stop, channels, layout, rate) -> int:
    """Encode whole AAC frames of ``audio [n]`` from sample ``start`` to ``stop``; return ``stop``."""
    import av

    for s in range(start, stop, AAC_FRAME):
        chunk = np.ascontiguousarray(np.repeat(audio[None, s:s + AAC_FRAME], channels, axis=0))
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, s
        out.mux(stream.encode(frame))
    return max(start, stop)


def two_face_scene(path, duration_s: float = 8.0, size=(360, 640), seed: int = 0, late_start: float = 3.0,
                   **kwargs) -> SceneTruth:
    """Two talking faces: face 0 on the left for the whole clip, face 1 (another voice,
    mirrored and tinted) entering on the right at ``late_start`` s. Faces are ~0.4 of the
    frame height and drift slowly. Extra keyword arguments go to :func:`write_scene`.

    Example
    -------
    >>> import os, tempfile
    >>> truth = two_face_scene(os.path.join(tempfile.mkdtemp(), "two.mp4"), duration_s=0.4, late_start=0.2)
    >>> [span[:2] for span in truth.spans]
    [(0, 9), (5, 9)]
    """
    h, w = size
    faces = [FaceSpec(height=0.40 * h, start_xy=(0.27 * w, 0.45 * h), end_xy=(0.30 * w, 0.47 * h), speaker=0),
             FaceSpec(height=0.36 * h, start_xy=(0.74 * w, 0.42 * h), end_xy=(0.71 * w, 0.44 * h),
                      t_start=late_start, flip=True, tint=(1.08, 0.94, 0.86), speaker=1)]
    return write_scene(path, faces, duration_s, size=size, seed=seed, **kwargs)
