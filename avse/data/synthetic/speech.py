"""Source-filter synthesis of vowel-consonant babble with frame-synchronous lip parameters.

This is the DSP half of the synthetic corpus (:mod:`avse.data.synthetic` renders the
faces and writes the corpus trees). A *voice* is a handful of speaker parameters
(f0, vocal-tract length, speaking rate, ...) drawn from one distribution shared by all
speakers; an *utterance* is a random sequence of syllables (optional unvoiced consonant
+ vowel) grouped into words with pauses between some of them.

The voiced part of a syllable is a band-limited pulse train following an intonation
contour, tilted by a one-pole low-pass (glottal roll-off), shaped by a syllabic
attack/sustain/decay envelope and filtered by a cascade of second-order formant
resonators (F1-F4, scaled by the speaker's formant factor). Consonants are short
band-pass noise bursts (plosives) or longer band-pass noise (fricatives) just before
the vowel.

Alongside the audio the synthesizer returns what the lips do, one value per video frame
(frame ``k`` covers samples ``[640 k, 640 k + 640)``):

* ``opening`` in ``[0, 1]``: vowel envelope times the vowel's jaw opening, averaged over
  the frame; 0 in pauses and during labial closures;
* ``width`` in ``[0, 1]``: lip spreading (``/i/`` wide, ``/u/`` narrow);
* ``roundness`` in ``[0, 1]``: lip rounding / protrusion (``/u/``, ``/o/``).

So the lip tracks carry the timing of the target's syllables and the identity of its
vowels, which is what an audio-visual extractor has to learn to exploit.

Example
-------
>>> import numpy as np
>>> voice = speaker_voice(0, 3)
>>> utt = synthesize_utterance(voice, np.random.default_rng(0), 2.0)
>>> utt.wav.shape, utt.opening.shape
((32000,), (50,))
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

from avse.data.align import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

# Namespaces mixed into the seed sequence so that independent draws never collide.
TAG_VOICE = 1
TAG_LOOK = 2
TAG_CLIP = 3
TAG_LAYOUT = 4
TAG_MUSAN = 5

#: Mouth shape of the silent / neutral face (closed lips).
NEUTRAL_WIDTH = 0.6
NEUTRAL_ROUNDNESS = 0.2


@dataclass(frozen=True)
class Vowel:
    """A vowel: formants of an adult male vocal tract (Hz) and its lip shape in ``[0, 1]``."""

    name: str
    formants: tuple  # F1, F2, F3 in Hz
    bandwidths: tuple  # B1, B2, B3 in Hz
    opening: float  # jaw opening at the vowel nucleus
    width: float  # lip spreading
    roundness: float  # lip rounding / protrusion
    letters: str  # spelling used in transcripts


@dataclass(frozen=True)
class Consonant:
    """An unvoiced syllable onset: band-pass noise, ``plosive`` (short burst) or fricative."""

    name: str
    band: tuple  # pass band in Hz
    duration: tuple  # min / max duration in seconds
    gain: float  # RMS relative to the following vowel
    plosive: bool
    letters: str


VOWELS = {
    v.name: v
    for v in (
        Vowel("a", (730, 1090, 2440), (90, 110, 170), 1.00, 0.70, 0.00, "A"),
        Vowel("e", (530, 1840, 2480), (70, 100, 160), 0.60, 0.90, 0.05, "E"),
        Vowel("i", (270, 2290, 3010), (60, 100, 170), 0.30, 1.00, 0.00, "I"),
        Vowel("o", (570, 840, 2410), (80, 100, 160), 0.65, 0.45, 0.70, "O"),
        Vowel("u", (300, 870, 2240), (60, 90, 150), 0.30, 0.25, 1.00, "U"),
    )
}

CONSONANTS = {
    c.name: c
    for c in (
        Consonant("p", (400, 3000), (0.015, 0.030), 0.35, True, "P"),
        Consonant("t", (2500, 6500), (0.015, 0.030), 0.35, True, "T"),
        Consonant("k", (1200, 3500), (0.020, 0.040), 0.35, True, "K"),
        Consonant("s", (4000, 7500), (0.060, 0.110), 0.20, False, "S"),
        Consonant("sh", (1800, 5000), (0.060, 0.110), 0.22, False, "SH"),
        Consonant("f", (900, 7500), (0.050, 0.090), 0.10, False, "F"),
    )
}

_F4_HZ, _B4_HZ = 3500.0, 250.0
_CONSONANT_SOS = {
    name: butter(4, c.band, btype="bandpass", fs=SAMPLE_RATE, output="sos")
    for name, c in CONSONANTS.items()
}


def seeded_rng(*keys: int) -> np.random.Generator:
    """Generator seeded from a tuple of non-negative integers (order matters)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


