"""Synthetic talking-face corpora in the VoxCeleb2, LRS2 and MUSAN layouts.

The default data of the demo: every clip is a cartoon face whose mouth follows the
synthetic speech of :mod:`avse.data.synthetic_speech` frame by frame (opening from the
syllable envelope, width / rounding from the vowel), so in a two-speaker mixture only the
lips tell which voice is the target. All speakers are drawn from one distribution.

Trees written (``OUT`` is ``out_dir``)::

    voxceleb2: OUT/{dev,test}/mp4/id<5 digits>/<11-char video id>/<5-digit clip>.mp4
               OUT/speakers.json                     speaker -> split, voice, look, videos
    lrs2:      OUT/{main,pretrain}/<19-digit video id>/<5-digit clip>.{mp4,txt}
               OUT/{pretrain,train,val,test}.txt     "<video id>/<clip>[ NF]" per line
    musan:     OUT/{music,noise,speech}/<subset>/<category>-<subset>-<4 digits>.wav

Clips are H.264 (yuv420p, 25 fps) + AAC (mono, 16 kHz) mp4 files of 3-6 s, 224x224
(VoxCeleb2) or 160x160 (LRS2), with the mouth centred in the ``MOUTH_CROPS`` box.
Every clip is seeded from ``(seed, speaker, video, clip)``: the decoded content does not
depend on ``nj``, and the same seed gives the same decoded audio and frames.

Audio/video sync: the AAC encoder delays its output by 1024 priming samples; the mp4
muxer records that in the edit list and FFmpeg's decoder (also through PyAV) drops them,
so decoded audio starts at lag 0. A short last AAC frame would come back padded to 1024
samples, so the audio track is cut or zero-padded to the nearest multiple of 1024 samples
(<= 512 samples of the trailing silence): decoded audio is within 512 samples of
``Tv * 640`` (use :func:`avse.data.align.align_av` to make it exact).

Command line::

    python tools/make_synthetic_corpus.py --out data/synth --speakers 100 --clips 10 --nj 2
"""
from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from avse.data.align import FPS, SAMPLE_RATE
from avse.data.synthetic_speech import (
    TAG_CLIP, TAG_LAYOUT, TAG_LOOK, TAG_MUSAN, Utterance, Voice, _rng, speaker_voice,
    synthesize_utterance,
)
from avse.data.video import MOUTH_CROPS, MouthCrop

try:  # progress bars are a nicety
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None

__all__ = [
    "Look", "CorpusSummary", "speaker_look", "render_face", "write_mp4", "make_voxceleb2_corpus",
    "make_lrs2_corpus", "make_musan_corpus", "main", "speaker_voice", "synthesize_utterance",
    "Utterance", "Voice",
]

VIDEO_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
CLIP_DURATION_S = (3.0, 6.0)
AAC_FRAME = 1024  # samples per AAC frame
MUSAN_SUBSETS = {"music": ("fma", "jamendo"), "noise": ("free-sound", "sound-bible"),
                 "speech": ("librivox", "us-gov")}


# ----------------------------------------------------------------------------- faces
@dataclass(frozen=True)
class Look:
    """Per-speaker appearance: RGB colours (0-255) and small geometric jitter."""

    skin: tuple
    background: tuple
    background2: tuple
    hair: tuple
    lips: tuple
    mouth: tuple
    iris: tuple
    face_scale: float  # 0.96-1.04
    face_aspect: float  # 0.94-1.06, width / height jitter
    mouth_scale: float  # 0.92-1.04, size of the mouth


def speaker_look(seed: int, speaker_index: int) -> Look:
    """Draw the appearance of speaker ``speaker_index`` (independent of its voice)."""
    rng = _rng(seed, speaker_index, TAG_LOOK)
    light, dark = np.array([236.0, 198.0, 172.0]), np.array([105.0, 70.0, 50.0])
    skin = light + rng.uniform() * (dark - light) + rng.normal(0, 6, 3)

    def colour(lo, hi):
        return tuple(float(c) for c in np.clip(rng.uniform(lo, hi, 3), 0, 255))

    lips = np.clip(skin * rng.uniform(0.55, 0.75) + np.array([45.0, 0.0, 5.0]), 0, 255)
    return Look(
        skin=tuple(float(c) for c in np.clip(skin, 0, 255)),
        background=colour(20, 235), background2=colour(20, 235), hair=colour(10, 110),
        lips=tuple(float(c) for c in lips), iris=colour(20, 120),
        mouth=(float(rng.uniform(35, 70)), float(rng.uniform(8, 25)), float(rng.uniform(12, 30))),
        face_scale=float(rng.uniform(0.96, 1.04)), face_aspect=float(rng.uniform(0.94, 1.06)),
        mouth_scale=float(rng.uniform(0.92, 1.04)),
    )


