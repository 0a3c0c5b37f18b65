"""A tiny TCD-TIMIT tree for the recipe tests: the astronaut's face (skimage) in 1920x1080
H.264 clips at 29.97 fps with AAC audio, about a second each.

Layout (:func:`make_tcdtimit_tree`)::

    volunteers/01M/Clips/straightcam/{sa1,sx12,si1000}.mp4   si1000: corrupt bytes
    volunteers/02F/Clips/straightcam/{sa1,si21}.mp4 + {sa1,si21}.wav   wav next to the clip
    lipspeakers/Lipspkr1/Clips/straightcam/{sa1,sx99}.mp4
    lipspeakers/Lipspkr1/audio/{sa1,sx99}.wav                        wav in an audio folder

Every clip is one encoded mp4 copied (1080p encoding is the slow part), its audio a tone;
the separate wav files carry another tone (so a test can tell which one the recipe took).
:data:`PROMPTS` is a TIMIT-style ``PROMPTS.TXT`` (``;`` comments, ``<text> (<id>)`` lines)
with every fixture sentence but ``si21`` (:func:`write_prompts`).
"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

W, H = 1920, 1080
RATE = Fraction(30000, 1001)
SR = 48000
SPEC = {  # (top folder, speaker folder, sentences, where the wav files go)
    "01M": ("volunteers", "01M", ("sa1", "sx12"), None),
    "02F": ("volunteers", "02F", ("sa1", "si21"), "clip"),
    "Lipspkr1": ("lipspeakers", "Lipspkr1", ("sa1", "sx99"), "audio"),
}
MP4_TONE, WAV_TONE = 220.0, 660.0
PROMPTS = """\
; TIMIT-style sentence prompts: <sentence text> (<sentence id>)
;
She had your dark suit in greasy wash water all year. (sa1)
Don't ask me to carry an oily rag like that. (sa2)
The fish-hook was lost, "quickly" she said. (sx12)

Why yell or worry over silly items? (sx99)
"""
TEXTS = {"sa1": "SHE HAD YOUR DARK SUIT IN GREASY WASH WATER ALL YEAR",
         "sx12": "THE FISH HOOK WAS LOST QUICKLY SHE SAID",
         "sx99": "WHY YELL OR WORRY OVER SILLY ITEMS"}  # PROMPTS normalised; si21 has none


def write_prompts(path: str) -> str:
    with open(path, "w") as f:
        f.write(PROMPTS)
    return path


def _face_frames(n: int, seed: int):
    """``n`` RGB 1920x1080 frames: the astronaut (upscaled to 1080 px) on a grey canvas,
    drifting a few pixels per frame."""
    from PIL import Image
    from skimage import data

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((760, 760), Image.BILINEAR))
    rng = np.random.default_rng(seed)
    x0, y0 = 580 + int(rng.integers(-40, 40)), 160
    for i in range(n):
        canvas = np.full((H, W, 3), 96, np.uint8)
        dx = int(round(6 * np.sin(i / 5.0)))
        canvas[y0:y0 + 760, x0 + dx:x0 + dx + 760] = photo
        yield canvas


def _tone(freq: float, seconds: float, sr: int, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.01
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_clip(path: str, seconds: float = 1.0, seed: int = 0) -> None:
    """One TCD-TIMIT-like mp4: H.264 1920x1080 at 29.97 fps + AAC mono 48 kHz."""
    import av

    n = int(round(seconds * float(RATE)))
    with av.open(path, "w") as out:
        vs = out.add_stream("libx264", rate=RATE, options={"crf": "28", "preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        aus = out.add_stream("aac", rate=SR)
        aus.layout = "mono"
        for i, rgb in enumerate(_face_frames(n, seed)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        wav = _tone(MP4_TONE, seconds, SR, seed)
        step = 1024
        for start in range(0, len(wav), step):
            chunk = wav[start:start + step][None]
            af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            af.sample_rate, af.pts = SR, start
            out.mux(aus.encode(af))
        out.mux(aus.encode())


def write_wav(path: str, seconds: float = 1.0, seed: int = 0) -> None:
    import soundfile as sf

    sf.write(path, _tone(WAV_TONE, seconds, 16000, seed), 16000)


def make_tcdtimit_tree(root: str, seconds: float = 1.0) -> dict:
    """Write the tree above under ``root``; returns ``{name: path}`` of notable files
    (``corrupt``, and each clip ``<spk>/<sentence>``)."""
    import shutil

    files, seed, first = {}, 0, None
    for spk, (top, folder, sentences, wav_at) in SPEC.items():
        clips = os.path.join(root, top, folder, "Clips", "straightcam")
        os.makedirs(clips, exist_ok=True)
        for sentence in sentences:
            seed += 1
            path = os.path.join(clips, f"{sentence}.mp4")
            if first is None:
                write_clip(path, seconds, seed)
                first = path
            else:
                shutil.copyfile(first, path)
            files[f"{spk}/{sentence}"] = path
            if wav_at == "clip":
                write_wav(os.path.join(clips, f"{sentence}.wav"), seconds, seed)
            elif wav_at == "audio":
                os.makedirs(os.path.join(root, top, folder, "audio"), exist_ok=True)
                write_wav(os.path.join(root, top, folder, "audio", f"{sentence}.wav"),
                          seconds, seed)
    corrupt = os.path.join(root, "volunteers", "01M", "Clips", "straightcam", "si1000.mp4")
    with open(corrupt, "wb") as f:
        f.write(np.random.default_rng(5).bytes(4000))
    files["corrupt"] = corrupt
    return files
