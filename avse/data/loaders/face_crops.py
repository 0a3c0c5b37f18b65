"""Face shards at load time: the model's mouth crop cut from face-centred frames.

A recipe's ``--crop face`` stores the tracked face-centred frames (``face.npy``, uint8
``[T, 224, 224]``) with their landmarks (``facelm.npy``, float32 ``[T, 5, 2]`` in face-frame
pixels); every loader cuts the model's crop preset (``mouth_crop``, one of
:data:`avse.video.crops.CROP_PRESETS`) from them as the own-video pipeline does
(:func:`avse.video.crops.crop_faces`), so one staging serves models trained on any crop.
Shards of mouth crops or embeddings ignore ``mouth_crop``.

Example
-------
>>> faces = np.zeros((3, 224, 224), np.uint8)
>>> cut_mouths(faces, np.zeros((4, 5, 2), np.float32), "voxceleb2").shape
(3, 88, 88)
>>> face_crop("lips.npy", None, "split") is None, face_crop("face.npy", "lipread", "split")
(True, 'lipread')
"""
from __future__ import annotations

import numpy as np

from avse.data.shards import FACE_FIELD, FACE_LANDMARKS_FIELD, ShardError, decode_npy


def face_crop(visual_field: str, mouth_crop: str | None, where: str) -> str | None:
    """The preset to cut from ``visual_field``: ``mouth_crop`` for face shards (a ShardError
    naming ``where`` when it is not a crop preset), None for other visual fields."""
    if visual_field != FACE_FIELD:
        return None
    from avse.video.crops import CROP_PRESETS

    if mouth_crop not in CROP_PRESETS:
        raise ShardError(f"{where} holds face-centred frames (--crop face): pass mouth_crop, "
                         f"the model's crop preset, one of {list(CROP_PRESETS)}; got "
                         f"{mouth_crop!r}")
    return mouth_crop


def cut_mouths(faces: np.ndarray, landmarks: np.ndarray, preset: str) -> np.ndarray:
    """``crop_faces(faces, preset, landmarks)`` of an utterance's first ``len(faces)`` frames
    (the frames may have been cut to the audio, the landmarks not): uint8 ``[T, S, S]``."""
    from avse.video.crops import crop_faces

    return crop_faces(faces, preset, np.asarray(landmarks)[:len(faces)])


def mouth_fields(preset: str | None, mouths: str = "lips.npy") -> tuple:
    """The fields a sample's mouth crops come from: ``(mouths,)``, or with a ``preset`` (face
    shards) the face frames and their landmarks."""
    return (mouths,) if preset is None else (FACE_FIELD, FACE_LANDMARKS_FIELD)


def read_mouths(raw: dict, preset: str | None, mouths: str = "lips.npy") -> np.ndarray:
    """A raw sample's (bytes per field) mouth crops: its ``mouths`` as stored, or with a
    ``preset`` cut from its face frames (:func:`cut_mouths`). A missing field: KeyError."""
    if preset is None:
        return decode_npy(raw[mouths])
    return cut_mouths(decode_npy(raw[FACE_FIELD]), decode_npy(raw[FACE_LANDMARKS_FIELD]), preset)


def mouths_field(splits, mouth_crop: str | None, mouths: str = "lips.npy") -> str:
    """The visual field of lip-reading splits (:class:`avse.data.remote.ShardSplit`): ``mouths``
    (mouth crops), or :data:`FACE_FIELD` (face frames; needs ``mouth_crop``, see
    :func:`face_crop`); a ShardError when a split holds neither, or the splits differ."""
    found = {}
    for split in splits:
        fields = split.meta.get("fields", [mouths])
        found[split.name] = next((f for f in (mouths, FACE_FIELD) if f in fields), None)
        if found[split.name] is None:
            raise ShardError(f"{split.name}: the shards hold no {mouths} (fields "
                             f"{split.meta.get('fields')}); lip reading needs mouth ROIs")
        face_crop(found[split.name], mouth_crop, split.name)
    if len(set(found.values())) > 1:
        raise ShardError(f"splits of mouth crops and of face frames ({found}): stage them all "
                         "with one --crop")
    return next(iter(found.values()))