def _ellipse(img, cy, cx, ry, rx, colour, hairline=None):
    """Alpha-blend an anti-aliased filled ellipse into float image ``img [..., H, W, 3]`` in place.

    ``cy, cx`` are scalars (pixels); ``ry, rx`` scalars or arrays ``[..., 1, 1]`` matching
    the leading dims of ``img``. Only the bounding box is touched. With ``hairline``,
    only the part above that row is drawn.
    """
    h, w = img.shape[-3:-1]
    y0, y1 = max(int(cy - np.max(ry)) - 1, 0), min(int(np.ceil(cy + np.max(ry))) + 2, h)
    x0, x1 = max(int(cx - np.max(rx)) - 1, 0), min(int(np.ceil(cx + np.max(rx))) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    alpha = np.clip((1.0 - r) * np.minimum(ry, rx) + 0.5, 0.0, 1.0)
    if hairline is not None:
        alpha = alpha * np.clip(hairline - yy, 0.0, 1.0)
    a = alpha[..., None]
    sub = img[..., y0:y1, x0:x1, :]
    sub *= 1.0 - a
    sub += a * np.asarray(colour, dtype=np.float32)


@lru_cache(maxsize=16)
def _static_face(h, w, my, mx, look: Look, eyes_open: bool):
    """The still parts of the face (uint8 ``[H, W, 3]``), mouth centre at ``(my, mx)``; cached."""
    s, skin = look.face_scale, np.asarray(look.skin)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = np.empty((h, w, 3), np.float32)
    img[:] = (1 - t) * np.asarray(look.background) + t * np.asarray(look.background2)
    cy, rx, ry = my - 0.22 * h * s, 0.34 * w * s * look.face_aspect, 0.44 * h * s
    img[int(cy):, max(int(mx - 0.17 * w * s), 0):int(mx + 0.17 * w * s)] = skin * 0.8  # neck
    _ellipse(img, cy - 0.03 * h * s, mx, ry * 1.02, rx * 1.1, look.hair)
    _ellipse(img, cy, mx, ry, rx, skin)
    _ellipse(img, cy - 0.03 * h * s, mx, ry * 1.02, rx * 1.1, look.hair, hairline=cy - 0.30 * h * s)
    ey = my - 0.30 * h * s
    for side in (-1.0, 1.0):
        ex = mx + side * 0.13 * w * s
        _ellipse(img, ey - 0.055 * h * s, ex, 0.011 * h, 0.06 * w * s, look.hair)  # brow
        if eyes_open:
            _ellipse(img, ey, ex, 0.024 * h * s, 0.05 * w * s, (235, 235, 230))
            _ellipse(img, ey, ex, 0.019 * w * s, 0.019 * w * s, look.iris)
            _ellipse(img, ey, ex, 0.008 * w * s, 0.008 * w * s, (15, 15, 15))
        else:
            _ellipse(img, ey + 0.004 * h, ex, 0.006 * h, 0.05 * w * s, skin * 0.6)
    _ellipse(img, my - 0.19 * h * s, mx, 0.075 * h * s, 0.035 * w * s, skin * 0.88)  # nose
    for side in (-1.0, 1.0):
        _ellipse(img, my - 0.125 * h * s, mx + side * 0.022 * w * s, 0.008 * h * s, 0.013 * w * s, skin * 0.45)
    img = np.round(img).astype(np.uint8)
    img.flags.writeable = False
    return img


def render_face(opening, width, roundness, size=(224, 224), crop: MouthCrop = MOUTH_CROPS["voxceleb2"],
                look: Look | None = None, offset=(0, 0), blinks=None) -> np.ndarray:
    """Draw a talking face whose mouth follows the lip tracks.

    Parameters
    ----------
    opening, width, roundness : array_like
        lip tracks ``[Tv]`` in ``[0, 1]`` @25 fps (see :class:`~avse.data.synthetic_speech.Utterance`).
    size : (int, int)
        frame ``(H, W)`` in pixels.
    crop : MouthCrop
        the mouth box preset; the mouth is centred in ``crop.box(H, W)`` and its outer lip
        contour never exceeds 0.75 of the box side.
    look : Look, optional
        speaker appearance (default: ``speaker_look(0, 0)``).
    offset : (int, int)
        per-clip head shift ``(dy, dx)`` in pixels (keep it within +-2).
    blinks : array_like of bool, optional
        ``[Tv]``: frames drawn with closed eyes.

    Returns
    -------
    np.ndarray
        uint8 RGB frames ``[Tv, H, W, 3]``.
    """
    opening = np.clip(np.asarray(opening, np.float32), 0, 1)
    width = np.clip(np.asarray(width, np.float32), 0, 1)
    roundness = np.clip(np.asarray(roundness, np.float32), 0, 1)
    look = look or speaker_look(0, 0)
    h, w = size
    top, left, side = crop.box(h, w)
    my, mx = top + side / 2.0 + offset[0], left + side / 2.0 + offset[1]
    u = min(side, w * 88.0 / 224.0) * look.mouth_scale  # mouth unit, <= box side
    frames = np.empty((len(opening), h, w, 3), np.uint8)
    frames[:] = _static_face(h, w, my, mx, look, True)
    if blinks is not None and np.any(blinks):
        frames[np.asarray(blinks, bool)] = _static_face(h, w, my, mx, look, False)
    # per-frame semi-axes in pixels, [Tv, 1, 1]
    a_in = (u * (0.13 + 0.17 * width - 0.03 * roundness))[:, None, None]
    b_in = (u * (0.015 + 0.20 * opening))[:, None, None]
    a_out = a_in + (u * (0.035 + 0.03 * roundness))[:, None, None]
    b_out = b_in + (u * (0.045 + 0.03 * roundness))[:, None, None]
    half = int(np.ceil(0.375 * side)) + 2
    y0, y1 = max(int(my) - half, 0), min(int(my) + half + 1, h)
    x0, x1 = max(int(mx) - half, 0), min(int(mx) + half + 1, w)
    region = frames[:, y0:y1, x0:x1].astype(np.float32)
    _ellipse(region, my - y0, mx - x0, b_out, a_out, look.lips)
    _ellipse(region, my - y0, mx - x0, b_in, a_in, look.mouth)
    frames[:, y0:y1, x0:x1] = np.round(region).astype(np.uint8)
    return frames


# ----------------------------------------------------------------------------- mp4
def write_mp4(path, frames: np.ndarray, wav: np.ndarray, crf: int = 20, preset: str = "ultrafast"):
    """Write H.264 video and AAC mono 16 kHz audio into one mp4.

    Parameters
    ----------
    path : str or Path
        output file; written to ``path + '.tmp'`` first and renamed.
    frames : np.ndarray
        uint8 RGB ``[Tv, H, W, 3]`` @25 fps (H, W even).
    wav : np.ndarray
        float ``[T]`` @16 kHz in ``[-1, 1]``, normally ``T = Tv * 640``.

    Notes
    -----
    The audio track holds a whole number of 1024-sample AAC frames: ``wav`` is cut or
    zero-padded to the nearest multiple of 1024 (a change of at most 512 samples, less than
    one video frame). FFmpeg pads a short last AAC frame to 1024 samples on decode, so an
    exact multiple is what makes the decoded length equal the written length. The
    encoder's 1024-sample priming delay is stored in the mp4 edit list and removed by the
    decoder: decoded audio starts at lag 0.
    """
    import av

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS, options={"crf": str(crf), "preset": preset, "threads": "1"})
        vs.height, vs.width, vs.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        aus = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono", options={"aac_coder": "fast"})
        aus.bit_rate = 64000
        for k, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = k
            out.mux(vs.encode(frame))
        samples = np.clip(np.asarray(wav, np.float32), -1, 1)
        n_audio = AAC_FRAME * max(1, int(round(len(samples) / AAC_FRAME)))
        samples = np.pad(samples[:n_audio], (0, max(0, n_audio - len(samples))))
        for start in range(0, n_audio, AAC_FRAME):  # whole AAC frames, pts in samples
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + AAC_FRAME], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            out.mux(aus.encode(frame))
        out.mux(vs.encode())
        out.mux(aus.encode())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- clips
