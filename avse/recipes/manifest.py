"""The manifest stage the audio-visual corpora share (VoxCeleb2, LRS2, LRS3): manifest entries,
media probing and :func:`run_manifest` (re-exported by :mod:`avse.recipes.stages`).

Probing opens every file's header without decoding and rejects, with the reason, what the
later stages cannot use: a file that cannot be read (missing, empty, a symlink loop, a read
error), not media, without the audio or video stream an utterance needs, frames smaller
than :data:`MIN_FRAME_SIDE` or larger than :data:`avse.video.media.MAX_FRAME_PIXELS`, or a
frame rate below :data:`MIN_FPS`. Other frame rates and audio rates/channels are fine: the
extract stage resamples them to 25 fps and 16 kHz mono.

A killed manifest stage resumes: each probed entry goes to a :class:`~avse.recipes.common.Journal`
as it finishes, and a re-run with the same parameters probes only the rest.
"""
from __future__ import annotations

import math
import os

from avse.recipes.common import (
    Journal,
    RecipeError,
    Rejections,
    Summary,
    manifest_status,
    mark_done,
    read_jsonl,
    remove_temp_files,
    write_jsonl,
)
from avse.video.media import MediaError, file_problem, frame_size_problem

#: the smallest frame side staged: below it there is no mouth to crop (1x1 test patterns)
MIN_FRAME_SIDE = 32
#: the lowest frame rate staged: below it the lips hardly move between frames (slide shows)
MIN_FPS = 10.0


def manifest_entry(key: str, spk: str, video: str, clip: str, subset: str, media: str,
                   split: str | None = None) -> dict:
    """One utterance of a manifest (``audio``/``emb`` unset: the mp4 gives both).

    Example
    -------
    >>> manifest_entry("6330/main/00011", "6330", "6330", "00011", "main", "x.mp4", "test")["spk"]
    '6330'
    """
    entry = {"key": key, "spk": spk, "video": video, "clip": clip, "subset": subset,
             "media": media, "audio": None, "emb": None}
    if split is not None:
        entry["split"] = split
    return entry


def id_problem(vid: str, clip: str) -> str | None:
    """Why ``<vid>/<clip>`` cannot be part of an utterance key; None when it can.

    Example
    -------
    >>> id_problem("6330", "00011"), id_problem("6330", "0.1")
    (None, 'ids must not contain dots (WebDataset keys)')
    """
    if not vid or not clip or "/" in clip:
        return "expected '<video id>/<clip>'"
    if "." in vid or "." in clip:
        return "ids must not contain dots (WebDataset keys)"
    return None


def _video_problem(stream) -> str | None:
    """Why a video stream's frames are not staged (size, frame rate), else None."""
    width, height = stream.codec_context.width, stream.codec_context.height
    problem = frame_size_problem(width, height)
    if problem:
        return problem
    if min(width, height) < MIN_FRAME_SIDE:
        return (f"frame {width}x{height} is smaller than {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} "
                "(MIN_FRAME_SIDE): no mouth to crop")
    rate = stream.average_rate or stream.guessed_rate
    if rate and float(rate) < MIN_FPS:
        return (f"frame rate {float(rate):g} fps is below {MIN_FPS:g} fps (MIN_FPS): too few "
                "frames for lip motion")
    return None


def probe_media(path: str, need_video: bool = False, need_audio: bool = False) -> float:
    """Duration in seconds from the header (no decoding) of a file with the streams needed.

    Raises MediaError naming the file and the reason when it cannot be read
    (:func:`avse.video.media.file_problem`) or opened, lacks a needed stream, has unusable
    video (frame size, frame rate: see the module docstring) or no duration.
    """
    problem = file_problem(path)
    if problem:
        raise MediaError(f"{path}: {problem}")
    if path.endswith((".wav", ".flac")):
        import soundfile as sf

        try:
            return float(sf.info(path).duration)
        except Exception as err:  # soundfile raises its own LibsndfileError
            raise MediaError(f"{path}: cannot open ({err})") from err
    import av

    try:
        container = av.open(path)
    except Exception as err:
        raise MediaError(f"{path}: cannot open ({err})") from err
    with container:
        video, audio = container.streams.video, container.streams.audio
        if need_video and not video:
            raise MediaError(f"{path}: no video stream")
        if need_audio and not audio:
            raise MediaError(f"{path}: no audio stream")
        problem = _video_problem(video[0]) if need_video else None
        if problem:
            raise MediaError(f"{path}: {problem}")
        if container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            streams = list(video or audio)
            stream = streams[0] if streams else None
            duration = (float(stream.duration * stream.time_base)
                        if stream is not None and stream.duration else float("nan"))
    if not math.isfinite(duration) or duration <= 0:
        raise MediaError(f"{path}: no duration in the header")
    return duration


