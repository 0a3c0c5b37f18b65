"""Lip embeddings from a visual front-end: one clip (``avse-embed``), batches of clips (the
recipes' embedding stage, :mod:`avse.recipes.embed`), a long face track (``avse-extract`` on
an embedding model), and a front-end recorded in a model folder.

A front-end (:mod:`avse.models.frontends`) maps lip ROIs ``[B, Tv, S, S]`` (uint8, or float
on the 0..255 scale) to ``[B, Tv, frame_dim]``; the *crop preset* says which region of a
face-centred frame it reads (:data:`avse.video.crops.CROP_PRESETS`). For a clip file:

==========  ==================================================================================
preset      region read from a face-centred clip (:func:`video_region`)
==========  ==================================================================================
lipread     the published lip-reading preprocessing (:func:`avse.video.lipread.decode_lipread`:
            gray through RGB, 224x224, central 112x112), float32 0..255
voxceleb2,  the fixed mouth box of the recipes (:data:`avse.video.media.MOUTH_CROPS`), uint8
lrs2, lrs3
landmarks   the face tracked and its mouth aligned (:func:`avse.video.faces.clip_mouths`)
==========  ==================================================================================

A clip goes through the front-end in one pass (its 3-D stem looks at neighbouring frames);
a long track in windows with :data:`CONTEXT_FRAMES` of context on each side, which gives the
same numbers (:func:`embed_sequence`).

``avse-embed --frontend FILE --video CLIP.mp4 --out EMB.npy [--preset NAME] [--device cpu]``
writes float32 ``[T, frame_dim]`` at 25 fps; FILE is a front-end file of ours (its preset
is the default) or a published ``visual_frontend.pt`` (default preset ``lipread``).
``avse-embed --frontend FILE --model DIR`` records the front-end in a model folder instead.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time

import numpy as np
import torch

PUBLISHED_PRESET = "lipread"
CONTEXT_FRAMES = 8  # frames of context each side of a window (the 3-D stems need 2)
WINDOW_FRAMES = 500  # frames per front-end pass over a long track (20 s)
FRONTEND_FILE = "frontend.pt"  # the front-end's name inside a model folder


class EmbedError(ValueError):
    """A front-end, preset or clip cannot give embeddings (the message names the file)."""


def file_sha1(path: str) -> str:
    """SHA-1 of a file's bytes (hex)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(path: str, device: str = "cpu"):
    """The front-end in ``path`` (ours or published), on ``device``, in eval mode; EmbedError
    naming the file when it cannot be read."""
    from avse.models.frontends import load_frontend

    try:
        return load_frontend(path).to(device).eval()
    except (OSError, ValueError, RuntimeError) as err:
        raise EmbedError(f"--frontend {path}: {err}") from None


def resolve_preset(frontend, preset: str | None = None, where: str = "") -> str:
    """The crop preset to feed ``frontend``: ``preset``, else the one its file records.

    Raises EmbedError (naming ``where``) when there is none, it is unknown, or it gives ROIs
    of another size than a front-end that needs an exact size (``dlr``: 112) expects.

    Example
    -------
    >>> from avse.models.frontends import build_frontend
    >>> resolve_preset(build_frontend("dlr"))
    'lipread'
    >>> resolve_preset(build_frontend("cnn", hidden=8), "lrs2")
    'lrs2'
    """
    from avse.video.crops import CROP_PRESETS, PRESET_SIZES

    where = f"{where}: " if where else ""
    preset = preset or getattr(frontend, "preset", None)
    if not preset:
        raise EmbedError(f"{where}the front-end records no crop preset: pass --preset "
                         f"(one of {', '.join(CROP_PRESETS)})")
    if preset not in CROP_PRESETS:
        raise EmbedError(f"{where}unknown crop preset {preset!r}; known: {', '.join(CROP_PRESETS)}")
    side = PRESET_SIZES[preset]
    if getattr(frontend, "exact_size", False) and side != frontend.roi_size:
        raise EmbedError(f"{where}the {getattr(frontend, 'registry_name', '')!r} front-end reads "
                         f"{frontend.roi_size}x{frontend.roi_size} ROIs but the preset "
                         f"{preset!r} gives {side}x{side}; choose a {frontend.roi_size}-pixel "
                         "preset (lipread)")
    return preset