@dataclass(frozen=True)
class _ClipJob:
    path: str
    voice: Voice
    look: Look
    keys: tuple  # seed keys of the clip
    size: tuple
    crop: str
    transcript: bool = False


def _synthesize_clip(job: _ClipJob):
    """Content of one clip: ``(utterance, frames uint8 [Tv, H, W, 3], rng)``, from ``job.keys``."""
    rng = _rng(*job.keys, TAG_CLIP)
    n_frames = int(round(rng.uniform(*CLIP_DURATION_S) * FPS))
    utt = synthesize_utterance(job.voice, rng, n_frames / FPS)
    offset = tuple(int(v) for v in rng.integers(-1, 2, size=2))
    blinks = np.zeros(n_frames, bool)
    k = int(rng.integers(0, 60))
    while k < n_frames:  # ~3-frame blinks every 2-5 s
        blinks[k:k + 3] = True
        k += int(rng.integers(50, 125))
    frames = render_face(utt.opening, utt.width, utt.roundness, job.size, MOUTH_CROPS[job.crop],
                         job.look, offset, blinks)
    return utt, frames, rng


def _render_clip(job: _ClipJob):
    """Synthesize, draw and write one clip (worker entry point); returns ``(path, seconds)``."""
    utt, frames, rng = _synthesize_clip(job)
    write_mp4(job.path, frames, utt.wav)
    if job.transcript:
        Path(job.path).with_suffix(".txt").write_text(lrs2_transcript(utt, int(rng.integers(2, 10)), rng))
    return job.path, utt.duration_s


