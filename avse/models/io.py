"""Save and load an :class:`AVSEModel` as a folder: ``model.yaml`` (the slot specs, plus an
``inference`` section) and ``model.ckpt`` (the state dict).

The ``inference`` section records how the model was fed in training, so that inference
feeds it the same way (folders written before it existed get :data:`INFERENCE_DEFAULTS`):

==============  ===========================================================================
key             meaning
==============  ===========================================================================
crop            mouth-crop preset of the training shards (``avse.video.crops.CROP_PRESETS``)
visual_range    ``full``: gray 0..255 as OpenCV's BGR2GRAY (limited-range luma is expanded)
sample_rate     16000
mixture_norm    ``peak``: the mixture is divided by its peak |x| (once per file), the
                estimate multiplied back
frontend        models that read lip embeddings: the file name (inside the model folder)
                of the visual front-end that computes them from video (``crop`` is then
                the front-end's preset); null: embeddings must be given (``.npy``)
==============  ===========================================================================
"""
from __future__ import annotations

import os

import torch
import yaml

MODEL_CONFIG = "model.yaml"
MODEL_WEIGHTS = "model.ckpt"


INFERENCE_DEFAULTS = {"crop": "voxceleb2", "visual_range": "full", "sample_rate": 16000,
                      "mixture_norm": "peak", "frontend": None}
INFERENCE_KEY = "inference"


class ModelLoadError(RuntimeError):
    """A model folder or checkpoint is missing, incomplete, or does not match the config."""


def key_list(keys, prefix: str = "", limit: int = 8) -> str:
    """``"a, b, ... (N in all)"``: at most ``limit`` of ``keys``, each shown with ``prefix``.

    >>> key_list(["x", "y", "z"], prefix="model.", limit=2)
    'model.x, model.y, ... (3 in all)'
    """
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(prefix + k for k in keys[:limit]) + more


def state_dict_problems(expected: dict, state: dict, prefix: str = "", limit: int = 8) -> list:
    """``["missing keys: ...", "unexpected keys: ...", "wrong shapes: ..."]`` (the non-empty
    ones) of ``state`` against ``expected`` (key -> tensor or shape); keys are shown with
    ``prefix``, at most ``limit`` per kind.

    Example
    -------
    >>> state_dict_problems({"a": (2,), "b": (3,)}, {"a": torch.zeros(4), "c": torch.zeros(1)})
    ['missing keys: b', 'unexpected keys: c', 'wrong shapes: a (4,) (expected (2,))']
    """
    def shape(v):
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {shape(state[k])} (expected {shape(expected[k])})"
                   for k in set(expected) & set(state) if shape(state[k]) != shape(expected[k]))
    return [f"{label}: {key_list(keys, prefix, limit)}" for label, keys in
            (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
            if keys]


def inference_config(given: dict | None = None) -> dict:
    """:data:`INFERENCE_DEFAULTS` updated with ``given``; unknown keys are an error.

    >>> inference_config({"crop": "landmarks"})["crop"], inference_config()["mixture_norm"]
    ('landmarks', 'peak')
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(INFERENCE_DEFAULTS))
    if unknown:
        raise ModelLoadError(f"unknown key(s) {unknown} in the {INFERENCE_KEY!r} section of "
                             f"{MODEL_CONFIG}; known: {sorted(INFERENCE_DEFAULTS)}")
    frontend = given.get("frontend")
    if frontend is not None and (not isinstance(frontend, str) or not frontend
                                 or os.path.isabs(frontend) or ".." in frontend.split("/")):
        raise ModelLoadError(f"'frontend' in the {INFERENCE_KEY!r} section of {MODEL_CONFIG} must "
                             f"be a file name inside the model folder, got {frontend!r}")
    return {**INFERENCE_DEFAULTS, **given}


def _written(section: dict) -> dict:
    """The section as written to model.yaml: ``frontend`` only when there is one."""
    return {k: v for k, v in section.items() if k != "frontend" or v is not None}


def save_config(model, folder: str, inference: dict | None = None) -> str:
    """Write ``folder/model.yaml`` from ``model.config`` (the specs it was built from) and the
    ``inference`` section (:func:`inference_config` of ``inference``)."""
    if model.config is None:
        raise ModelLoadError("this AVSEModel was built from module instances, not specs; build it "
                             "from {type: ..., ...} specs to export it")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, MODEL_CONFIG)
    # a slot's ``pretrained:`` file seeded training; the checkpoint holds the weights now, and
    # the path may not exist where the folder is loaded
    specs = {slot: {k: v for k, v in spec.items() if k != "pretrained"}
             if isinstance(spec, dict) else spec for slot, spec in model.config.items()}
    config = {**specs, INFERENCE_KEY: _written(inference_config(inference))}
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def save_model(model, folder: str, inference: dict | None = None) -> str:
    """Export ``model`` into ``folder`` (``model.yaml`` + ``model.ckpt``); returns the folder."""
    save_config(model, folder, inference)
    torch.save(model.state_dict(), os.path.join(folder, MODEL_WEIGHTS))
    return folder


def read_config(folder_or_file: str) -> dict:
    """The parsed ``model.yaml`` of a model folder (or the file itself)."""
    path = folder_or_file
    if os.path.isdir(path):
        path = os.path.join(path, MODEL_CONFIG)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path} not found: not an AVSE model folder")
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict) or "separator" not in config:
        raise ModelLoadError(f"{path}: expected the keys audio_encoder, visual_encoder, separator, "
                             "fusion, decoder")
    return config


def load_inference_config(folder_or_file: str) -> dict:
    """The ``inference`` section of a model folder's ``model.yaml``, defaults filled in."""
    return inference_config(read_config(folder_or_file).get(INFERENCE_KEY))


def update_inference(folder: str, **entries) -> dict:
    """Set ``entries`` in the ``inference`` section of ``folder/model.yaml`` (rewritten
    atomically, the other sections untouched); returns the new section."""
    config = read_config(folder)
    section = inference_config({**(config.get(INFERENCE_KEY) or {}), **entries})
    config[INFERENCE_KEY] = _written(section)
    path = os.path.join(folder, MODEL_CONFIG)
    with open(path + ".tmp", "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    os.replace(path + ".tmp", path)
    return section


def frontend_path(folder: str, inference: dict | None = None) -> str | None:
    """The front-end file a model folder's ``inference`` section names (None when it names
    none); ModelLoadError when the file is missing.

    >>> frontend_path("exp/model", {"frontend": None}) is None
    True
    """
    name = inference_config(inference)["frontend"] if inference is not None else \
        load_inference_config(folder)["frontend"]
    if name is None:
        return None
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path} not found: {os.path.join(folder, MODEL_CONFIG)} names the "
                             f"front-end {name!r}; put the file there (avse-embed --frontend FILE "
                             f"--model {folder})")
    return path


