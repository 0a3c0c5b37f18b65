"""Inference: ``AVSEExtractor.from_hparams(source=DIR)``, and the ``avse-extract`` command.

``DIR`` is an experiment folder (``model.yaml`` + ``save/CKPT+*/model.ckpt``; the checkpoint
with the best validation SI-SDR is used) or an exported folder (``model.yaml`` +
``model.ckpt``). ``model.yaml``'s ``inference`` section (crop preset, sample rate, mixture
normalisation) says how the model was fed in training; inference feeds it the same way.

Any video, each face's voice out (faces tracked; two passes, memory bounded)::

    avse-extract --model DIR --video ANY_VIDEO [--mixture AUDIO] --out_dir OUT
                 [--face all|largest|N] [--chunk_seconds S] [--device cpu] [--precision fp32|bf16]
    avse-extract --video ANY_VIDEO --list_faces [--out_dir OUT]   # detection and tracking only

OUT gets, per face track k (numbered left to right): ``face<k>.wav`` (16 kHz, as long as the
input audio, silence where the face is off screen), ``face<k>.mp4`` (the source video with
that audio, in sync), and ``faces.json`` / ``faces.png`` (which face is which).

One face, one wav (the face tracked, or ``--face_centred`` for clips already cropped like
the corpus, e.g. VoxCeleb2 test clips; a ``.npy`` of lip embeddings for embedding models)::

    avse-extract --model DIR --video face.mp4 [--mixture mix.wav] --out target.wav

A model trained with an activity head (``activity_head:`` in its model yaml) tells per frame
whether the target speaks: each face's speaking time and spans are printed and written to
``faces.json`` (``speaking_seconds``, ``_fraction``, ``_spans``); ``--gate [--gate_threshold
0.5] [--gate_db 30]`` attenuates the frames judged silent (:mod:`avse.gating`).

A model that reads lip embeddings (SEANet, MuSE, ...) takes any video too when its
``model.yaml`` names a visual front-end (``inference: frontend``, written by
``avse-convert-seanet --frontend``, ``avse-embed --model`` or training on the embedding
stage's shards): the embeddings are computed from each face track's face-centred frames with
the front-end's crop preset, over the whole track (not per chunk: the front-end's 3-D stem
looks at neighbouring frames), or from a ``--face_centred`` clip (:mod:`avse.embed`).

Reliability: inputs are checked before any work (:mod:`avse.video.preflight`: unreadable,
empty, truncated, not media, no video, no audio without ``--mixture``, frames too small or
too large, a header that lies about the duration, a mixture shorter than one video frame):
one line on stderr naming the file and what to do, exit code 2. Outputs appear complete or
not at all (:mod:`avse.safe_io`: hidden temporaries renamed at the end; a killed run leaves
nothing under the final names). A model folder is data (:mod:`avse.models.safety`): weights
are read with ``weights_only=True`` and checked against their ``files:`` manifest, and
``model.yaml`` may name only registered plugins unless ``--trust_model_code`` is given.
"""
from __future__ import annotations

import logging
import os
import sys

import numpy as np
import torch

from avse.data.align import FPS, SAMPLE_RATE, AlignmentError, fit_visual_to_audio
from avse.gating import NO_HEAD, Gate, format_speaking, speaking_summary
from avse.video.media import MOUTH_CROPS, MediaError, decode_media, read_audio, resample

MIXTURE_NORMS = ("peak", "none")
"""``model.yaml`` ``inference: mixture_norm`` values: ``peak`` (divided by the file's peak),
``none`` (as it is: causal models, which cannot see the whole file)."""

logger = logging.getLogger(__name__)