@dataclass(frozen=True)
class Voice:
    """Speaker parameters; every speaker is drawn from the same distribution.

    Attributes
    ----------
    index : int
        speaker index inside the corpus.
    f0_hz : float
        base fundamental frequency, 90-250 Hz (log-uniform).
    accent_st, declination_st, jitter_st : float
        syllable accent height, utterance-level f0 fall and frame jitter, in semitones.
    formant_scale : float
        formant multiplier, 0.85-1.2 (shorter vocal tract = higher formants).
    rate_sps : float
        speaking rate in syllables per second, 3-6.
    breathiness : float
        aspiration noise relative to the voiced source, 0-0.15.
    consonant_prob, pause_prob : float
        probability of a consonant onset per syllable and of a pause after a word.
    """

    index: int
    f0_hz: float
    accent_st: float
    declination_st: float
    jitter_st: float
    formant_scale: float
    rate_sps: float
    breathiness: float
    consonant_prob: float
    pause_prob: float


def speaker_voice(seed: int, speaker_index: int) -> Voice:
    """Draw the voice of speaker ``speaker_index`` of the corpus with seed ``seed`` (>= 0)."""
    rng = seeded_rng(seed, speaker_index, TAG_VOICE)
    f0 = float(np.exp(rng.uniform(np.log(90.0), np.log(250.0))))
    # larger speakers tend to have both lower f0 and longer vocal tracts
    f0_pos = np.log(f0 / 90.0) / np.log(250.0 / 90.0)
    scale = float(np.clip(0.87 + 0.28 * f0_pos + rng.normal(0.0, 0.05), 0.85, 1.2))
    return Voice(
        index=int(speaker_index),
        f0_hz=f0,
        accent_st=float(rng.uniform(1.0, 4.0)),
        declination_st=float(rng.uniform(0.5, 3.0)),
        jitter_st=float(rng.uniform(0.05, 0.25)),
        formant_scale=scale,
        rate_sps=float(rng.uniform(3.0, 6.0)),
        breathiness=float(rng.uniform(0.0, 0.15)),
        consonant_prob=float(rng.uniform(0.4, 0.8)),
        pause_prob=float(rng.uniform(0.25, 0.6)),
    )


@dataclass(frozen=True)
class Syllable:
    """One syllable; times in seconds from the start of the utterance."""

    start_s: float  # onset (consonant start, or vowel start without consonant)
    vowel_start_s: float
    end_s: float  # end of the vowel envelope
    vowel: str
    consonant: str | None
    word: int  # index of the word the syllable belongs to
    stress: float  # relative amplitude, 0.6-1.0

    @property
    def letters(self) -> str:
        """Spelling of the syllable (consonant letters + vowel letters), upper case."""
        onset = CONSONANTS[self.consonant].letters if self.consonant else ""
        return onset + VOWELS[self.vowel].letters


@dataclass(frozen=True)
class Word:
    """A pseudo-word of the transcript; times in seconds."""

    text: str
    start_s: float
    end_s: float


@dataclass
class Utterance:
    """A synthetic utterance and its lip tracks.

    Attributes
    ----------
    wav : np.ndarray
        float32 ``[T]`` @16 kHz, ``T = n_frames * 640``, peak 0.5-0.9.
    opening, width, roundness : np.ndarray
        float32 ``[Tv]`` @25 fps in ``[0, 1]``; frame ``k`` averages samples
        ``[640 k, 640 k + 640)``.
    syllables : list of Syllable
    """

    wav: np.ndarray
    opening: np.ndarray
    width: np.ndarray
    roundness: np.ndarray
    syllables: list = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        """Number of video frames ``Tv``."""
        return len(self.opening)

    @property
    def duration_s(self) -> float:
        """Duration in seconds."""
        return len(self.wav) / SAMPLE_RATE

    def words(self) -> list:
        """Group the syllables into pseudo-words (spelling from the syllable table)."""
        out = []
        for w in sorted({s.word for s in self.syllables}):
            syl = [s for s in self.syllables if s.word == w]
            out.append(Word("".join(s.letters for s in syl), syl[0].start_s, syl[-1].end_s))
        return out


