"""One mp4 per face: the source video stream (copied when possible) plus an extracted wav.

Timing
------
The wav's sample 0 belongs at source time ``origin`` (seconds on the source container's clock,
the same clock as the video packets). The output clock is the source clock shifted by
``shift = min(video_start, origin)`` so that the file starts at 0:

* the video packets keep their timestamps minus ``shift`` (copied packets are otherwise
  untouched, so the stream is bit-identical and its rotation matrix is kept);
* the audio track always starts at output time 0: when ``origin`` lies after the first video
  frame, ``(origin - video_start) * 16000`` zeros are encoded before the wav.

AAC encoder delay: FFmpeg's AAC encoder emits 1024 priming samples and timestamps its first
packet at -1024; the mp4 muxer turns that negative start into an edit list (``elst``
media_time 1024) that decoders and players honour, so the first decoded sample is wav sample 0
at output time 0 exactly. Keeping the audio at output time 0 matters: an audio track starting
later would be delayed by an *empty edit* that the mp4 muxer rounds to its 1 ms movie
timescale and that includes the priming. The video track's own start offset, if any, is an
empty edit as well, written in a movie timescale fine enough for the video's timestamps.
"""
from __future__ import annotations

import os

import numpy as np

from avse.video.frames import MediaInfo, probe, video_stream
from avse.video.media import MediaError

_AUDIO_BLOCK_S = 1.0  # wav read and encoded in blocks of this many seconds
_AUDIO_LEAD_S = 1.0  # audio is muxed up to this far ahead of the video (interleaving)


def _wav_blocks(wav, pad: int, rate: int):
    """Yield float32 mono blocks: ``pad`` zeros, then the wav, ``rate * 1 s`` at a time."""
    block = int(rate * _AUDIO_BLOCK_S)
    while pad > 0:
        n = min(pad, block)
        pad -= n
        yield np.zeros(n, np.float32)
    while True:
        data = wav.read(block, dtype="float32", always_2d=True)
        if not len(data):
            return
        yield data[:, 0]


class _AudioTrack:
    """Encodes wav blocks to AAC on demand so audio and video packets stay interleaved."""

    def __init__(self, out, stream, blocks, rate: int):
        self.out, self.stream, self.blocks, self.rate = out, stream, blocks, rate
        self.samples = 0  # samples encoded so far (output audio starts at time 0)
        self.done = False

    def fill_until(self, seconds: float) -> None:
        """Encode and mux blocks until the audio reaches ``seconds`` (or the wav ends)."""
        import av

        while not self.done and self.samples < seconds * self.rate:
            block = next(self.blocks, None)
            if block is None:
                self.done = True
                self.out.mux(self.stream.encode(None))
                return
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block[None, :]),
                                               format="flt", layout="mono")
            frame.sample_rate, frame.pts = self.rate, self.samples
            self.out.mux(self.stream.encode(frame))
            self.samples += len(block)

    @property
    def seconds(self) -> float:
        return self.samples / self.rate


def _copy_video(inp, ivs, out, ovs, audio: _AudioTrack, shift: float) -> float:
    """Remux the video packets shifted by ``shift`` seconds; returns the video end (s)."""
    tb = ivs.time_base
    offset = int(round(shift / tb))
    end = 0.0
    for packet in inp.demux(ivs):
        if packet.dts is None and packet.pts is None:  # demuxer flush packet
            continue
        when = packet.dts if packet.dts is not None else packet.pts
        audio.fill_until(float((when - offset) * tb) + _AUDIO_LEAD_S)
        if packet.pts is not None:
            packet.pts -= offset
            end = max(end, float((packet.pts + (packet.duration or 0)) * tb))
        if packet.dts is not None:
            packet.dts -= offset
        packet.stream = ovs
        out.mux(packet)
    return end


def _encode_video(inp, ivs, out, ovs, audio: _AudioTrack, shift: float) -> float:
    """Decode and re-encode the video (H.264) with its timestamps shifted; returns its end (s)."""
    import av
    from av.video.reformatter import VideoReformatter

    tb = ivs.time_base
    offset = int(round(shift / tb))
    width, height = ovs.codec_context.width, ovs.codec_context.height
    reformatter = VideoReformatter()  # one swscale context for the whole stream
    ivs.thread_type = "AUTO"
    end, last_pts, step = 0.0, None, 1
    for frame in inp.decode(ivs):
        pts = frame.pts if frame.pts is not None else (last_pts or 0) + step
        if last_pts is not None and pts <= last_pts:  # the encoder needs increasing pts
            continue
        if last_pts is not None:
            step = pts - last_pts
        last_pts = pts
        audio.fill_until(float((pts - offset) * tb) + _AUDIO_LEAD_S)
        image = reformatter.reformat(frame, width=width, height=height, format="yuv420p")
        image.pts, image.time_base = pts - offset, tb
        image.pict_type = av.video.frame.PictureType.NONE
        out.mux(ovs.encode(image))
        end = float((pts - offset + step) * tb)
    out.mux(ovs.encode(None))
    return end