class AVSEExtractor:
    """Extract a target speaker with a trained :class:`~avse.models.AVSEModel`.

    Arguments
    ---------
    model : AVSEModel
    device : str
    crop : str, optional
        mouth-crop preset (:data:`avse.video.crops.CROP_PRESETS`); default: the one
        ``inference`` records (the training shards'). Face-centred clips (:meth:`extract`)
        take the fixed presets of ``avse.video.media.MOUTH_CROPS``.
    precision : str
        ``"fp32"`` (default; what the reference-exactness tests check), ``"bf16"``
        (``torch.autocast`` with bfloat16: CPUs with AMX/AVX512-BF16 and GPUs; about 2-3x
        faster on such CPUs, outputs within about 1e-2 of fp32, see
        ``benchmarks/models.py --precision bf16``) or ``"fp16"`` (CUDA only). Weights stay
        fp32 and the estimate is returned in fp32.
    inference : dict, optional
        ``model.yaml``'s ``inference`` section (:func:`avse.models.io.inference_config`).
    frontend : avse.models.frontends.Frontend, optional
        for a model that reads lip embeddings: the front-end that computes them from video
        with the ``crop`` preset (:meth:`from_hparams` loads the one ``inference`` names).
    gate, gate_threshold, gate_db : bool, float, float
        attenuate by ``gate_db`` the frames where the target is judged silent (:mod:`avse.gating`;
        needs a model with an activity head, ``model.has_activity_head``, which reports the
        target's activity, probabilities and speaking time, with or without ``gate``).
    """

    PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, model, device: str = "cpu", crop: str | None = None,
                 precision: str = "fp32", inference: dict | None = None, frontend=None,
                 gate: bool = False, gate_threshold: float = 0.5, gate_db: float = 30.0):
        from avse.models.io import inference_config
        from avse.video.crops import CROP_PRESETS

        self.inference = inference_config(inference)
        if crop is not None:
            self.inference["crop"] = crop
        if self.inference["crop"] not in CROP_PRESETS:
            raise ValueError(f"unknown crop {self.inference['crop']!r}; known: {list(CROP_PRESETS)}")
        if self.inference["mixture_norm"] not in MIXTURE_NORMS \
                or self.inference["sample_rate"] != SAMPLE_RATE:
            raise ValueError(f"model.yaml inference section {self.inference}: only mixture_norm "
                             f"{' or '.join(MIXTURE_NORMS)} at {SAMPLE_RATE} Hz is supported")
        if precision not in self.PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; known: {sorted(self.PRECISIONS)}")
        if precision == "fp16" and not str(device).startswith("cuda"):
            raise ValueError("precision 'fp16' needs a CUDA device; on CPU use 'bf16' or 'fp32'")
        self.has_activity = bool(getattr(model, "has_activity_head", False))
        if gate and not self.has_activity:
            raise ValueError(f"the model {NO_HEAD}")
        self.gate, self.gating = bool(gate), Gate(gate_threshold, gate_db)
        self.model = model.to(device).eval()
        self.device, self.precision = device, precision
        self.frontend = None
        if frontend is not None:
            in_dim = getattr(self.model.visual_encoder, "in_dim", None)
            if self.model.visual_input != "emb" or frontend.frame_dim != in_dim:
                raise ValueError(f"the front-end gives {frontend.frame_dim}-d features; the model "
                                 f"reads {'mouth crops' if in_dim is None else f'{in_dim}-d'}")
            self.frontend = frontend.to(device).eval()

    @property
    def crop(self) -> str:
        return self.inference["crop"]

    @classmethod
    def from_hparams(cls, source: str, device: str = "cpu", crop: str | None = None,
                     key: str = "si_sdr", precision: str = "fp32", trust_code: bool = False,
                     **gate):
        """Load from an experiment or exported folder (SpeechBrain ``Pretrained`` style);
        ``gate``: the constructor's ``gate``, ``gate_threshold`` and ``gate_db``;
        ``trust_code``: let ``model.yaml`` name classes by import path
        (:func:`avse.models.io.load_model`)."""
        from avse.models.io import frontend_path, load_inference_config, load_model

        model = load_model(source, key=key, trust_code=trust_code)
        if gate.get("gate") and not getattr(model, "has_activity_head", False):
            raise ValueError(f"the model in {source} {NO_HEAD}")
        inference = load_inference_config(source)
        frontend = frontend_path(source, inference)
        if frontend is not None:
            from avse.embed import load

            frontend = load(frontend)
        return cls(model, device=device, crop=crop, precision=precision, inference=inference,
                   frontend=frontend, **gate)

    @property
    def visual_input(self) -> str:
        return self.model.visual_input

    # -------------------------------------------------------------- batch API
    @torch.no_grad()
    def extract_batch(self, mixture: torch.Tensor, visual: torch.Tensor,
                      peak: float | None = None, return_activity: bool = False):
        """mixture ``[B, T]`` @16 kHz, visual ``[B, Tv, 88, 88]`` or ``[B, Tv, 512]`` -> ``[B, T]``.

        Each mixture is peak-normalised as in training and the estimate is scaled back;
        ``peak`` gives the normalisation gain instead (a chunk of a long file uses the file's).
        A model trained on mixtures as they are (``mixture_norm: none``, the causal egs) gets
        them as they are (gain 1, ``peak`` ignored).
        With ``gate`` each row is gated over its length (:meth:`avse.gating.Gate.gain`).
        ``return_activity``: returns ``(estimate, probabilities [B, Tv] that the target speaks
        in each frame)`` (None for a model without a head).
        """
        mixture = torch.as_tensor(mixture, dtype=torch.float32, device=self.device)
        visual = torch.as_tensor(visual, device=self.device)
        if visual.dtype not in (torch.uint8, torch.float32):
            visual = visual.float()
        if self.inference["mixture_norm"] == "none":
            peak = 1.0
        elif peak is None:
            peak = mixture.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8)
        else:
            peak = max(float(peak), 1e-8)
        dtype = self.PRECISIONS[self.precision]
        with torch.autocast(torch.device(self.device).type, dtype=dtype, enabled=dtype is not None):
            out = self.model(mixture / peak, visual)
        estimate = out.estimate.float() * peak
        activity = torch.sigmoid(out.aux["activity"].float()) if self.has_activity else None
        if self.gate:
            gain = self.gating.gain(activity.cpu().numpy(), estimate.shape[-1])
            estimate = estimate * torch.from_numpy(gain).to(estimate.device)
        return (estimate, activity) if return_activity else estimate

    def extract_array(self, wav: np.ndarray, visual: np.ndarray, peak: float | None,
                      return_activity: bool = False):
        """One chunk: ``wav [T]``, ``visual [Tv, ...]`` (``T = Tv * 640``), the file's ``peak``
        (None: the chunk's) -> estimate ``[T]`` float32 (and with ``return_activity`` the
        probabilities ``[Tv]`` or None, as :meth:`extract_batch`)."""
        wav_t = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
        vis_t = torch.from_numpy(np.ascontiguousarray(visual))[None]
        est, act = self.extract_batch(wav_t, vis_t, peak=peak, return_activity=True)
        est = est[0].cpu().numpy()
        return (est, None if act is None else act[0].cpu().numpy()) if return_activity else est

    def stream(self, peak: float | None = None):
        """A :class:`~avse.stream_extract.StreamSession`: this (causal) model fed block by
        block, its state kept between blocks (``push(audio, frames)``, ``flush()``,
        ``stats()``); ``peak``: the fixed gain for a model trained with peak normalisation."""
        from avse.stream_extract import StreamSession

        return StreamSession(self, peak=peak)

    # -------------------------------------------------------------- file API
    def load_visual(self, video) -> np.ndarray:
        """``video``: a face-centred mp4 (cropped as the recipe does) or a ``.npy`` embedding."""
        if isinstance(video, np.ndarray):
            return video
        path = str(video)
        if path.endswith(".npy"):
            if self.visual_input != "emb":
                raise ValueError(f"{path}: this model reads mouth ROI frames from a video, not "
                                 "lip embeddings; give the mp4")
            emb = np.load(path, allow_pickle=False)
            if emb.ndim != 2 or emb.shape[1] != 512:
                raise ValueError(f"{path}: lip embedding must be [T, 512], got {list(emb.shape)}")
            return emb.astype(np.float32)
        if self.visual_input == "emb":
            if self.frontend is None:
                raise ValueError(f"{path}: this model takes lip embeddings and its model.yaml "
                                 "names no front-end: give a .npy at 25 fps (avse-embed), or "
                                 "record one with avse-embed --frontend FILE --model DIR")
            from avse.embed import embed_video

            return embed_video(self.frontend, path, self.crop, self.device)
        if self.crop not in MOUTH_CROPS:
            raise ValueError(f"{path}: the crop preset {self.crop!r} needs face tracking; run "
                             "without --face_centred (a face-centred clip takes the fixed presets "
                             f"{sorted(MOUTH_CROPS)})")
        _, lips = decode_media(path, want_audio=False, crop=MOUTH_CROPS[self.crop])
        return lips

    def load_inputs(self, mixture, video, sample_rate: int | None = None):
        """``(mixture [T] @16 kHz, visual [T / 640, ...])`` as :meth:`extract` takes them
        (``mixture``: a path, an array at ``sample_rate``, or None for the mp4's own audio),
        fitted to each other: a length mismatch up to 1 s is padded or trimmed with a warning;
        beyond that, AlignmentError."""
        from avse.video.preflight import check_mixture_length

        source = "the mixture"
        if mixture is None:
            if str(video).endswith(".npy"):
                raise ValueError("no mixture given: only an mp4 carries its own audio")
            mixture, source = read_audio(str(video)), str(video)
        elif isinstance(mixture, (str, os.PathLike)):
            mixture, source = read_audio(str(mixture)), str(mixture)
        else:
            mixture = np.asarray(mixture, dtype=np.float32).reshape(-1)
            if sample_rate and sample_rate != SAMPLE_RATE:
                mixture = resample(mixture, sample_rate, SAMPLE_RATE)
        check_mixture_length(len(mixture), source)
        visual = self.load_visual(video)
        try:
            visual, diff = fit_visual_to_audio(visual, len(mixture))
        except AlignmentError as err:
            raise AlignmentError(f"{video} (mixture: {source}): {err}") from None
        if diff:
            logger.warning("audio and video lengths differ by %d frame(s) (%.2f s): the video was "
                           "%s", abs(diff), abs(diff) / FPS, "padded" if diff > 0 else "trimmed")
        return mixture, visual

    def extract(self, mixture=None, video=None, sample_rate: int | None = None,
                return_activity: bool = False):
        """Extract the target of ``video`` from ``mixture``; returns ``wav [T]`` @16 kHz (and
        with ``return_activity`` the probabilities ``[Tv]``, or None, as :meth:`extract_batch`).

        ``mixture``: a path (wav/flac/m4a/mp4), an array ``[T]``, or None to use the mp4's own
        audio. ``sample_rate``: the array's rate (resampled to 16 kHz). An audio/video length
        mismatch up to 1 s is padded or trimmed with a warning; beyond that, AlignmentError.
        """
        if video is None:
            raise ValueError("extract() needs the target's video (mp4) or lip embedding (.npy)")
        mixture, visual = self.load_inputs(mixture, video, sample_rate)
        est, act = self.extract_array(mixture, visual, None, return_activity=True)
        est, act = torch.from_numpy(est), None if act is None else torch.from_numpy(act)
        return (est, act) if return_activity else est

    # -------------------------------------------------------------- any video
    def extract_video(self, video: str, out_dir: str | None = None, mixture: str | None = None,
                      face="all", out_wav: str | None = None, chunk_seconds: float = 4.0,
                      overlap_seconds: float = 1.0, work_dir: str | None = None,
                      mux: bool = True, progress: bool = False, keep_work: bool = False,
                      **scan_opts) -> dict:
        """Every face of any video: track the faces, extract each one's voice in chunks
        (:func:`avse.video.pipeline.extract_video`). The inputs are checked first
        (:mod:`avse.video.preflight`); the outputs appear only when all are complete.

        Arguments
        ---------
        video : str
            any video PyAV reads (any fps, size, rotation; several faces; long).
        out_dir : str
            receives ``face<k>.wav``, ``face<k>.mp4``, ``faces.json`` and ``faces.png``.
        mixture : str, optional
            the mixture (any audio file); default: the video's own audio. Its sample 0 is taken
            to be the first video frame's time.
        face : str or int
            ``"all"``, ``"largest"`` (largest mean box) or a track number (left to right).
        out_wav : str, optional
            instead of ``out_dir``: one wav for one face (an error naming the faces when
            several are found and ``face`` is ``"all"``).
        chunk_seconds, overlap_seconds : float
            see :mod:`avse.video.longform`.
        scan_opts
            :func:`avse.video.faces.detect_and_track` options (``detect_every``,
            ``max_side``, ``min_track_s``, ``merge``).

        Returns
        -------
        dict: the files written, the tracks, and timings (``seconds``, ``rtf``); only for a model
        with an activity head, ``gate`` (its options) and ``speaking``: track id ->
        :func:`avse.gating.speaking_summary` (also in ``faces.json``, per track).
        """
        from avse.video.pipeline import extract_video

        return extract_video(self, video, out_dir=out_dir, mixture=mixture, face=face,
                             out_wav=out_wav, chunk_seconds=chunk_seconds,
                             overlap_seconds=overlap_seconds, work_dir=work_dir, mux=mux,
                             progress=progress, keep_work=keep_work, **scan_opts)