def probe_duration(path: str) -> float:
    """Duration in seconds from the container header (no decoding)."""
    return probe_media(path)


def probe_entry(entry: dict):
    """Manifest worker: ``(entry with its duration, None)`` or ``(entry, reason)``.

    The mp4 must hold the streams the entry takes from it: video unless ``emb`` gives lip
    embeddings, audio unless ``audio`` names an audio file (whose duration is then used)."""
    try:
        need_video, need_audio = not entry.get("emb"), not entry.get("audio")
        if need_video or need_audio:
            duration = probe_media(entry["media"], need_video, need_audio)
        if entry.get("audio"):
            duration = probe_media(entry["audio"], need_audio=True)
        entry["duration"] = round(duration, 4)
        return entry, None
    except Exception as err:  # any unreadable file is a rejection, never a crash
        return entry, str(err)


SOURCE_FIELDS = ("media", "audio", "emb", "split")


def _source(entry: dict) -> dict:
    return {k: entry.get(k) for k in SOURCE_FIELDS}


def run_manifest(out_dir: str, params: dict, scan, nj: int = 1, task=probe_entry,
                 retry_rejected: bool = False) -> list[dict]:
    """The manifest stage: ``scan() -> (entries, rejected rows)``, then ``task`` on every entry.

    Skips everything when ``OUT/.done/manifest`` was written with the same ``params``
    (unless ``retry_rejected``: then the entries ``task`` rejected are tried again and the
    kept ones keep their probe). ``task(entry) -> (entry, error or None)`` (default: probe
    the media) runs with ``nj`` processes; its failures join the rejected rows. An entry
    finished by a killed run with the same ``params`` is not probed again (its rejection
    neither, unless ``retry_rejected``). Writes ``OUT/manifest.jsonl``, the manifest rows of
    rejected.tsv, the marker and the summary line; returns the kept entries. Raises
    RecipeError (after writing rejected.tsv) when no entry is kept.
    """
    manifest_path, marker, done, finished = manifest_status(out_dir, params, retry_rejected)
    if finished is not None:
        return finished
    summary = Summary("manifest")
    remove_temp_files(out_dir, recursive=False)
    entries, rejected = scan()
    journal = Journal(out_dir, "manifest", params)
    known = journal.load()
    if done:  # --retry_rejected over a finished manifest: its kept entries stay probed
        known = {e["key"]: {"key": e["key"], "source": _source(e), "entry": e}
                 for e in read_jsonl(manifest_path)}
    if retry_rejected:
        known = {k: r for k, r in known.items() if "entry" in r}
    kept, bad, resumed, todo = journal.probe(entries, known, task, nj, _source, "media")
    rejected += bad
    Rejections(out_dir).replace("manifest", rejected)
    if not kept:
        journal.remove()
        raise RecipeError(f"all {len(rejected)} clips were rejected; see "
                          f"{os.path.join(out_dir, 'rejected.tsv')}")
    kept.sort(key=lambda e: (e["split"], e["key"]))
    write_jsonl(kept, manifest_path)
    splits = {s: sum(e["split"] == s for e in kept) for s in sorted({e["split"] for e in kept})}
    mark_done(marker, params, count=len(kept))
    journal.remove()
    note = "splits " + ", ".join(f"{k}={v}" for k, v in splits.items())
    if resumed:
        note += f"; resumed {len(resumed)} probed before"
    summary.line(len(kept), len(rejected), sum(e["duration"] for e in kept),
                 processed=len(todo), note=note)
    return kept
