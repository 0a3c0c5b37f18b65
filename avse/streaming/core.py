"""StreamingModel: a causal AVSEModel run block by block, its output equal to the offline one.

Audio comes in blocks of any size (down to one sample), lip frames as they come; each push
returns the output samples that are final now. The output lags the input by
``delay_samples`` (``K - S``, the encoder's window minus its hop) plus what is still waiting
for a whole hop; :meth:`StreamingModel.flush` gives the rest, so that the outputs of a
stream, concatenated, have exactly the pushed length and equal ``model(mixture, visual).
estimate`` (float tolerance) when every video frame was pushed in time: with the audio
block in which it starts, or earlier. An audio frame whose video frame has not arrived
holds the latest one received (the frames before the first video frame wait for it).

Example (``model`` a causal AVSEModel, e.g. from egs/synthetic/hparams/demo_causal.yaml)::

    stream = StreamingModel(model, batch=1)
    outputs = []
    for block, frames in source:       # block [1, n] float32; frames [1, m, 88, 88] uint8
        outputs.append(stream.push(block, frames))   # (or [1, m, 512] embeddings, or None)
    outputs.append(stream.flush())
    estimate = torch.cat(outputs, dim=-1)            # [1, T], as the offline estimate
    stream.reset()                                   # a new stream

The parts are run by their steppers (:func:`avse.streaming.registry.stepper_for`): audio
encoder, visual encoder, separator and decoder each keep a fixed-shape state.
"""
from __future__ import annotations

import torch
from torch import nn

from avse.models.base import SAMPLES_PER_VIDEO_FRAME
from avse.streaming.registry import stepper_for

__all__ = ["StreamingModel", "check_streamable"]


def check_streamable(model: nn.Module) -> None:
    """ValueError unless ``model`` is a causal AVSEModel (the streaming path needs one)."""
    if not getattr(model, "causal", False):
        raise ValueError(f"{type(model).__name__} is not causal, so it cannot stream: build it "
                         "with AVSEModel(..., causal=True) (e.g. a *_causal.yaml such as "
                         "egs/synthetic/hparams/demo_causal.yaml) and train it so, or run the "
                         "offline model on the whole utterance")