def lrs2_transcript(utt: Utterance, conf: int, rng: np.random.Generator) -> str:
    """LRS2-style transcript: ``Text:  WORDS``, ``Conf:  n``, blank line, word table (seconds)."""
    words = utt.words()
    lines = [f"Text:  {' '.join(w.text for w in words)}", f"Conf:  {conf}", "", "WORD START END ASDSCORE"]
    lines += [f"{w.text} {w.start_s:.2f} {w.end_s:.2f} {rng.uniform(2.0, 9.0):.1f}" for w in words]
    return "\n".join(lines) + "\n"


@dataclass
class CorpusSummary:
    """What a ``make_*_corpus`` call wrote: files relative to ``out_dir`` and audio duration."""

    out_dir: str
    files: list = field(default_factory=list)
    audio_seconds: float = 0.0
    elapsed_s: float = 0.0

    @property
    def n_files(self) -> int:
        return len(self.files)

    def __str__(self):
        return (f"wrote {self.n_files} files ({self.audio_seconds / 3600:.3f} h of audio) to "
                f"{self.out_dir} in {self.elapsed_s:.1f} s")


def _run_jobs(fn, jobs, nj: int, progress: bool, desc: str):
    """Map ``fn`` over ``jobs`` with ``nj`` processes; returns the results in job order."""
    bar = _tqdm(total=len(jobs), desc=desc, unit="file") if progress and _tqdm is not None else None
    results = []
    with Pool(nj) if nj > 1 else nullcontext() as pool:
        for res in pool.imap(fn, jobs, chunksize=2) if pool is not None else map(fn, jobs):
            results.append(res)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return results


def _finish(out_dir: Path, results, t0: float) -> CorpusSummary:
    files = sorted(str(Path(p).relative_to(out_dir)) for p, _ in results)
    return CorpusSummary(str(out_dir), files, float(sum(d for _, d in results)), time.time() - t0)


def _video_id(rng, taken: set) -> str:
    while True:
        vid = "".join(VIDEO_ID_CHARS[i] for i in rng.integers(0, len(VIDEO_ID_CHARS), 11))
        if vid not in taken:
            taken.add(vid)
            return vid


def _split_counts(rng, n_clips: int, n_videos: int) -> list:
    """Split ``n_clips`` over ``n_videos`` videos, at least one clip each."""
    extra = rng.multinomial(n_clips - n_videos, np.ones(n_videos) / n_videos)
    return [1 + int(e) for e in extra]


