"""Any video, each face's voice out: :func:`extract_video` (``AVSEExtractor.extract_video``
and ``avse-extract --out_dir``), :func:`select_faces` and :func:`list_faces`.

Two passes over the video (faces tracked, then chunked extraction, memory bounded:
:mod:`avse.video.faces`, :mod:`avse.video.longform`). The inputs are checked first
(:mod:`avse.video.preflight`); the outputs are written under hidden temporary names and
renamed into place only when all of them are complete (:class:`avse.safe_io.OutputStage`),
so a failed or killed run leaves nothing under the final names.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from avse.data.align import FPS
from avse.safe_io import OutputStage, work_folder
from avse.video.media import MediaError


def select_faces(scan, face, single: bool = False, video: str = "") -> list:
    """Track ids to extract: ``"all"``, ``"largest"`` or one number; errors list the faces."""
    from avse.video.faces import format_faces_table, largest_track

    ids = [t.id for t in scan.tracks]
    table = format_faces_table(scan)
    if face in (None, "all"):
        if single and len(ids) > 1:
            raise ValueError(f"{video}: {len(ids)} faces found; --out writes one face: pick one "
                             f"with --face N (or --face largest), or use --out_dir for all of "
                             f"them:\n{table}")
        return ids
    if face == "largest":
        return [largest_track(scan).id]
    try:
        k = int(face)
    except (TypeError, ValueError):
        raise ValueError(f"--face must be 'all', 'largest' or a face number, "
                         f"got {face!r}") from None
    if k not in ids:
        raise ValueError(f"{video}: there is no face {k}; the faces are:\n{table}")
    return [k]


def list_faces(video: str, out_dir: str | None = None, progress: bool = False, **scan_opts):
    """Detection and tracking only: print the table; with ``out_dir``, write ``faces.json`` and
    ``faces.png`` (a few crops per track). Returns the scan."""
    from avse.video import faces as F
    from avse.video.preflight import check_video

    check_video(video, have_mixture=True)
    work = tempfile.mkdtemp(prefix="avse-faces-")
    try:
        scan = F.scan_faces(video, work, sample_only=6, progress=progress, **scan_opts)
        if out_dir:
            with OutputStage() as stage:
                staged = stage.folder(out_dir)
                F.write_faces_json(scan, os.path.join(staged, "faces.json"))
                F.write_faces_png(scan, os.path.join(staged, "faces.png"))
                stage.commit()
        return scan
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _mixture_wav(mixture, video, work, origin) -> tuple:
    """The mixture as a 16 kHz wav in ``work`` (sample 0 = grid frame 0) and its peak."""
    import soundfile as sf

    from avse.video.frames import decode_audio
    from avse.video.longform import file_peak
    from avse.video.preflight import check_mixture_length

    mix_wav = os.path.join(work, "mixture.wav")
    decode_audio(mixture or video, mix_wav, origin=None if mixture else origin)
    check_mixture_length(sf.info(mix_wav).frames, mixture or video)
    return mix_wav, file_peak(mix_wav)


def extract_video(extractor, video: str, out_dir: str | None = None, mixture: str | None = None,
                  face="all", out_wav: str | None = None, chunk_seconds: float = 4.0,
                  overlap_seconds: float = 1.0, work_dir: str | None = None, mux: bool = True,
                  progress: bool = False, keep_work: bool = False, **scan_opts) -> dict:
    """Every face of any video (see :meth:`avse.inference.AVSEExtractor.extract_video`, which
    documents the arguments and the result)."""
    from avse.video import faces as F
    from avse.video.frames import probe
    from avse.video.preflight import check_audio, check_video

    if extractor.model.visual_input == "emb" and extractor.frontend is None:
        raise ValueError("this model takes lip embeddings and its model.yaml names no "
                         "front-end to compute them: record one with avse-embed --frontend "
                         "FILE --model DIR (or avse-convert-seanet --frontend)")
    check_video(video, have_mixture=bool(mixture))
    if mixture:
        check_audio(mixture)
    t0 = time.perf_counter()
    info = probe(video)
    origin = info.video_start if mixture else info.audio_start
    if origin is None:
        raise MediaError(f"{video}: no audio stream; give the mixture with --mixture")
    work = work_folder(work_dir)  # (and those of killed runs removed)
    try:
        mix_wav, gain = _mixture_wav(mixture, video, work, origin)  # cheap: its errors first
        scan = F.require_faces(F.detect_and_track(video, origin=origin, info=info,
                                                  progress=progress, **scan_opts), video)
        chosen = select_faces(scan, face, single=out_wav is not None, video=video)
        F.write_face_frames(scan, video, work, tracks=chosen, progress=progress,
                            preset=extractor.crop)  # the preset's gray (lipread: through RGB)
        with OutputStage() as stage:
            staged = stage.folder(out_dir) if out_dir else None
            summary = _extract_faces(extractor, video, scan, chosen, mix_wav, gain, work,
                                     staged, stage.file(out_wav) if out_wav else None,
                                     mux, info, origin, chunk_seconds, overlap_seconds,
                                     progress, t0)
            stage.commit()
        final = out_dir or os.path.dirname(os.path.abspath(out_wav))
        summary["files"] = [out_wav] if out_wav else [
            os.path.join(final, os.path.basename(p)) for p in summary["files"]]
        return summary
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


def _extract_faces(ex, video, scan, chosen, mix_wav, gain, work, staged, staged_wav, mux,
                   info, origin, chunk_seconds, overlap_seconds, progress, t0) -> dict:
    """Pass 2 into the staged folder (or the one staged wav); returns the summary."""
    from tqdm import tqdm

    from avse.video import faces as F
    from avse.video.longform import extract_track

    emb = ex.model.visual_input == "emb"
    written, speaking = [], {}
    t1 = time.perf_counter()
    total = sum(len(scan.track(k).frames) for k in chosen)
    with tqdm(total=total, desc="extract", unit="frame", disable=not progress,
              leave=False) as bar:
        for k in chosen:
            target = staged_wav or os.path.join(staged, f"face{k}.wav")
            visual, lms, preset = scan.faces(k), scan.landmarks(k), ex.crop
            if emb:  # the whole track through the front-end, not chunk by chunk
                from avse.embed import embed_track

                visual = embed_track(ex.frontend, visual, lms, scan.track(k).frames,
                                     ex.crop, os.path.join(work, f"face{k}_emb.npy"), ex.device)
                lms, preset = None, None
            speaking[k] = extract_track(ex, mix_wav, scan.track(k).frames, visual, lms, target,
                                        preset, gain, chunk_seconds, overlap_seconds,
                                        progress=bar).get("speaking")
            written.append(target)
            if staged and mux:
                from avse.video.mux import mux_audio

                mp4 = os.path.join(staged, f"face{k}.mp4")
                mux_audio(video, target, mp4, origin=origin, info=info)
                written.append(mp4)
    t2 = time.perf_counter()
    seconds = {"faces": t1 - t0, "extract": t2 - t1}
    summary = {"tracks": len(scan.tracks), "dropped": len(scan.dropped), "extracted": chosen,
               "video_seconds": scan.n_frames / FPS, "seconds": seconds, "crop": ex.crop,
               "frontend": ex.inference["frontend"],
               "rtf": {k: v / max(scan.n_frames / FPS, 1e-9) for k, v in seconds.items()}}
    if ex.has_activity:
        summary["gate"] = {"on": ex.gate, **ex.gating.options()}
    if staged:  # speaking[k] is None without a head: no speaking keys
        F.write_faces_json(scan, os.path.join(staged, "faces.json"), {"extraction": summary},
                           speaking)
        F.write_faces_png(scan, os.path.join(staged, "faces.png"))
        written += [os.path.join(staged, "faces.json"), os.path.join(staged, "faces.png")]
    if ex.has_activity:
        summary["speaking"] = speaking
    summary.update(files=written, scan=scan)
    return summary