def _add_h264(out, ivs, info: MediaInfo):
    """An H.264 output stream with the source's stored size (made even), clock and rotation."""
    ovs = out.add_stream("libx264", rate=ivs.average_rate or ivs.guessed_rate or 25,
                         options={"preset": "veryfast", "crf": "18"})
    ovs.width = ivs.codec_context.width // 2 * 2
    ovs.height = ivs.codec_context.height // 2 * 2
    ovs.pix_fmt = "yuv420p"
    ovs.time_base = ivs.time_base
    ovs.codec_context.time_base = ivs.time_base
    if info.rotation:
        ovs.set_display_rotation(info.rotation)
    return ovs


def mux_audio(video_path: str, wav_path: str, out_path: str, origin: float,
              info: MediaInfo | None = None, copy_video: bool = True,
              audio_bitrate: int = 64000) -> dict:
    """Write an mp4 with the source's video stream and a wav as AAC audio, in sync.

    Arguments
    ---------
    video_path : str
        the source video.
    wav_path : str
        mono wav (16 kHz) whose sample 0 plays at source time ``origin``; read in 1 s blocks.
    out_path : str
        the mp4 to write (a temporary name in the same folder, then ``os.replace``).
    origin : float
        source time (s) of wav sample 0, on the video packets' clock (see the module
        docstring for how the output is shifted to start at 0).
    info : MediaInfo or None
        :func:`probe` result for ``video_path`` (probed when not given).
    copy_video : bool
        copy the video packets when the mp4 muxer accepts the codec (else, and when False,
        re-encode with libx264, CRF 18, keeping the timestamps and the rotation matrix).
    audio_bitrate : int
        AAC bit rate (bit/s).

    Returns
    -------
    ``{"video": "copy" or "h264", "audio": "aac", "duration": seconds}`` (the longer track).

    Raises
    ------
    MediaError naming the file that failed (source, wav or output).

    Example
    -------
    ::

        info = probe("clip.mp4")
        decode_audio("clip.mp4", "mix.wav", origin=info.origin)
        mux_audio("clip.mp4", "face0.wav", "face0.mp4", origin=info.origin)
        # -> {'video': 'copy', 'audio': 'aac', 'duration': 10.0}
    """
    import av
    import soundfile as sf

    info = info if info is not None else probe(video_path)
    try:
        wav = sf.SoundFile(wav_path)
    except Exception as err:
        raise MediaError(f"{wav_path}: cannot read the wav to mux ({err})") from err
    from avse.safe_io import temp_name

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = temp_name(out_path)
    try:
        with wav:
            if wav.channels != 1:
                raise MediaError(f"{wav_path}: {wav.channels} channels; mux_audio needs mono")
            shift = min(info.video_start, origin)
            pad = int(round((origin - shift) * wav.samplerate))
            inp = av.open(str(video_path))
            with inp:
                ivs = video_stream(inp)
                if ivs is None:
                    raise MediaError(f"{video_path}: no video stream")
                timescale = min(max(1000, ivs.time_base.denominator), 1_000_000)
                with av.open(tmp, "w", format="mp4",
                             options={"movie_timescale": str(timescale)}) as out:
                    mode = "copy" if copy_video else "h264"
                    if copy_video:
                        try:
                            ovs = out.add_stream_from_template(ivs)
                        except ValueError:  # the mp4 muxer does not take this codec
                            mode = "h264"
                    if mode == "h264":
                        ovs = _add_h264(out, ivs, info)
                    aus = out.add_stream("aac", rate=wav.samplerate, layout="mono")
                    aus.bit_rate = int(audio_bitrate)
                    audio = _AudioTrack(out, aus, _wav_blocks(wav, pad, wav.samplerate),
                                        wav.samplerate)
                    write = _copy_video if mode == "copy" else _encode_video
                    video_end = write(inp, ivs, out, ovs, audio, shift)
                    audio.fill_until(float("inf"))
        os.replace(tmp, out_path)
    except MediaError:
        _remove(tmp)
        raise
    except Exception as err:  # FFmpegError, OSError, ...
        _remove(tmp)
        raise MediaError(f"{video_path} + {wav_path} -> {out_path}: muxing failed "
                         f"({type(err).__name__}: {err})") from err
    return {"video": mode, "audio": "aac", "duration": max(video_end, audio.seconds)}


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)
