"""Synthetic talking-face corpora in the VoxCeleb2, LRS2 and MUSAN layouts.

The default data of the demo: every clip is a cartoon face whose mouth follows the
synthetic speech of :mod:`avse.data.synthetic.speech` frame by frame (opening from the
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
    python -m avse.data.synthetic --layout musan --out data/musan --clips 8
"""
from avse.data.synthetic.faces import Look, render_face, speaker_look, write_mp4
from avse.data.synthetic.layouts import (CorpusSummary, main, make_lrs2_corpus, make_musan_corpus,
                                         make_voxceleb2_corpus)
from avse.data.synthetic.speech import Utterance, Voice, speaker_voice, synthesize_utterance

__all__ = [
    "Look", "CorpusSummary", "speaker_look", "render_face", "write_mp4", "make_voxceleb2_corpus",
    "make_lrs2_corpus", "make_musan_corpus", "main", "speaker_voice", "synthesize_utterance",
    "Utterance", "Voice",
]