def video_region(video: str, preset: str, n_frames: int | None = None) -> np.ndarray:
    """The ``preset`` region of every 25 fps frame of a face-centred clip: ``[T, S, S]``
    (float32 0..255 for ``lipread``, uint8 otherwise). MediaError when it cannot be decoded."""
    from avse.video.media import MOUTH_CROPS, decode_media

    if preset == "lipread":
        from avse.video.lipread import decode_lipread

        return decode_lipread(video)
    if preset in MOUTH_CROPS:
        return decode_media(video, want_audio=False, crop=MOUTH_CROPS[preset])[1]
    from avse.video.faces import clip_mouths

    return clip_mouths(video, preset, n_frames=n_frames)


@torch.no_grad()
def run_frontend(frontend, rois, device: str | None = None) -> np.ndarray:
    """``rois [B, T, S, S]`` (array or tensor) through ``frontend`` -> float32 ``[B, T, D]``."""
    device = device or next(frontend.parameters()).device
    x = torch.as_tensor(np.ascontiguousarray(rois) if isinstance(rois, np.ndarray) else rois)
    return frontend(x.to(device)).float().cpu().numpy()


def embed_clips(frontend, clips, device: str | None = None, batch_frames: int = 2000) -> list:
    """Each clip ``[T_i, S, S]`` in one pass: a list of float32 ``[T_i, D]``.

    Clips of the same shape and dtype go through together, at most ``batch_frames`` frames
    a batch (a longer clip goes alone); padding would change the frames near a clip's end.

    Example
    -------
    >>> from avse.models.frontends import build_frontend
    >>> fe = build_frontend("cnn", hidden=8, channels=(4,)).eval()
    >>> clips = [np.zeros((5, 88, 88), np.uint8), np.ones((3, 88, 88), np.uint8)]
    >>> [e.shape for e in embed_clips(fe, clips)]
    [(5, 8), (3, 8)]
    """
    out = [None] * len(clips)
    groups: dict = {}
    for i, clip in enumerate(clips):
        groups.setdefault((clip.shape, np.asarray(clip).dtype.str), []).append(i)
    for (shape, _), idx in groups.items():
        per = max(1, batch_frames // max(shape[0], 1))
        for k in range(0, len(idx), per):
            part = idx[k:k + per]
            emb = run_frontend(frontend, np.stack([clips[i] for i in part]), device)
            for i, e in zip(part, emb):
                out[i] = e
    return out


def embed_sequence(frontend, read, n_frames: int, device: str | None = None,
                   window: int = WINDOW_FRAMES, context: int = CONTEXT_FRAMES):
    """Yield ``(start, emb [k, D] float32)`` blocks covering frames ``0..n_frames`` of a long
    sequence, ``read(a, b) -> rois [b - a, S, S]``.

    Each window of ``window`` frames is run with ``context`` frames of real neighbours on
    both sides (discarded), so the result equals one pass over the whole sequence for any
    front-end that looks at most ``context`` frames away, with memory bounded by a window.

    Example
    -------
    >>> from avse.models.frontends import build_frontend
    >>> fe = build_frontend("cnn", hidden=4, channels=(4,)).eval()
    >>> rois = np.random.default_rng(0).integers(0, 255, (23, 88, 88), dtype=np.uint8)
    >>> blocks = list(embed_sequence(fe, lambda a, b: rois[a:b], 23, window=10, context=2))
    >>> [(s, len(e)) for s, e in blocks]
    [(0, 10), (10, 10), (20, 3)]
    >>> whole = embed_clips(fe, [rois])[0]
    >>> bool(np.allclose(np.concatenate([e for _, e in blocks]), whole, atol=1e-5))
    True
    """
    if window < 1 or context < 0:
        raise ValueError(f"window must be >= 1 and context >= 0, got {window}, {context}")
    for start in range(0, n_frames, window):
        stop = min(start + window, n_frames)
        a, b = max(start - context, 0), min(stop + context, n_frames)
        emb = run_frontend(frontend, np.asarray(read(a, b))[None], device)[0]
        yield start, emb[start - a: stop - a]


def embed_video(frontend, video: str, preset: str | None = None, device: str | None = None,
                window: int = WINDOW_FRAMES) -> np.ndarray:
    """Embeddings float32 ``[T, D]`` of a face-centred clip (:func:`video_region` of the
    preset, then :func:`embed_sequence`). MediaError / EmbedError name the file."""
    preset = resolve_preset(frontend, preset, video)
    rois = video_region(video, preset)
    if len(rois) == 0:
        raise EmbedError(f"{video}: no video frame decoded")
    return np.concatenate([e for _, e in embed_sequence(
        frontend, lambda a, b: rois[a:b], len(rois), device, window)])


def embed_track(frontend, faces, landmarks, frames, preset: str, path: str,
                device: str | None = None, window: int = WINDOW_FRAMES):
    """One face track's embeddings, written row by row to ``path``: a
    :class:`avse.video.faces.FrameFile` float32 ``[n, D]`` (memory bounded by a window).

    ``faces [n, 224, 224]`` uint8 and ``landmarks [n, 5, 2]`` are the track's face-centred
    frames (sliced by rows); ``frames [n]`` its grid frames. Each contiguous run of grid
    frames (a track merged across a cut has several) is embedded as one sequence.
    """
    from avse.video.crops import crop_faces
    from avse.video.faces import FrameFile

    frames = np.asarray(frames)
    runs = np.split(np.arange(len(frames)), np.flatnonzero(np.diff(frames) != 1) + 1)
    store = None
    try:
        for rows in runs:
            r0 = int(rows[0])

            def read(a, b, r0=r0):
                lm = None if landmarks is None else np.asarray(landmarks[r0 + a: r0 + b])
                return crop_faces(np.asarray(faces[r0 + a: r0 + b]), preset, lm)

            for start, emb in embed_sequence(frontend, read, len(rows), device, window):
                if store is None:
                    store = FrameFile.create(path, (len(frames), emb.shape[1]), np.float32)
                for i, row in enumerate(emb):
                    store.append(r0 + start + i, row)
    finally:
        if store is not None:
            store.close()
    return FrameFile(path)


# --------------------------------------------------------------------------- model folders
def install_frontend(model_dir: str, frontend_file: str, preset: str | None = None,
                     name: str = FRONTEND_FILE) -> dict:
    """Record a front-end in an embedding model's folder, so that ``avse-extract`` computes
    the model's embeddings from video itself.

    The front-end (ours, copied; or a published one, converted to ours) becomes
    ``model_dir/<name>`` with its preset, and ``model.yaml``'s ``inference`` section gets
    ``frontend: <name>`` and ``crop: <preset>``. EmbedError when the model does not read
    embeddings or its ``in_dim`` is not the front-end's ``frame_dim``. Returns the entries.
    """
    from avse.models.frontends import frontend_info, save_frontend
    from avse.models.io import read_config, update_inference

    spec = read_config(model_dir)["visual_encoder"]
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    if spec.get("type") != "embedding":
        raise EmbedError(f"{model_dir}: its visual encoder {spec.get('type')!r} reads mouth "
                         "crops itself; a front-end is recorded for 'embedding' models only")
    fe = load(frontend_file)
    preset = resolve_preset(fe, preset, frontend_file)
    in_dim = int(spec.get("in_dim", 512))
    if fe.frame_dim != in_dim:
        raise EmbedError(f"{frontend_file}: the front-end gives {fe.frame_dim}-d features but "
                         f"the model in {model_dir} reads {in_dim}-d embeddings (in_dim)")
    dest = os.path.join(model_dir, name)
    info = frontend_info(frontend_file)
    if info["format"] == "avse" and info["preset"] == preset:
        if os.path.abspath(frontend_file) != os.path.abspath(dest):
            shutil.copyfile(frontend_file, dest + ".tmp")
            os.replace(dest + ".tmp", dest)
    else:
        extra = {**info.get("extra", {}), "source": os.path.basename(frontend_file),
                 "source_format": info["format"], "source_sha1": file_sha1(frontend_file)}
        save_frontend(fe, dest, preset=preset, extra=extra)
    entries = {"frontend": name, "crop": preset}
    update_inference(model_dir, **entries)
    return entries


def record_shards_frontend(model_dir: str, train_shards: str, meta_url: str | None = None):
    """Training on shards of the embedding stage (:mod:`avse.recipes.embed`): record the
    front-end their meta.json names in the experiment's ``model.yaml`` (copied into
    ``model_dir``), so that ``avse-extract`` runs the trained model on video. Returns the
    entries, or None when the shards name no front-end or it cannot be recorded (a warning
    says why)."""
    import logging

    from avse.data.remote import resolve_split

    log = logging.getLogger(__name__)
    try:
        meta = resolve_split(train_shards, meta_url).meta
    except (ValueError, OSError, KeyError):  # ShardError is a ValueError
        return None
    record = meta.get("frontend")
    if not isinstance(record, dict):
        return None
    path = record.get("file", "")
    if not os.path.isfile(path) or file_sha1(path) != record.get("sha1"):
        log.warning("the training shards were embedded with the front-end %s (sha1 %s), which is "
                    "not there (or changed): record it with avse-embed --frontend FILE --model %s",
                    path, record.get("sha1"), model_dir)
        return None
    try:
        return install_frontend(model_dir, path, record.get("preset"))
    except (EmbedError, OSError) as err:
        log.warning("the training shards' front-end was not recorded in %s: %s", model_dir, err)
        return None


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avse-embed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frontend", required=True,
                   help="front-end file: ours (avse.models.frontends) or a published "
                        "visual_frontend.pt state dict")
    p.add_argument("--video", help="a face-centred clip (any fps; read on the 25 fps grid)")
    p.add_argument("--out", help="the .npy to write: float32 [T, frame_dim] @25 fps")
    p.add_argument("--preset", help="crop preset (default: the file's; 'lipread' for a "
                                    "published state dict)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="instead of a clip: record the front-end in this embedding "
                                   "model folder (model.yaml inference: frontend, crop)")
    return p