def _plan_syllables(voice: Voice, rng: np.random.Generator, duration_s: float) -> list:
    """Lay out words and syllables in time, leaving silence at both ends."""
    vowels = sorted(VOWELS)
    consonants = sorted(CONSONANTS)
    t = rng.uniform(0.05, 0.4)
    end_limit = duration_s - rng.uniform(0.1, 0.3)
    syllables, word = [], 0
    while True:
        n_syl = int(rng.integers(1, 4))
        placed = 0
        for _ in range(n_syl):
            period = rng.uniform(0.75, 1.25) / voice.rate_sps
            cons = consonants[rng.integers(len(consonants))] if rng.random() < voice.consonant_prob else None
            c_dur = rng.uniform(*CONSONANTS[cons].duration) if cons else 0.0
            v_dur = max(0.06, 0.88 * period - c_dur)
            if t + c_dur + v_dur > end_limit:
                break
            vowel = vowels[rng.integers(len(vowels))]
            syllables.append(
                Syllable(float(t), float(t + c_dur), float(t + c_dur + v_dur), vowel, cons, word,
                         float(rng.uniform(0.6, 1.0)))
            )
            t += c_dur + v_dur + 0.12 * period
            placed += 1
        if placed < n_syl:
            break
        word += 1
        t += rng.uniform(0.12, 0.45) if rng.random() < voice.pause_prob else 0.02
    return syllables


def _f0_contour(voice: Voice, rng: np.random.Generator, syllables: list, n_samples: int) -> np.ndarray:
    """Per-sample f0 in Hz: declination + syllable accents + slow drift + jitter."""
    hop = 80  # control rate 200 Hz
    n_ctrl = n_samples // hop + 2
    tc = np.arange(n_ctrl) * hop / SAMPLE_RATE
    dur = max(n_samples / SAMPLE_RATE, 1e-3)
    semis = voice.declination_st * (0.5 - tc / dur)
    knots = np.arange(0.0, dur + 0.5, 0.25)
    semis = semis + np.interp(tc, knots, rng.normal(0.0, 0.6, len(knots)))
    semis = semis + rng.normal(0.0, voice.jitter_st, n_ctrl)
    for s in syllables:
        inside = (tc >= s.vowel_start_s) & (tc < s.end_s)
        phase = (tc[inside] - s.vowel_start_s) / max(s.end_s - s.vowel_start_s, 1e-3)
        semis[inside] += voice.accent_st * (s.stress - 0.6) / 0.4 * np.sin(np.pi * phase)
    f0_ctrl = voice.f0_hz * 2.0 ** (semis / 12.0)
    return np.interp(np.arange(n_samples) / hop, np.arange(n_ctrl), f0_ctrl)


