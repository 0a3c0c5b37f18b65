"""The synthetic corpora in the VoxCeleb2, LRS2 and MUSAN layouts, and their command line.

See :mod:`avse.data.synthetic` for the trees written and how clips are seeded.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from avse.data.align import FPS, SAMPLE_RATE
from avse.data.synthetic.faces import Look, render_face, speaker_look, write_mp4
from avse.data.synthetic.speech import (TAG_CLIP, TAG_LAYOUT, TAG_MUSAN, Utterance, Voice, seeded_rng,
                                        speaker_voice, synthesize_utterance)
from avse.video.media import MOUTH_CROPS

try:  # progress bars are a nicety
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None

VIDEO_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
CLIP_DURATION_S = (3.0, 6.0)
MUSAN_SUBSETS = {"music": ("fma", "jamendo"), "noise": ("free-sound", "sound-bible"),
                 "speech": ("librivox", "us-gov")}


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
    rng = seeded_rng(*job.keys, TAG_CLIP)
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
    rng = seeded_rng(seed, TAG_LAYOUT)
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
    rng = seeded_rng(seed, TAG_LAYOUT, 2)
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

    from avse.data.synthetic.speech import synthesize_babble, synthesize_music, synthesize_noise

    path, category, keys = job
    rng = seeded_rng(*keys, TAG_MUSAN)
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
    parser = argparse.ArgumentParser(description="Write a synthetic talking-face corpus (VoxCeleb2, LRS2 or MUSAN layout).",
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
