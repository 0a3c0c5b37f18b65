"""A tiny GRID tree in the distributed layouts, from a real face photograph.

Videos: MPEG-1 (PyAV's ``mpeg1video`` in an ``.mpg`` program stream), 360x288 at 25 fps,
the astronaut's face of ``skimage.data.astronaut()`` drifting a few pixels; audio: 25 kHz
(or 50 kHz) wav of tones and noise; alignments in 25 kHz samples with sil / sp entries.
"""
from __future__ import annotations

import os

import numpy as np

WIDTH, HEIGHT, FPS = 360, 288, 25
N_FRAMES = 26  # 1.04 s: above the 1 s minimum duration
# speaker -> (video folder relative to the corpus, audio folder, audio rate, utterances)
# s1 and s2 both say "BIN BLUE AT F TWO NOW" (GRID sentences repeat across speakers)
SPEAKERS = {
    "s1": ("s1", "audio_25k", 25000,
           {"bbaf2n": "bin blue at f two now", "lgwz5a": "lay green with z five again"}),
    "s2": ("s2/video/mpg_6000", "audio_25k", 25000,
           {"bbaf2n": "bin blue at f two now", "pris9p": "place red in s nine please"}),
    "s3": ("s3.mpg_vcd/s3", "audio_50k", 50000,
           {"sgbc4s": "set green by c four soon", "bwaa1n": "bin white at a one now"}),
}
CORRUPT = ("s3", "swwx8a")  # an mpg of random bytes (with its wav and alignment)
BAD_ALIGN = ("s1", "pbbu7p")  # a good video whose alignment has a malformed line


def _frames(seed: int, n_frames: int = N_FRAMES):
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut()).crop((60, 0, 435, 300)).resize((WIDTH, HEIGHT))
    base = np.asarray(photo)
    rng = np.random.default_rng(seed)
    dx = np.cumsum(rng.integers(-1, 2, n_frames))
    return [np.roll(base, int(d), axis=1) for d in dx]


def write_mpg(path: str, seed: int = 0, n_frames: int = N_FRAMES) -> None:
    import av

    with av.open(path, "w", format="mpeg") as out:
        vs = out.add_stream("mpeg1video", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        vs.bit_rate = 2_000_000
        for i, frame in enumerate(_frames(seed, n_frames)):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
        out.mux(vs.encode())


def write_wav(path: str, rate: int, seed: int = 0, n_frames: int = N_FRAMES) -> None:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(n_frames / FPS * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.05 * rng.standard_normal(len(t))
    sf.write(path, wav.astype(np.float32), rate, subtype="PCM_16")


def align_text(sentence: str, n_frames: int = N_FRAMES) -> str:
    """GRID alignment lines: sil, the words (sp between two), sil; 1000 samples a frame."""
    lines, t = ["0 3000 sil"], 3000
    for n, word in enumerate(sentence.split()):
        if n == 2:
            lines.append(f"{t} {t + 500} sp")
            t += 500
        lines.append(f"{t} {t + 3500} {word}")
        t += 3500
    lines.append(f"{t} {n_frames * 1000} sil")
    return "\n".join(lines) + "\n"


def make_grid_corpus(root: str) -> dict:
    """Write the tree under ``root``; returns ``{"good": {key: sentence}, "bad": {key: why}}``."""
    good, seed = {}, 0
    for spk, (vdir, adir, rate, utts) in SPEAKERS.items():
        extra = {}
        if spk == CORRUPT[0]:
            extra[CORRUPT[1]] = "place white with x eight again"
        if spk == BAD_ALIGN[0]:
            extra[BAD_ALIGN[1]] = "place blue by u seven please"
        for utt, sentence in {**utts, **extra}.items():
            for d in (vdir, f"{adir}/{spk}", f"alignments/{spk}"):
                os.makedirs(os.path.join(root, d), exist_ok=True)
            mpg = os.path.join(root, vdir, utt + ".mpg")
            if (spk, utt) == CORRUPT:
                with open(mpg, "wb") as f:
                    f.write(np.random.default_rng(5).bytes(4000))
            else:
                write_mpg(mpg, seed)
            write_wav(os.path.join(root, adir, spk, utt + ".wav"), rate, seed)
            text = align_text(sentence)
            if (spk, utt) == BAD_ALIGN:
                text = text.replace("sp\n", "sp extra\n")
            with open(os.path.join(root, "alignments", spk, utt + ".align"), "w") as f:
                f.write(text)
            if utt in utts:
                good[f"{spk}/test/{utt}"] = sentence
            seed += 1
    # s21 style: a speaker with audio and alignments but no video is not scanned
    os.makedirs(os.path.join(root, "audio_25k", "s21"), exist_ok=True)
    write_wav(os.path.join(root, "audio_25k", "s21", "bbaf3s.wav"), 25000, 9)
    bad = {f"{CORRUPT[0]}/test/{CORRUPT[1]}": "cannot open",
           f"{BAD_ALIGN[0]}/test/{BAD_ALIGN[1]}": "malformed alignment"}
    return {"good": good, "bad": bad}
