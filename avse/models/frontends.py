"""Visual front-ends: lip ROIs ``[B, Tv, H, W]`` (uint8 0..255, or float on that scale)
@25 fps -> per-frame features ``[B, Tv, frame_dim]``, and their files.

The networks (:class:`Frontend` and the built-ins ``cnn``, ``resnet18``, ``dlr``, registered
under the registry kind ``"frontend"``) are defined in :mod:`avse.models.frontend_nets`
and re-exported here. A front-end file is one torch file written by :func:`save_frontend`::

    {"format": "avse-frontend", "version": 1, "type": <registry name>,
     "config": <constructor kwargs>, "frame_dim": int, "preset": str | None,
     "extra": dict, "state_dict": {...}}

:func:`load_frontend` reads such a file, or a published deep-lip-reading
``visual_frontend.pt`` state dict (keys ``frontend3D.*``, ``resnet.layer{1..4}.*``, any
wrapper prefix such as ``module.``), converted on the fly by
:mod:`avse.models.reference.dlr` into a ``dlr`` front-end with preset ``"lipread"``.
:func:`load_frontend_weights` loads a file into an existing front-end (what the visual
encoders' ``pretrained:`` option does), checking that type and config match.

Example
-------
>>> import os, tempfile
>>> fe = build_frontend("cnn", hidden=8, channels=(4, 8))
>>> path = os.path.join(tempfile.mkdtemp(), "cnn.pt")
>>> _ = save_frontend(fe, path, preset="lrs2", extra={"epochs": 3})
>>> info = frontend_info(path)
>>> info["type"], info["frame_dim"], info["preset"], info["format"], info["config"]["hidden"]
('cnn', 8, 'lrs2', 'avse', 8)
>>> again = load_frontend(path)
>>> x = torch.randint(0, 256, (1, 4, 88, 88), dtype=torch.uint8)
>>> torch.equal(again(x), fe.eval()(x)), again.training, again.preset
(True, False, 'lrs2')
"""
from __future__ import annotations

import os

import torch
from avse.models import registry
from avse.models.frontend_nets import (CNNFrontend, DLRFrontend, Frontend, ResNet18Frontend,
                                       check_rois)
from avse.models.io import key_list, state_dict_problems
from avse.models.reference import dlr

__all__ = ["FORMAT", "VERSION", "Frontend", "CNNFrontend", "ResNet18Frontend", "DLRFrontend",
           "check_rois", "build_frontend", "save_frontend", "load_frontend",
           "load_frontend_weights", "frontend_info", "read_frontend_file"]

FORMAT = "avse-frontend"
VERSION = 1


def build_frontend(type: str, **config) -> Frontend:
    """A new front-end of registry name ``type`` (``"cnn"``, ``"resnet18"``, ``"dlr"``)."""
    return registry.build("frontend", type, **config)


