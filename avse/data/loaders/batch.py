"""Batches: :class:`AVBatch`, collating examples, and the last steps of making one example.

An example (a dict) is made by :func:`finish_example` from a target, its lips and the
interferers (mix at SNRs -> optional noise -> crop -> normalise -> lips offset), whatever
the source: dynamic mixing (:mod:`avse.data.loaders.dynamic`) or list rows
(:mod:`avse.data.loaders.list_mode`). :func:`decode_utterance` decodes a shard sample,
optionally only a random aligned crop.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import soundfile as sf
import torch

from avse.data.activity import rest_frames, silence_target
from avse.data.align import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from avse.data.mixing import (MixtureConfig, crop_start, fit_length, mix_sources, pad_to,
                              random_crop, shift_visual)
from avse.data.shards import ShardError, decode_av


@dataclass(eq=False)
class AVBatch:
    """A batch of mixtures. ``B`` examples, ``T = 640 * Tv`` samples @16 kHz, ``Tv`` frames @25 fps.

    Attributes
    ----------
    mixture, target, interference : torch.Tensor
        float32 ``[B, T]``; ``interference`` = the other speakers (+ noise), i.e.
        ``mixture - target`` (exactly, unless ``normalise="peak_separate"``).
    visual : torch.Tensor
        uint8 ``[B, Tv, 88, 88]`` mouth ROI, or float32 ``[B, Tv, 512]`` lip embeddings.
    lengths : torch.Tensor
        float32 ``[B]`` relative lengths in (0, 1] (SpeechBrain convention); padding is
        zeros (audio) or the repeated last frame (visual).
    keys : list of str
        target utterance keys ``spk/video/clip``.
    speaker : torch.Tensor
        int64 ``[B]`` target speaker label (-1: unknown speaker).
    snr : torch.Tensor
        float32 ``[B, K]`` SNR in dB of each interferer relative to the target; ``K`` is
        the most interferers in the batch, NaN where an example has fewer.
    interferer_keys : list of tuple of str
        the interfering utterances of each example.
    visual_keys : list of str
        whose lips ``visual`` shows (the target, or another utterance when mismatched).
    activity : torch.Tensor or None
        float32 ``[B, Tv]``: 1 in the video frames where the target speaks, 0 where it is
        silent (conditions ``absent`` / ``sparse``, :mod:`avse.data.activity`) and in
        padding; ordinary examples are all ones over their length.
    faults : list or None
        the bad samples a loader's worker skipped since its previous batch, as
        ``(shard, key, reason)``; the training loaders take them into ``loader.faults`` and
        leave None (:mod:`avse.data.loaders.bad_samples`).
    """

    mixture: torch.Tensor
    target: torch.Tensor
    interference: torch.Tensor
    visual: torch.Tensor
    lengths: torch.Tensor
    keys: list
    speaker: torch.Tensor
    snr: torch.Tensor
    interferer_keys: list
    visual_keys: list
    activity: Optional[torch.Tensor] = None
    faults: Optional[list] = None

    def __len__(self):
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        return len(self.keys)

    def _map(self, fn):
        return AVBatch(**{f.name: fn(getattr(self, f.name)) if torch.is_tensor(getattr(self, f.name))
                          else getattr(self, f.name) for f in fields(self)})

    def to(self, device, non_blocking: bool = False) -> "AVBatch":
        """A copy with every tensor moved to ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "AVBatch":
        """Used by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())


def collate_examples(examples) -> AVBatch:
    """Pad examples (dicts made by the datasets here) to the longest and stack them."""
    n_max = max(e["pad_frames"] for e in examples)
    cols = {k: [] for k in ("mixture", "target", "interference", "visual")}
    for e in examples:
        for k in ("mixture", "target", "interference"):
            cols[k].append(fit_length(e[k], n_max * SAMPLES_PER_FRAME))
        cols["visual"].append(pad_to(None, e["visual"], n_max)[1])
    visual = np.stack(cols["visual"])
    k_max = max([len(e["snrs"]) for e in examples] + [1])
    snr = np.full((len(examples), k_max), np.nan, np.float32)
    for i, e in enumerate(examples):
        snr[i, :len(e["snrs"])] = e["snrs"]
    return AVBatch(
        mixture=torch.from_numpy(np.stack(cols["mixture"])),
        target=torch.from_numpy(np.stack(cols["target"])),
        interference=torch.from_numpy(np.stack(cols["interference"])),
        visual=torch.from_numpy(visual if visual.dtype == np.uint8 else visual.astype(np.float32)),
        lengths=torch.tensor([e["n_frames"] / n_max for e in examples], dtype=torch.float32),
        keys=[e["key"] for e in examples],
        speaker=torch.tensor([e["speaker"] for e in examples], dtype=torch.int64),
        snr=torch.from_numpy(snr),
        interferer_keys=[tuple(e["interferer_keys"]) for e in examples],
        visual_keys=[e["lips_key"] for e in examples],
        activity=torch.from_numpy(np.stack([
            fit_length(_activity(e), n_max) for e in examples]).astype(np.float32)),
        faults=[event for e in examples for event in e.get("faults", ())] or None)


def _activity(example) -> np.ndarray:
    """An example's per-frame activity (examples made elsewhere may lack it: all ones)."""
    act = example.get("activity")
    return np.ones(example["n_frames"], np.float32) if act is None else np.asarray(act, np.float32)