def build_from_config(folder_or_file: str):
    from avse.models.avse_model import AVSEModel

    config = dict(read_config(folder_or_file))
    config.pop(INFERENCE_KEY, None)
    return AVSEModel(**config)


def load_state(model, ckpt_path: str, strict: bool = True):
    """Load weights with ``weights_only=True``; missing/unexpected keys and shapes are named."""
    if not os.path.isfile(ckpt_path):
        raise ModelLoadError(f"{ckpt_path} not found")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    for name, module in model.named_modules():  # keys of older layouts (the cnn encoder's)
        upgrade = getattr(module, "upgrade_state_dict", None)
        if callable(upgrade):
            state = upgrade(state, name + "." if name else "")
    parts = state_dict_problems(model.state_dict(), state) if strict else []
    if parts:
        raise ModelLoadError(f"{ckpt_path} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=strict)
    return model


def find_best_checkpoint(save_folder: str, key: str = "si_sdr") -> str:
    """The ``CKPT+*`` folder with the highest ``key`` in its meta (else the most recent)."""
    ckpts = []
    for name in os.listdir(save_folder) if os.path.isdir(save_folder) else []:
        meta_path = os.path.join(save_folder, name, "CKPT.yaml")
        if name.startswith("CKPT") and os.path.isfile(meta_path):
            with open(meta_path) as f:
                meta = yaml.safe_load(f) or {}
            ckpts.append((meta.get(key, float("-inf")), meta.get("unixtime", 0), name))
    if not ckpts:
        raise ModelLoadError(f"no CKPT+* checkpoint in {save_folder}")
    return os.path.join(save_folder, max(ckpts)[2])


def load_model(folder: str, key: str = "si_sdr"):
    """An :class:`AVSEModel` with its weights from an exported folder or an experiment folder.

    Exported: ``folder/model.yaml`` + ``folder/model.ckpt``. Experiment: ``model.yaml`` and
    ``save/CKPT+*/model.ckpt`` (the checkpoint with the best validation ``key``).
    """
    model = build_from_config(folder)
    weights = os.path.join(folder, MODEL_WEIGHTS)
    if not os.path.isfile(weights):
        weights = os.path.join(find_best_checkpoint(os.path.join(folder, "save"), key), MODEL_WEIGHTS)
    load_state(model, weights)
    return model.eval()