def make_voxceleb2_corpus(out_dir, n_speakers: int, n_clips: int, seed: int = 0, splits=("dev", "test"),
                          test_fraction: float = 0.15, nj: int = 1, progress: bool = True) -> CorpusSummary:
    """Write a synthetic corpus in the VoxCeleb2 mp4 layout (224x224 faces).

    Parameters
    ----------
    out_dir : str or Path
        root of the tree ``OUT/{dev,test}/mp4/idNNNNN/<video id>/NNNNN.mp4``.
    n_speakers : int
        number of speakers; ids ``id00001-id09999`` drawn from the seed.
    n_clips : int
        clips per speaker, spread over 1-3 videos of that speaker.
    seed : int
        corpus seed (>= 0); same seed -> same decoded content.
    splits : tuple of str
        ``("dev", "test")`` puts ``test_fraction`` of the speakers (at least one, and at
        least one left for dev) into ``test``; a single split gets every speaker.
    nj : int
        worker processes (the content does not depend on it).

    Returns
    -------
    CorpusSummary; ``OUT/speakers.json`` maps speaker ids to split, voice, look and videos.
    """
    t0, out_dir = time.time(), Path(out_dir)
    rng = _rng(seed, TAG_LAYOUT)
    pool = np.arange(1, 10000) if n_speakers < 9999 else np.arange(1, 100000)
    ids = [f"id{i:05d}" for i in np.sort(rng.choice(pool, n_speakers, replace=False))]
    split_of = [splits[0]] * n_speakers
    if len(splits) > 1 and n_speakers >= 2:
        n_test = min(n_speakers - 1, max(1, int(round(test_fraction * n_speakers))))
        for i in rng.permutation(n_speakers)[:n_test]:
            split_of[i] = splits[1]
    jobs, meta, taken = [], {}, set()
    for s, spk in enumerate(ids):
        voice, look = speaker_voice(seed, s), speaker_look(seed, s)
        n_vid = int(min(max(n_clips, 1), rng.integers(1, 4)))
        videos = {}
        for v, count in enumerate(_split_counts(rng, n_clips, n_vid) if n_clips > 0 else []):
            vid = _video_id(rng, taken)
            videos[vid] = [f"{c + 1:05d}" for c in range(count)]
            folder = out_dir / split_of[s] / "mp4" / spk / vid
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [_ClipJob(str(folder / f"{c + 1:05d}.mp4"), voice, look, (seed, s, v, c), (224, 224),
                              "voxceleb2") for c in range(count)]
        meta[spk] = {"split": split_of[s], "index": s, "voice": asdict(voice), "look": asdict(look),
                     "videos": videos}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speakers.json").write_text(json.dumps({"seed": seed, "speakers": meta}, indent=1))
    return _finish(out_dir, _run_jobs(_render_clip, jobs, nj, progress, "voxceleb2"), t0)