def finish_example(config: MixtureConfig, key, speaker, wav_t, visual, interferers, snrs,
                   rng, inter_keys, lips_key, crop=False, row_noise=(), noise=None,
                   activity=None, rest=None):
    """Mix one example: ``wav_t [640 n]``, ``visual [n, ...]``, interferer wavs of any length.

    ``row_noise``: ``(wav [640 n], snr)`` pairs of a list row; they replace the config's
    noise. Without interferers (and row noise) the config's noise is forced. ``noise``
    (a drawn condition's): True forces the config's noise, False leaves it out, None lets
    ``noise_prob`` decide.

    ``activity``: None (the target speaks throughout) or ``(kind, start, stop)`` with kind
    ``"absent"`` / ``"sparse"``, frames counted from ``visual``'s first frame (before any
    crop): the target, mixed at its full level, is silenced outside ``[start, stop)`` and its
    lips there replaced by its lips at rest, ``rest [k, ...]`` (default: found in ``wav_t`` /
    ``visual`` by :func:`avse.data.activity.rest_frames`). The example's ``"activity"`` is
    the per-frame ``[n]`` float32 (1: the target speaks).
    """
    n = len(visual)
    inter = [fit_length(w, len(wav_t), rng if crop else None) for w in interferers]
    if row_noise or noise is False:
        noise, noise_snr = None, None
    else:
        noise, noise_snr = config.sample_noise(len(wav_t), rng,
                                               force=bool(noise) or not interferers)
    mixture, target, interference = mix_sources(
        wav_t, inter + [w for w, _ in row_noise], list(snrs) + [s for _, s in row_noise],
        noise, noise_snr)
    act, silent_kind = np.ones(n, np.float32), "present"
    if activity is not None:
        silent_kind, a, b = activity
        if silent_kind not in ("absent", "sparse"):
            raise ValueError(f"{key}: activity kind must be 'absent' or 'sparse', got "
                             f"{silent_kind!r}")
        if rest is None:
            rest = rest_frames(wav_t, visual)
        a, b = (0, 0) if silent_kind == "absent" else (a, b)
        target, mixture, visual, act = silence_target(target, interference, visual, rest, a, b)
    pad_frames = n
    if crop and config.crop_frames is not None:
        start = crop_start(n, config.crop_frames, rng)
        parts = [random_crop(x, visual, config.crop_frames, rng, start)
                 for x in (mixture, target, interference)]
        (mixture, visual), (target, _), (interference, _) = parts
        act = act[start:start + config.crop_frames]
        n, pad_frames = len(visual), config.crop_frames
    mixture, target, interference = config.normalise_signals(mixture, target, interference)
    av_shift = config.sample_av_shift(rng) if crop else 0  # training only; drawn last
    visual = shift_visual(visual, av_shift)
    return {"mixture": mixture, "target": target, "interference": interference, "visual": visual,
            "n_frames": n, "pad_frames": pad_frames, "key": key, "speaker": speaker,
            "snrs": list(snrs), "interferer_keys": list(inter_keys), "lips_key": lips_key,
            "av_shift": av_shift, "activity": act, "silent_kind": silent_kind}


def decode_utterance(key: str, flac: bytes, visual: bytes | None = None,
                     crop_frames: int | None = None, rng=None):
    """Decode a shard sample's ``flac`` (+ ``*.npy``) bytes: ``(wav [640 Tv], visual [Tv, ...])``.

    With ``crop_frames``, only a random aligned crop (``rng``) is decoded: a FLAC seek and
    a view into the npy bytes, the same result as :func:`~avse.data.mixing.random_crop`
    on the whole utterance. ``visual=None`` decodes the audio only (``visual`` is None).
    """
    if visual is None or crop_frames is None:
        return decode_av(key, flac, visual)
    buf = io.BytesIO(visual)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(buf))
    shape, fortran, dtype = read_header(buf) if read_header else ((), True, None)
    if fortran or dtype.hasobject or len(shape) < 1:
        return random_crop(*decode_utterance(key, flac, visual), crop_frames, rng)
    with sf.SoundFile(io.BytesIO(flac)) as f:
        if f.samplerate != SAMPLE_RATE or abs(f.frames / SAMPLES_PER_FRAME - shape[0]) > 1:
            raise ShardError(f"{key}: {f.frames} samples at {f.samplerate} Hz do not match "
                             f"{shape[0]} video frames at {FPS} fps")
        n = min(shape[0], -(-f.frames // SAMPLES_PER_FRAME))
        start = crop_start(n, crop_frames, rng)
        stop = min(start + crop_frames, n)
        f.seek(start * SAMPLES_PER_FRAME)
        wav = f.read((stop - start) * SAMPLES_PER_FRAME, dtype="float32")
    frames = np.frombuffer(visual, dtype, count=int(np.prod(shape)), offset=buf.tell())
    visual = frames.reshape(shape)[start:stop].copy()  # a copy: the buffer keeps the crop only
    return fit_length(wav, len(visual) * SAMPLES_PER_FRAME), visual
