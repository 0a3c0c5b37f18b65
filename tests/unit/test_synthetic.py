"""Tests of the synthetic corpus: speech + lip tracks, face rendering, mp4 sync, layouts."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")

from avse.data import synthetic as syn  # noqa: E402
from avse.data.align import SAMPLES_PER_FRAME  # noqa: E402
from avse.data.synthetic.faces import static_face  # noqa: E402
from avse.data.synthetic.speech import VOWELS, speaker_voice, synthesize_utterance  # noqa: E402
from avse.video.media import MOUTH_CROPS  # noqa: E402

VOX_RE = re.compile(r"^(dev|test)/mp4/(id\d{5})/([A-Za-z0-9_-]{11})/(\d{5})\.mp4$")
N_SPK, N_CLIPS = 4, 2


def decode(path):
    """Decode an mp4: ``(wav float32 [T] @16 kHz, frames uint8 [Tv, H, W, 3], info)``."""
    with av.open(str(path)) as c:
        vs, aus = c.streams.video[0], c.streams.audio[0]
        info = dict(width=vs.codec_context.width, height=vs.codec_context.height, fps=vs.average_rate,
                    vcodec=vs.codec_context.name, acodec=aus.codec_context.name, rate=aus.rate,
                    channels=aus.layout.nb_channels, audio_duration=float(aus.duration * aus.time_base))
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        res = av.AudioResampler(format="flt", layout="mono", rate=16000)
        chunks = [r.to_ndarray().reshape(-1) for f in c.decode(audio=0) for r in res.resample(f)]
        chunks += [r.to_ndarray().reshape(-1) for r in res.resample(None)]
    return np.concatenate(chunks), frames, info


def mouth_darkness(frames, crop="voxceleb2"):
    """Mean darkness (255 - grey) inside the mouth crop box, per frame ``[Tv]``."""
    top, left, side = MOUTH_CROPS[crop].box(*frames.shape[1:3])
    return 255.0 - frames[:, top:top + side, left:left + side].astype(np.float64).mean(axis=(1, 2, 3))


def frame_rms(wav, n_frames):
    wav = wav[: n_frames * SAMPLES_PER_FRAME]
    wav = np.pad(wav, (0, n_frames * SAMPLES_PER_FRAME - len(wav)))
    return np.sqrt((wav.reshape(n_frames, -1) ** 2).mean(axis=1))


def corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def vox(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox_a")
    summary = syn.make_voxceleb2_corpus(root, N_SPK, N_CLIPS, seed=7, nj=1, progress=False)
    return root, summary


def mp4s(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*.mp4"))


# ----------------------------------------------------------------------------- speech
def test_utterance_shapes_and_levels():
    voice = speaker_voice(3, 5)
    assert 90 <= voice.f0_hz <= 250 and 0.85 <= voice.formant_scale <= 1.2 and 3 <= voice.rate_sps <= 6
    utt = synthesize_utterance(voice, np.random.default_rng(0), 4.3)
    n = round(4.3 * 25)
    assert utt.wav.dtype == np.float32 and utt.wav.shape == (n * SAMPLES_PER_FRAME,)
    for track in (utt.opening, utt.width, utt.roundness):
        assert track.shape == (n,) and track.min() >= 0 and track.max() <= 1
    assert np.isfinite(utt.wav).all() and 0.5 <= np.abs(utt.wav).max() <= 0.9
    assert utt.opening.max() > 0.5 and utt.opening.min() < 0.05  # speech and pauses
    assert len(utt.syllables) >= 5 and all(s.vowel in VOWELS for s in utt.syllables)
    # the audio energy follows the lip opening
    assert corr(frame_rms(utt.wav, n), utt.opening) > 0.5
    again = synthesize_utterance(voice, np.random.default_rng(0), 4.3)
    assert np.array_equal(again.wav, utt.wav)
    assert not np.array_equal(synthesize_utterance(voice, np.random.default_rng(1), 4.3).wav, utt.wav)


def test_vowel_shapes_are_distinct():
    shapes = {v.name: (v.opening, v.width, v.roundness) for v in VOWELS.values()}
    assert shapes["a"][0] > shapes["i"][0] and shapes["a"][0] > shapes["u"][0]  # /a/ open
    assert shapes["i"][1] > shapes["u"][1]  # /i/ spread, /u/ narrow
    assert shapes["u"][2] > shapes["i"][2] and shapes["u"][2] > shapes["a"][2]  # /u/ rounded
    assert len(set(shapes.values())) == len(shapes)


def test_lips_show_vowel_identity():
    """At a vowel nucleus the per-frame lip shape is that of the vowel."""
    checked = 0
    for seed in range(3):
        utt = synthesize_utterance(speaker_voice(0, seed), np.random.default_rng(seed), 6.0)
        for s in utt.syllables:
            k = int((s.vowel_start_s + s.end_s) / 2 * 25)  # frame at the vowel nucleus
            v = VOWELS[s.vowel]
            if s.end_s - s.vowel_start_s > 0.15:
                assert utt.opening[k] == pytest.approx(v.opening, abs=0.25)
                assert utt.width[k] == pytest.approx(v.width, abs=0.25)
                assert utt.roundness[k] == pytest.approx(v.roundness, abs=0.25)
                checked += 1
    assert checked >= 10


# ----------------------------------------------------------------------------- faces
def test_mouth_darkness_follows_opening():
    utt = synthesize_utterance(speaker_voice(0, 2), np.random.default_rng(3), 5.0)
    frames = syn.render_face(utt.opening, utt.width, utt.roundness, look=syn.speaker_look(0, 2))
    assert frames.dtype == np.uint8 and frames.shape == (len(utt.opening), 224, 224, 3)
    assert corr(mouth_darkness(frames), utt.opening) > 0.5
    small = syn.render_face(utt.opening, utt.width, utt.roundness, (160, 160), MOUTH_CROPS["lrs2"])
    assert small.shape[1:] == (160, 160, 3)
    assert corr(mouth_darkness(small, "lrs2"), utt.opening) > 0.5


@pytest.mark.parametrize("crop,size", [("voxceleb2", (224, 224)), ("lrs2", (160, 160))])
@pytest.mark.parametrize("speaker", [0, 1, 2, 3])
def test_mouth_stays_in_crop_box(crop, size, speaker):
    look = syn.speaker_look(11, speaker)
    top, left, side = MOUTH_CROPS[crop].box(*size)
    cy, cx = top + side / 2, left + side / 2
    for offset in [(0, 0), (1, -1), (-1, 1)]:
        # extreme shapes: wide open, wide rounded, closed
        frames = syn.render_face([1, 1, 0], [1, 0.5, 0.6], [0, 1, 0.2], size, MOUTH_CROPS[crop], look, offset)
        blank = static_face(size[0], size[1], cy + offset[0], cx + offset[1], look, True)
        for img in frames:
            ys, xs = np.nonzero(np.abs(img.astype(int) - blank.astype(int)).max(axis=-1) > 8)
            assert ys.min() >= top and ys.max() < top + side and xs.min() >= left and xs.max() < left + side
            assert ys.max() - ys.min() + 1 <= 0.75 * side and xs.max() - xs.min() + 1 <= 0.75 * side
            assert abs((ys.max() + ys.min()) / 2 - cy) <= 3 and abs((xs.max() + xs.min()) / 2 - cx) <= 3


# ----------------------------------------------------------------------------- mp4
def test_write_mp4_keeps_audio_video_sync(tmp_path):
    utt = synthesize_utterance(speaker_voice(1, 0), np.random.default_rng(4), 3.52)
    frames = syn.render_face(utt.opening, utt.width, utt.roundness)
    path = tmp_path / "clip.mp4"
    syn.write_mp4(path, frames, utt.wav)
    wav, dec_frames, info = decode(path)
    assert len(dec_frames) == len(frames) == 88
    assert abs(len(wav) - len(utt.wav)) <= SAMPLES_PER_FRAME
    assert info["audio_duration"] == pytest.approx(len(utt.wav) / 16000, abs=1e-3)
    m = min(len(wav), len(utt.wav))
    ref, out = utt.wav[:m].astype(np.float64), wav[:m].astype(np.float64)
    max_lag = 400
    lags = np.arange(-max_lag, max_lag + 1)
    xc = [np.dot(out[max_lag + l: m - max_lag + l], ref[max_lag: m - max_lag]) for l in lags]
    assert abs(lags[int(np.argmax(xc))]) <= 32
    # AAC is lossy but close: > 15 dB SNR at lag 0
    assert 10 * np.log10(np.sum(ref**2) / np.sum((out - ref) ** 2)) > 15
    # frames survive the codec (mean abs error of a few grey levels)
    assert np.abs(dec_frames.astype(int) - frames.astype(int)).mean() < 4


# ----------------------------------------------------------------------------- voxceleb2
def test_voxceleb2_layout(vox):
    root, summary = vox
    files = mp4s(root)
    assert len(files) == N_SPK * N_CLIPS == summary.n_files and summary.audio_seconds > 0
    assert sorted(summary.files) == files
    videos = {}
    for f in files:
        m = VOX_RE.match(f)
        assert m, f
        videos.setdefault((m[1], m[2], m[3]), []).append(m[4])
    spk_videos = {}
    for (_, spk, vid), clips in videos.items():
        assert sorted(clips) == [f"{i + 1:05d}" for i in range(len(clips))]
        spk_videos.setdefault(spk, set()).add(vid)
    assert len(spk_videos) == N_SPK and all(1 <= len(v) <= 3 for v in spk_videos.values())
    meta = json.loads((root / "speakers.json").read_text())["speakers"]
    assert set(meta) == set(spk_videos)
    assert all(set(meta[s]["videos"]) == spk_videos[s] for s in meta)


def test_voxceleb2_disjoint_splits(vox):
    root, _ = vox
    dev = {p.name for p in (root / "dev" / "mp4").iterdir()}
    test = {p.name for p in (root / "test" / "mp4").iterdir()}
    assert dev and test and not dev & test and len(dev | test) == N_SPK


def test_voxceleb2_mp4_properties_and_lip_sync(vox):
    root, _ = vox
    for f in mp4s(root):
        wav, frames, info = decode(root / f)
        assert (info["width"], info["height"], info["fps"]) == (224, 224, 25)
        assert info["vcodec"] == "h264" and info["acodec"] == "aac"
        assert info["rate"] == 16000 and info["channels"] == 1
        assert 3.0 <= len(frames) / 25 <= 6.0
        assert abs(len(wav) - len(frames) * SAMPLES_PER_FRAME) <= SAMPLES_PER_FRAME
        # after the codecs, the mouth still opens when the voice is loud
        assert corr(mouth_darkness(frames), frame_rms(wav, len(frames))) > 0.4, f


def test_voxceleb2_deterministic_and_independent_of_nj(vox, tmp_path):
    root, _ = vox
    again = tmp_path / "again"
    syn.make_voxceleb2_corpus(again, N_SPK, N_CLIPS, seed=7, nj=2, progress=False)
    assert mp4s(again) == mp4s(root)
    for f in mp4s(root)[:3]:
        wa, fa, _ = decode(root / f)
        wb, fb, _ = decode(again / f)
        assert np.array_equal(wa, wb) and np.array_equal(fa, fb)
    other = tmp_path / "other"
    syn.make_voxceleb2_corpus(other, N_SPK, N_CLIPS, seed=8, nj=1, progress=False)
    assert mp4s(other) != mp4s(root)
    wa, fa, _ = decode(root / mp4s(root)[0])
    wb, fb, _ = decode(other / mp4s(other)[0])
    assert len(wa) != len(wb) or not np.allclose(wa, wb)


# ----------------------------------------------------------------------------- lrs2
def parse_lrs2_txt(text):
    lines = text.splitlines()
    assert lines[0].startswith("Text:  ") and re.fullmatch(r"Conf:  \d+", lines[1])
    assert lines[2] == "" and lines[3] == "WORD START END ASDSCORE"
    words = lines[0][len("Text:  "):].split()
    rows = [line.split() for line in lines[4:]]
    assert [r[0] for r in rows] == words and all(w.isupper() for w in words)
    times = [(float(r[1]), float(r[2]), float(r[3])) for r in rows]
    return words, times


def test_lrs2_layout(tmp_path):
    summary = syn.make_lrs2_corpus(tmp_path, n_videos=4, n_clips=2, seed=3, nj=2, progress=False)
    clips = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.mp4"))
    assert len(clips) == 4 * 2 + 1 * 2 and summary.n_files == 2 * len(clips) + 4
    for clip in clips:
        assert re.fullmatch(r"(main|pretrain)/\d{19}/\d{5}\.mp4", str(clip)), clip
        words, times = parse_lrs2_txt((tmp_path / clip).with_suffix(".txt").read_text())
        _, frames, info = decode(tmp_path / clip)
        assert (info["width"], info["height"]) == (160, 160)
        assert words and all(0 <= s < e <= len(frames) / 25 + 1e-6 for s, e, _ in times)
        assert all(a[1] <= b[0] for a, b in zip(times, times[1:]))  # words in order
    lists = {n: (tmp_path / f"{n}.txt").read_text().splitlines() for n in ("pretrain", "train", "val", "test")}
    assert all(lists.values())
    assert any(line.endswith(" NF") for line in lists["test"])
    videos = {}
    for name, lines in lists.items():
        folder = "pretrain" if name == "pretrain" else "main"
        for line in lines:
            item = line.split()[0]
            assert (tmp_path / folder / f"{item}.mp4").exists(), line
            videos.setdefault(item.split("/")[0], set()).add(name)
    assert all(len(v) == 1 for v in videos.values())  # a video belongs to one list


# ----------------------------------------------------------------------------- musan
def test_musan_layout(tmp_path):
    summary = syn.make_musan_corpus(tmp_path, n_per_category=2, seed=1, nj=1, progress=False)
    wavs = sorted(tmp_path.rglob("*.wav"))
    assert len(wavs) == 6 == summary.n_files
    assert {p.relative_to(tmp_path).parts[0] for p in wavs} == {"music", "noise", "speech"}
    durations = []
    for p in wavs:
        category, subset, name = p.relative_to(tmp_path).parts
        assert name.startswith(f"{category}-{subset}-")
        info = sf.info(str(p))
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        x, _ = sf.read(str(p))
        assert np.abs(x).max() > 0.1 and np.isfinite(x).all()
        durations.append(info.duration)
    assert min(durations) >= 2 and max(durations) <= 15 and max(durations) > 10


def test_cli(tmp_path, capsys):
    assert syn.main(["--out", str(tmp_path), "--speakers", "2", "--clips", "1", "--nj", "1", "--no-progress"]) == 0
    assert "wrote 2 files" in capsys.readouterr().out
    assert len(mp4s(tmp_path)) == 2