def main(argv=None) -> int:
    """``avse-embed``: 0 on success; 2 with ``avse-embed: error: ...`` naming the file."""
    from avse.video.media import MediaError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is None and not (args.video and args.out):
        parser.error("give --video CLIP and --out EMB.npy (or --model DIR)")
    try:
        if args.model:
            entries = install_frontend(args.model, args.frontend, args.preset)
            print(f"avse-embed: {args.model}/{entries['frontend']} (preset {entries['crop']})")
            return 0
        t0 = time.perf_counter()
        fe = load(args.frontend, args.device)
        preset = resolve_preset(fe, args.preset, args.frontend)
        if not os.path.isfile(args.video):
            raise EmbedError(f"--video {args.video}: no such file")
        emb = embed_video(fe, args.video, preset, args.device).astype(np.float32)
        if not np.all(np.isfinite(emb)):
            raise EmbedError(f"{args.video}: the front-end gave NaN or Inf values")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp.npy"
        np.save(tmp, emb, allow_pickle=False)
        os.replace(tmp, args.out)
    except (EmbedError, MediaError, OSError, ValueError) as err:
        print(f"avse-embed: error: {err}", file=sys.stderr)
        return 2
    print(f"avse-embed: wrote {args.out} float32 {list(emb.shape)} (preset {preset}, "
          f"{len(emb) / 25:.2f} s in {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