def _pulse_train(f0: np.ndarray) -> np.ndarray:
    """Band-limited pulse train (harmonics up to ~5.5 kHz, flat) for the f0 track ``[T]``."""
    n_harm = max(1, int(5500.0 // f0.max()))
    cycles = np.cumsum(f0 / SAMPLE_RATE)
    theta = 2.0 * np.pi * (cycles - np.floor(cycles))
    den = 2.0 * np.sin(theta / 2.0)
    safe = np.abs(den) > 1e-6
    # closed form of sum_{k=1..K} cos(k theta) (Dirichlet kernel)
    dirichlet = np.full_like(theta, float(n_harm))
    dirichlet[safe] = np.sin((n_harm + 0.5) * theta[safe]) / den[safe] - 0.5
    return dirichlet / n_harm


def _formant_sos(vowel: Vowel, scale: float) -> np.ndarray:
    """Cascade of unity-DC-gain second-order resonators for ``vowel`` as an ``[4, 6]`` sos array."""
    nyq = SAMPLE_RATE / 2.0
    freqs = [f * scale for f in vowel.formants] + [_F4_HZ * scale]
    bands = list(vowel.bandwidths) + [_B4_HZ]
    sos = []
    for f, b in zip(freqs, bands):
        f = min(f, 0.9 * nyq)
        r = np.exp(-np.pi * b / SAMPLE_RATE)
        a1, a2 = -2.0 * r * np.cos(2.0 * np.pi * f / SAMPLE_RATE), r * r
        sos.append([1.0 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])
    return np.asarray(sos)


def _vowel_envelope(n: int, rng: np.random.Generator) -> np.ndarray:
    """Attack / sustain / decay envelope ``[n]`` in ``[0, 1]`` (raised-cosine ramps)."""
    attack = max(1, int(n * rng.uniform(0.15, 0.3)))
    decay = max(1, int(n * rng.uniform(0.25, 0.4)))
    sustain = max(0, n - attack - decay)
    up = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    down = up[::-1] if decay == attack else 0.5 + 0.5 * np.cos(np.pi * (np.arange(decay) + 0.5) / decay)
    return np.concatenate([up, np.ones(sustain), down])[:n]


def synthesize_utterance(voice: Voice, rng: np.random.Generator, duration_s: float) -> Utterance:
    """Synthesize one utterance of ``voice`` and the matching lip tracks.

    Parameters
    ----------
    voice : Voice
        from :func:`speaker_voice`.
    rng : np.random.Generator
        source of all the randomness of the utterance (seed it for reproducibility).
    duration_s : float
        length in seconds, rounded to whole video frames (at least one frame).

    Returns
    -------
    Utterance with ``wav [T] @16 kHz`` (``T = Tv * 640``) and ``opening``, ``width``,
    ``roundness`` ``[Tv] @25 fps``.
    """
    n_frames = max(1, int(round(duration_s * FPS)))
    n = n_frames * SAMPLES_PER_FRAME
    syllables = _plan_syllables(voice, rng, n / SAMPLE_RATE)
    f0 = _f0_contour(voice, rng, syllables, n)
    source = lfilter([0.1], [1.0, -0.9], _pulse_train(f0))  # -6 dB/oct above ~270 Hz
    wav = np.zeros(n)
    opening = np.zeros(n)
    width = np.full(n, NEUTRAL_WIDTH)
    roundness = np.full(n, NEUTRAL_ROUNDNESS)
    tail = int(0.03 * SAMPLE_RATE)
    for s in syllables:
        v0, v1 = int(s.vowel_start_s * SAMPLE_RATE), int(s.end_s * SAMPLE_RATE)
        v1 = min(v1, n)
        if v1 - v0 < 16:
            continue
        vowel = VOWELS[s.vowel]
        env = _vowel_envelope(v1 - v0, rng)
        excitation = source[v0:v1] + voice.breathiness * rng.normal(0.0, 0.3, v1 - v0)
        seg = np.concatenate([excitation * env, np.zeros(min(tail, n - v1))])
        seg = sosfilt(_formant_sos(vowel, voice.formant_scale), seg)
        seg *= s.stress / (np.sqrt(np.mean(seg[: v1 - v0] ** 2)) + 1e-12)
        wav[v0 : v0 + len(seg)] += seg
        opening[v0:v1] = env * vowel.opening
        width[v0:v1] = NEUTRAL_WIDTH + env * (vowel.width - NEUTRAL_WIDTH)
        roundness[v0:v1] = NEUTRAL_ROUNDNESS + env * (vowel.roundness - NEUTRAL_ROUNDNESS)
        if s.consonant:
            cons = CONSONANTS[s.consonant]
            c0 = int(s.start_s * SAMPLE_RATE)
            m = v0 - c0
            if m > 8:
                ramp = (np.exp(-np.arange(m) / (0.3 * m)) if cons.plosive
                        else np.sin(np.pi * (np.arange(m) + 0.5) / m))
                noise = sosfilt(_CONSONANT_SOS[s.consonant], rng.normal(0.0, 1.0, m + 64))[64:] * ramp
                noise *= cons.gain * s.stress / (np.sqrt(np.mean(noise**2)) + 1e-12)
                wav[c0:v0] += noise
    wav += rng.normal(0.0, 1e-3, n)  # recording noise floor, about -60 dB re. peak
    peak = np.max(np.abs(wav))
    wav *= rng.uniform(0.5, 0.9) / max(peak, 0.05)  # a silent clip stays quiet

    def per_frame(x):
        return x.reshape(n_frames, SAMPLES_PER_FRAME).mean(axis=1).astype(np.float32)

    return Utterance(
        wav=np.nan_to_num(wav).astype(np.float32),
        opening=np.clip(per_frame(opening), 0.0, 1.0),
        width=per_frame(width),
        roundness=per_frame(roundness),
        syllables=syllables,
    )


# ----------------------------------------------------------------------------- MUSAN-like
def synthesize_music(rng: np.random.Generator, duration_s: float) -> np.ndarray:
    """Chords of harmonic tones on a beat grid, optional drums; float32 ``[T]`` @16 kHz, peak 1."""
    n = max(1, int(round(duration_s * SAMPLE_RATE)))
    t = np.arange(n) / SAMPLE_RATE
    beat = 60.0 / rng.uniform(60, 160)
    root = rng.uniform(110, 330)
    scale = np.array([0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10])
    n_harm, decay = int(rng.integers(2, 7)), rng.uniform(1.0, 8.0)  # timbre, notes per beat decay
    out = np.zeros(n)
    for onset in np.arange(0.0, duration_s, beat * rng.choice([1, 2])):
        i0 = int(onset * SAMPLE_RATE)
        tt = t[i0:] - onset
        env = np.exp(-decay * tt / beat)
        degree = rng.integers(0, 7)
        for step in (0, 2, 4):  # a triad on the scale
            d = degree + step
            f = root * 2.0 ** ((scale[d % 7] + 12 * (d // 7)) / 12.0)
            for k in range(1, n_harm + 1):
                if k * f < 0.45 * SAMPLE_RATE:
                    out[i0:] += env * np.sin(2 * np.pi * k * f * tt) / k
        if rng.random() < 0.5:  # kick + hat
            m = min(n - i0, int(0.12 * SAMPLE_RATE))
            tk = tt[:m]
            out[i0:i0 + m] += 3.0 * np.exp(-tk / 0.03) * np.sin(2 * np.pi * (50 + 80 * np.exp(-tk / 0.02)) * tk)
            out[i0:i0 + m] += 0.5 * np.exp(-tk / 0.01) * rng.normal(0, 1, m)
    return (out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def synthesize_noise(rng: np.random.Generator, duration_s: float) -> np.ndarray:
    """Coloured (1/f^beta) noise with slow modulation, bursts and maybe hum; float32 ``[T]``, peak 1."""
    n = max(1, int(round(duration_s * SAMPLE_RATE)))
    spec = np.fft.rfft(rng.normal(0, 1, n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec *= np.maximum(f, 20.0) ** (-rng.uniform(0.0, 2.0) / 2)
    out = np.fft.irfft(spec, n)
    out /= np.std(out) + 1e-12
    knots = np.arange(0, duration_s + 1.0, 0.5)
    out *= np.interp(np.arange(n) / SAMPLE_RATE, knots, rng.uniform(0.4, 1.0, len(knots)))
    for _ in range(int(rng.integers(0, 2 + int(duration_s / 2)))):  # door slams, clicks
        m = int(rng.uniform(0.02, 0.3) * SAMPLE_RATE)
        i0 = int(rng.integers(0, max(1, n - m)))
        seg = min(m, n - i0)
        out[i0:i0 + seg] += rng.uniform(2, 6) * rng.normal(0, 1, seg) * np.exp(-np.arange(seg) / (0.2 * m))
    if rng.random() < 0.3:
        mains = rng.choice([50.0, 60.0])
        out += sum(np.sin(2 * np.pi * k * mains * np.arange(n) / SAMPLE_RATE) / k for k in (1, 2, 3))
    return (out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)


def synthesize_babble(rng: np.random.Generator, duration_s: float, voices: list) -> np.ndarray:
    """Sum of utterances of ``voices`` (random gains); float32 ``[T]``, peak 1."""
    n_frames = max(1, int(round(duration_s * FPS)))
    out = np.zeros(n_frames * SAMPLES_PER_FRAME)
    for voice in voices:
        out += rng.uniform(0.5, 1.0) * synthesize_utterance(voice, rng, n_frames / FPS).wav
    return (out / (np.max(np.abs(out)) + 1e-9)).astype(np.float32)