class StreamingModel:
    """Run a causal :class:`~avse.models.avse_model.AVSEModel` on a live stream.

    Arguments
    ---------
    model : AVSEModel
        causal (``causal=True``; ValueError otherwise, or when a part has no streaming form).
        It is put in eval mode; its device and dtype are the stream's.
    batch : int
        streams run side by side (``[batch, n]`` blocks).

    Attributes
    ----------
    hop : int
        S, the encoder's hop in samples (audio is processed in whole hops).
    delay_samples : int
        ``K - S``: the output lags the input by this plus the samples short of a whole hop.
    """

    def __init__(self, model: nn.Module, batch: int = 1):
        check_streamable(model)
        model.eval()
        self.model = model
        self.batch = int(batch)
        self.encoder = stepper_for(model.audio_encoder)
        self.visual = stepper_for(model.visual_encoder)
        self.separator = stepper_for(model.separator)
        self.decoder = stepper_for(model.decoder)
        self.mapping = model.separator.output_type != "mask"
        self.hop = int(model.audio_encoder.stride)
        self.delay_samples = int(model.audio_encoder.kernel_size) - self.hop
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.reset()

    def reset(self) -> None:
        """Start a new stream: zero states, nothing pending."""
        b, dev, dt = self.batch, self.device, self.dtype
        self._states = {name: part.init_state(b, dev, dt) for name, part in
                        (("enc", self.encoder), ("vis", self.visual), ("sep", self.separator),
                         ("dec", self.decoder))}
        self._pending = torch.zeros(b, 0, device=dev, dtype=dt)  # samples short of a hop
        self._vfeats = None  # [B, Dv, m]: video frames _v0 .. _v0 + m - 1 (encoded)
        self._v0 = 0
        self._frames = 0  # audio frames done
        self._samples_in = 0
        self._samples_out = 0  # output samples returned (time 0 on)
        self._flushed = False

    @property
    def video_frames(self) -> int:
        """Video frames received so far."""
        return self._v0 + (0 if self._vfeats is None else self._vfeats.shape[-1])

    def _push_frames(self, frames: torch.Tensor) -> None:
        if frames.shape[0] != self.batch:
            raise ValueError(f"frames: batch {frames.shape[0]}, the stream's is {self.batch}")
        if frames.shape[1] == 0:
            return
        vf, self._states["vis"] = self.visual.step(self._states["vis"], frames.to(self.device))
        self._vfeats = vf if self._vfeats is None else torch.cat((self._vfeats, vf), dim=-1)

    def _run(self, wav: torch.Tensor) -> torch.Tensor:
        """Whole hops ``[B, k S]`` -> the decoder's next ``k S`` samples (time -(K - S) on)."""
        k = wav.shape[-1] // self.hop
        st = self._states
        feats, st["enc"] = self.encoder.step(st["enc"], wav)
        # audio frame j holds video frame floor((j S + S - 1) / 640), or the latest received
        index = [min((j * self.hop + self.hop - 1) // SAMPLES_PER_VIDEO_FRAME,
                     self.video_frames - 1) - self._v0
                 for j in range(self._frames, self._frames + k)]
        if index[0] == index[-1]:  # the usual case: one video frame for the whole block
            vis = self._vfeats[..., index[0]:index[0] + 1].expand(-1, -1, k)
        else:
            vis = self._vfeats.index_select(-1, torch.tensor(index, device=self.device))
        mask, st["sep"] = self.separator.step(st["sep"], feats, vis)
        out, st["dec"] = self.decoder.step(st["dec"], mask if self.mapping else feats * mask)
        self._frames += k
        # keep the video frames from the one the next audio frame needs (at least the last)
        keep = min((self._frames * self.hop + self.hop - 1) // SAMPLES_PER_VIDEO_FRAME,
                   self.video_frames - 1)
        if keep > self._v0:
            self._vfeats = self._vfeats[..., keep - self._v0:]
            self._v0 = keep
        return out

    def _emit(self, raw: torch.Tensor, raw_end: int, end: int) -> torch.Tensor:
        """``raw``: the decoder's samples up to index ``raw_end`` on its axis (which starts
        K - S samples before time 0) -> the part at times ``[returned so far, end)``."""
        offset = raw_end - raw.shape[-1]  # raw index of raw[:, 0]
        start = max(self._samples_out + self.delay_samples - offset, 0)
        stop = max(min(raw.shape[-1], end + self.delay_samples - offset), start)
        out = raw[:, start:stop]
        self._samples_out += out.shape[-1]
        return out

    def push(self, audio: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Audio ``[B, n]`` (n >= 1, any size; 16 kHz) and the video frames that arrived with
        it (``[B, m, H, W]`` uint8 ROIs or ``[B, m, 512]`` float embeddings, or None) -> the
        output samples final now ``[B, k]`` (k may be 0). RuntimeError after :meth:`flush`
        (call :meth:`reset` to start a new stream)."""
        if self._flushed:
            raise RuntimeError("the stream was flushed: call reset() to start a new one")
        if audio.dim() != 2 or audio.shape[0] != self.batch:
            raise ValueError(f"audio must be [{self.batch}, n], got {list(audio.shape)}")
        if frames is not None:
            self._push_frames(frames)
        self._samples_in += audio.shape[-1]
        pending = torch.cat((self._pending, audio.to(self.device, self.dtype)), dim=-1)
        whole = 0 if self._vfeats is None else pending.shape[-1] // self.hop * self.hop
        self._pending = pending[:, whole:]
        if whole == 0:
            return pending[:, :0]
        out = self._run(pending[:, :whole])
        return self._emit(out, self._frames * self.hop, self._samples_in)

    def flush(self) -> torch.Tensor:
        """The rest of the output ``[B, k]`` (the audio short of a hop is padded with zeros,
        as offline, and the decoder's overlap tail is added): afterwards the outputs of the
        stream add up to the pushed length. A second flush returns ``[B, 0]``. ValueError
        when audio but no video frame was pushed."""
        empty = self._pending[:, :0]
        if self._flushed:
            return empty
        self._flushed = True
        if self._samples_in == 0:
            return empty
        if self._vfeats is None:
            raise ValueError("no video frame was pushed: the model needs the lips (push frames "
                             "with the audio)")
        parts = []
        rest = self._pending.shape[-1]
        if rest:
            pad = -rest % self.hop
            wav = torch.cat((self._pending, self._pending.new_zeros(self.batch, pad)), dim=-1)
            self._pending = empty
            out = self._run(wav)
            parts.append(self._emit(out, self._frames * self.hop, self._samples_in))
        tail = self._states["dec"]["tail"]  # the next K - S samples on the decoder's axis
        parts.append(self._emit(tail, self._frames * self.hop + tail.shape[-1], self._samples_in))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