def make_lrs2_corpus(out_dir, n_videos: int, n_clips: int, seed: int = 0, n_pretrain: int | None = None,
                     nj: int = 1, progress: bool = True) -> CorpusSummary:
    """Write a synthetic corpus in the LRS2 layout (160x160 faces, transcripts, file lists).

    ``OUT/main/<19-digit id>/NNNNN.{mp4,txt}`` for ``n_videos`` videos of ``n_clips`` clips,
    ``OUT/pretrain/...`` for ``n_pretrain`` more (default ``max(1, n_videos // 4)``), and
    ``OUT/{pretrain,train,val,test}.txt`` listing ``<video id>/<clip>`` (main videos split
    80/10/10 by video, at least one each when ``n_videos >= 3``; every third test line
    ends in `` NF``). One speaker per video; transcripts spell the synthesized syllables.
    """
    t0, out_dir = time.time(), Path(out_dir)
    rng = _rng(seed, TAG_LAYOUT, 2)
    n_pretrain = max(1, n_videos // 4) if n_pretrain is None else n_pretrain
    jobs, lists, taken = [], {"pretrain": [], "train": [], "val": [], "test": []}, set()
    n_held = min(max(1, round(0.1 * n_videos)), (n_videos - 1) // 2) if n_videos >= 3 else 0
    role = ["test"] * n_held + ["val"] * n_held + ["train"] * (n_videos - 2 * n_held)
    role = [role[i] for i in rng.permutation(n_videos)] + ["pretrain"] * n_pretrain
    for v, which in enumerate(role):
        while True:
            vid = str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(0, 10, 18))
            if vid not in taken:
                taken.add(vid)
                break
        folder = out_dir / ("pretrain" if which == "pretrain" else "main") / vid
        folder.mkdir(parents=True, exist_ok=True)
        voice, look = speaker_voice(seed, v), speaker_look(seed, v)
        for c in range(n_clips):
            jobs.append(_ClipJob(str(folder / f"{c + 1:05d}.mp4"), voice, look, (seed, v, 0, c, 2),
                                 (160, 160), "lrs2", transcript=True))
            tag = " NF" if which == "test" and len(lists["test"]) % 3 == 0 else ""
            lists[which].append(f"{vid}/{c + 1:05d}{tag}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in lists.items():
        (out_dir / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    results = _run_jobs(_render_clip, jobs, nj, progress, "lrs2")
    summary = _finish(out_dir, results, t0)
    summary.files = sorted(summary.files + [f[:-4] + ".txt" for f in summary.files]
                           + [f"{name}.txt" for name in lists])
    return summary


def _render_musan(job):
    """Worker: write one MUSAN-like wav; ``job = (path, category, keys)``."""
    import soundfile as sf

    from avse.data.synthetic_speech import synthesize_babble, synthesize_music, synthesize_noise

    path, category, keys = job
    rng = _rng(*keys, TAG_MUSAN)
    duration = rng.uniform(10.5, 15.0) if keys[-1] == 0 else rng.uniform(2.0, 15.0)
    if category == "music":
        wav = synthesize_music(rng, duration)
    elif category == "noise":
        wav = synthesize_noise(rng, duration)
    else:
        voices = [speaker_voice(keys[0], 1_000_000 + 4 * keys[-1] + k) for k in range(int(rng.integers(1, 4)))]
        wav = synthesize_babble(rng, duration, voices)
    sf.write(path, wav * rng.uniform(0.3, 0.9), SAMPLE_RATE, subtype="PCM_16")
    return path, len(wav) / SAMPLE_RATE


def make_musan_corpus(out_dir, n_per_category: int, seed: int = 0, nj: int = 1,
                      progress: bool = True) -> CorpusSummary:
    """Write MUSAN-like noise: ``OUT/{music,noise,speech}/<subset>/<cat>-<subset>-NNNN.wav``.

    16 kHz mono 16-bit wav, 2-15 s (the first file of each category is longer than 10 s).
    Music: triads of harmonic tones on a beat with optional drums; noise: coloured noise,
    bursts, hum; speech: babble of 1-3 synthetic talkers (voices unused by the other corpora).
    Files alternate between the two subsets of each category.
    """
    t0, out_dir = time.time(), Path(out_dir)
    jobs = []
    for c, (category, subsets) in enumerate(MUSAN_SUBSETS.items()):
        for i in range(n_per_category):
            subset = subsets[i % len(subsets)]
            folder = out_dir / category / subset
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{category}-{subset}-{i // len(subsets):04d}.wav"
            jobs.append((str(folder / name), category, (seed, c, i)))
    return _finish(out_dir, _run_jobs(_render_musan, jobs, nj, progress, "musan"), t0)


def main(argv=None) -> int:
    """Command line: ``--out DIR --speakers N --clips M --seed S [--layout L] [--nj J]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--layout", choices=("voxceleb2", "lrs2", "musan"), default="voxceleb2")
    parser.add_argument("--speakers", type=int, default=10, help="speakers (lrs2: videos; musan: unused)")
    parser.add_argument("--clips", type=int, default=10,
                        help="clips per speaker (lrs2: per video; musan: files per category)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nj", type=int, default=min(4, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--test-fraction", type=float, default=0.15, help="voxceleb2: test speakers")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.no_progress
    if args.layout == "voxceleb2":
        summary = make_voxceleb2_corpus(args.out, args.speakers, args.clips, args.seed,
                                        test_fraction=args.test_fraction, nj=args.nj, progress=progress)
    elif args.layout == "lrs2":
        summary = make_lrs2_corpus(args.out, args.speakers, args.clips, args.seed, nj=args.nj, progress=progress)
    else:
        summary = make_musan_corpus(args.out, args.clips, args.seed, nj=args.nj, progress=progress)
    print(summary)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