def _plain(value):
    """Config values as plain data (tuples -> lists), so that saved and built configs compare."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _as_frontend(obj) -> Frontend:
    if isinstance(obj, Frontend):
        return obj
    inner = getattr(obj, "frontend", None)
    if isinstance(inner, Frontend):  # a visual encoder holding one
        return inner
    raise TypeError(f"save_frontend expects a front-end (avse.models.frontends.Frontend) or a "
                    f"visual encoder holding one as .frontend, got {type(obj).__name__}")


def save_frontend(frontend, path: str, preset: str | None = None,
                  extra: dict | None = None) -> str:
    """Write ``frontend`` (or the ``.frontend`` of a visual encoder) to ``path`` atomically.

    Arguments
    ---------
    frontend : Frontend or visual encoder
        what to save (its registry name, config, ``frame_dim`` and weights).
    path : str
        the file to write (its folder is created).
    preset : str or None
        the crop preset it was trained on (default: ``frontend.preset``).
    extra : dict or None
        anything else to record (plain data: training epochs, corpus, ...).

    Returns
    -------
    str : ``path``.
    """
    fe = _as_frontend(frontend)
    name = getattr(type(fe), "registry_name", None)
    if name not in registry.known("frontend"):
        raise ValueError(f"cannot save {type(fe).__name__}: it is not a registered front-end "
                         f"(known: {', '.join(registry.known('frontend'))})")
    payload = {"format": FORMAT, "version": VERSION, "type": name, "config": _plain(fe.config),
               "frame_dim": int(fe.frame_dim), "preset": fe.preset if preset is None else preset,
               "extra": dict(extra or {}),
               "state_dict": {k: v.detach().cpu().clone() for k, v in fe.state_dict().items()}}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_frontend_file(path: str, allow_plain: bool = False) -> dict:
    """The contents of a front-end file, checked: ``{"format": "avse" | "published" |
    "state_dict", "type", "config", "frame_dim", "preset", "extra", "state_dict"}``.

    ``allow_plain``: also accept a bare state dict of a front-end's own keys (format
    ``"state_dict"``, type None: what ``pretrained:`` of the resnet18 encoder read before
    front-end files existed). ValueError names ``path`` and what is wrong.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"front-end file {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with code in it, or not a torch file at all
        raise ValueError(f"{path}: not a readable torch file of tensors and plain data "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    what = ("an avse front-end file (written by avse.models.frontends.save_frontend) or a "
            "published deep-lip-reading visual_frontend.pt state dict (keys frontend3D.*, "
            "resnet.layer1..4.*)")
    if isinstance(obj, dict) and "format" in obj:
        return _check_ours(obj, path, what)
    if dlr.is_reference_state_dict(obj):
        try:
            state = dlr.convert_reference_state_dict(obj)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        return {"format": "published", **dlr.reference_config(), "extra": {},
                "state_dict": state}
    if allow_plain and isinstance(obj, dict):
        try:
            state, _ = dlr.unwrap(obj)
        except ValueError:
            state = obj
        if state and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
            return {"format": "state_dict", "type": None, "config": None, "frame_dim": None,
                    "preset": None, "extra": {}, "state_dict": state}
    raise ValueError(f"{path}: not a front-end file; expected {what}, got "
                     f"{type(obj).__name__}" + (f" with keys {key_list(list(map(str, obj)))}"
                                                if isinstance(obj, dict) else ""))


def _check_ours(obj: dict, path: str, what: str) -> dict:
    if obj.get("format") != FORMAT:
        raise ValueError(f"{path}: format {obj.get('format')!r} is not {FORMAT!r}; expected {what}")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(f"{path}: front-end file version {version!r}; this avse reads version "
                         f"<= {VERSION} (upgrade avse to read newer files)")
    missing = [k for k in ("type", "config", "frame_dim", "state_dict") if k not in obj]
    if missing:
        raise ValueError(f"{path}: front-end file lacks the fields {', '.join(missing)}")
    if obj["type"] not in registry.known("frontend"):
        raise ValueError(f"{path}: unknown front-end type {obj['type']!r}; known: "
                         f"{', '.join(registry.known('frontend'))}")
    if not isinstance(obj["config"], dict) or not isinstance(obj["state_dict"], dict):
        raise ValueError(f"{path}: 'config' and 'state_dict' must be dicts")
    return {"format": "avse", "type": obj["type"], "config": obj["config"],
            "frame_dim": obj["frame_dim"], "preset": obj.get("preset"),
            "extra": obj.get("extra") or {}, "state_dict": obj["state_dict"]}


def frontend_info(path: str) -> dict:
    """``{"format": "avse" | "published", "type", "config", "frame_dim", "preset", "extra"}``
    of a front-end file, without building the module."""
    info = read_frontend_file(path)
    info.pop("state_dict")
    return info


def _load_state(fe: Frontend, state: dict, path: str, hint: str = "") -> None:
    problems = state_dict_problems(fe.state_dict(), state)
    if problems:
        raise ValueError(f"cannot load {path} into the {fe.registry_name!r} front-end: "
                         + "; ".join(problems) + hint)
    fe.load_state_dict(state)


def load_frontend(path: str) -> Frontend:
    """The front-end saved in ``path`` (ours, or a published deep-lip-reading state dict),
    on CPU, in eval mode; ``preset`` and ``extra`` (a dict) are set from the file."""
    info = read_frontend_file(path)
    try:
        fe = build_frontend(info["type"], **info["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: cannot build the {info['type']!r} front-end from its config "
                         f"{info['config']}: {err}") from None
    _load_state(fe, info["state_dict"], path)
    if info["preset"] is not None:
        fe.preset = info["preset"]
    fe.extra = dict(info["extra"])
    return fe.eval()


def load_frontend_weights(frontend: Frontend, path: str) -> Frontend:
    """Load the weights of the front-end file ``path`` into ``frontend`` (strict).

    The file's type and config must be those of ``frontend`` (ValueError naming the file and
    the differing fields otherwise); a bare state dict of its own keys is accepted too. The
    file's preset, if any, becomes ``frontend.preset``.
    """
    info = read_frontend_file(path, allow_plain=True)
    name = frontend.registry_name
    if info["format"] == "state_dict":
        _load_state(frontend, info["state_dict"], path,
                    hint=f" (a bare state dict must hold the keys of the {name!r} front-end: "
                         f"{key_list(list(frontend.state_dict()), limit=4)})")
        return frontend
    if info["type"] != name:
        raise ValueError(f"{path} holds a {info['type']!r} front-end ({info['format']} format), "
                         f"but this visual encoder's front-end is {name!r}: give a {name!r} "
                         f"front-end file, or use the visual encoder whose front-end is "
                         f"{info['type']!r}")
    ours, theirs = _plain(frontend.config), _plain(info["config"])
    diff = [f"{k}: file {theirs.get(k, '(unset)')!r}, here {ours.get(k, '(unset)')!r}"
            for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if diff:
        raise ValueError(f"{path}: the {name!r} front-end config differs from this visual "
                         f"encoder's ({'; '.join(diff)}); set the visual encoder's options to "
                         f"the file's values")
    _load_state(frontend, info["state_dict"], path)
    if info["preset"] is not None:
        frontend.preset = info["preset"]
    return frontend