def select_faces(scan, face, single: bool = False, video: str = "") -> list:
    """:func:`avse.video.pipeline.select_faces`."""
    from avse.video.pipeline import select_faces as select

    return select(scan, face, single=single, video=video)


def list_faces(video: str, out_dir: str | None = None, progress: bool = False, **scan_opts):
    """:func:`avse.video.pipeline.list_faces`: detection and tracking only."""
    from avse.video.pipeline import list_faces as scan_only

    return scan_only(video, out_dir, progress=progress, **scan_opts)


ERRORS = (MediaError, AlignmentError, ValueError, OSError, RuntimeError, KeyError, EOFError)
"""What ``avse-extract`` reports as one line and exit code 2 (bad input, model folder or output
place; the model loaders turn unpickling and yaml errors into ``ModelLoadError``)."""


def main(argv=None) -> int:
    from avse.extract_args import EXIT_BAD_INPUT, error_line, parse, scan_opts

    parser, args = parse(argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    progress = not args.noprogressbar and sys.stderr.isatty()
    from avse.video.faces import format_faces_table

    try:
        if args.list_faces:
            scan = list_faces(args.video, args.out_dir, progress=progress, **scan_opts(args))
            print(format_faces_table(scan))
            print(f"{len(scan.tracks)} face track(s), {len(scan.dropped)} dropped (shorter than "
                  f"{args.min_track_seconds} s)" + (f"; wrote {args.out_dir}/faces.json, faces.png"
                                                     if args.out_dir else ""))
            return 0
        gate = {k: getattr(args, k) for k in ("gate", "gate_threshold", "gate_db")}
        extractor = AVSEExtractor.from_hparams(args.model, device=args.device, crop=args.crop,
                                               precision=args.precision,
                                               trust_code=args.trust_model_code, **gate)
        if args.stream:
            return _write_streamed(extractor, args)
        if args.face_centred or args.video.endswith(".npy"):
            return _write_one(extractor, args)
        result = extractor.extract_video(args.video, out_dir=args.out_dir, mixture=args.mixture,
                                         face=args.face, out_wav=args.out,
                                         chunk_seconds=args.chunk_seconds,
                                         overlap_seconds=args.overlap_seconds,
                                         work_dir=args.work_dir, progress=progress,
                                         **scan_opts(args))
    except ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return EXIT_BAD_INPUT
    sec, rtf = result["seconds"], result["rtf"]
    print(format_faces_table(result["scan"]))
    for path in result["files"]:
        print(f"wrote {path}")
    for k, said in result.get("speaking", {}).items():  # a model with an activity head
        print(f"face {k}: {format_speaking(said)}")
    print(f"tracks: {result['tracks']} found, {result['dropped']} dropped, "
          f"{len(result['extracted'])} extracted; {result['video_seconds']:.1f} s of video in "
          f"{sum(sec.values()):.1f} s (real-time factor: faces {rtf['faces']:.2f}, "
          f"extraction {rtf['extract']:.2f})")
    return 0


def _write_one(extractor, args) -> int:
    """A face-centred clip (or a .npy embedding): one wav, written atomically."""
    import soundfile as sf

    from avse.safe_io import OutputStage
    from avse.video.preflight import check_audio, check_video

    check_video(args.video, have_mixture=bool(args.mixture))
    if args.mixture:
        check_audio(args.mixture)
    wav, act = extractor.extract(args.mixture, args.video, return_activity=True)
    with OutputStage() as stage:
        sf.write(stage.file(args.out), np.clip(wav.numpy(), -1, 1), SAMPLE_RATE,
                 subtype="PCM_16", format="WAV")
        stage.commit()
    print(f"wrote {args.out} ({len(wav) / SAMPLE_RATE:.2f} s)")
    if act is not None:
        print(format_speaking(speaking_summary(extractor.gating.speaking(act.numpy()))))
    return 0


def _write_streamed(extractor, args) -> int:
    """``--stream``: a face-centred clip (or a .npy) through the streaming path, block by
    block, one thread; one wav, and the per-block compute time, real-time factor, latency."""
    import soundfile as sf

    from avse.safe_io import OutputStage
    from avse.stream_extract import format_stats, run_blocks
    from avse.video.preflight import check_audio, check_video

    check_video(args.video, have_mixture=bool(args.mixture))
    if args.mixture:
        check_audio(args.mixture)
    torch.set_num_threads(args.threads)
    wav, visual = extractor.load_inputs(args.mixture, args.video)
    session = extractor.stream(peak=args.stream_peak)
    block = max(1, round(args.block_ms * SAMPLE_RATE / 1000))
    out = run_blocks(session, wav, visual, block=block)
    with OutputStage() as stage:
        sf.write(stage.file(args.out), np.clip(out, -1, 1), SAMPLE_RATE, subtype="PCM_16",
                 format="WAV")
        stage.commit()
    print(f"wrote {args.out} ({len(out) / SAMPLE_RATE:.2f} s)")
    print(format_stats(session.stats()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
