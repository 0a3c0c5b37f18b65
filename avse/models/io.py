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
                estimate multiplied back; ``none``: the mixture as it is (causal models,
                trained with ``normalise: null``: a stream has no whole-file peak)
frontend        models that read lip embeddings: the file name (inside the model folder)
                of the visual front-end that computes them from video (``crop`` is then
                the front-end's preset); null: embeddings must be given (``.npy``)
==============  ===========================================================================

``latency_ms`` (top level) is the model's algorithmic latency
(:meth:`~avse.models.avse_model.AVSEModel.latency_ms`: look-ahead plus block, in ms at
16 kHz), or null for a non-causal model (it needs the whole utterance). It is written for
readers; loading ignores it (the model's own configuration is what counts).
"""
from __future__ import annotations

import os

import torch
import yaml

from avse.models.safety import ModelLoadError  # noqa: F401  (re-exported)

MODEL_CONFIG = "model.yaml"
MODEL_WEIGHTS = "model.ckpt"
FILES_KEY = "files"
LATENCY_KEY = "latency_ms"
"""``model.yaml`` entry of an exported folder: ``{model.ckpt: {size: int, sha256: str}}``."""


INFERENCE_DEFAULTS = {"crop": "voxceleb2", "visual_range": "full", "sample_rate": 16000,
                      "mixture_norm": "peak", "frontend": None}
INFERENCE_KEY = "inference"




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
    latency = model.latency_ms() if hasattr(model, "latency_ms") else None
    config = {**specs, LATENCY_KEY: latency, INFERENCE_KEY: _written(inference_config(inference))}
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def save_model(model, folder: str, inference: dict | None = None) -> str:
    """Export ``model`` into ``folder`` (``model.yaml`` + ``model.ckpt``); returns the folder.

    ``model.yaml`` gets a ``files:`` entry (``{model.ckpt: {size, sha256}}``) that loading
    checks, so a truncated or altered checkpoint is refused instead of loaded."""
    from avse.safe_io import file_manifest

    path = save_config(model, folder, inference)
    weights = os.path.join(folder, MODEL_WEIGHTS)
    tmp = os.path.join(folder, f".{MODEL_WEIGHTS}.tmp-{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, weights)
    with open(path) as f:
        config = yaml.safe_load(f)
    config[FILES_KEY] = file_manifest(folder, [MODEL_WEIGHTS])
    _write_yaml(config, path)
    return folder


def _write_yaml(config: dict, path: str) -> None:
    """Write ``path`` atomically (a hidden temporary, then a rename)."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    os.replace(tmp, path)


def read_config(folder_or_file: str) -> dict:
    """The parsed ``model.yaml`` of a model folder (or the file itself)."""
    path = folder_or_file
    if os.path.isdir(path):
        path = os.path.join(path, MODEL_CONFIG)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path} not found: not an AVSE model folder")
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ModelLoadError(f"{path}: cannot be read as yaml ({str(err).splitlines()[0]}); "
                             "restore the model folder") from None
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
    _write_yaml(config, os.path.join(folder, MODEL_CONFIG))
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


def build_from_config(folder_or_file: str, trust_code: bool = False):
    """The :class:`AVSEModel` ``model.yaml`` describes (untrained). ``model.yaml`` is data:
    every ``type`` must be a registered plugin name unless ``trust_code``
    (:func:`avse.models.safety.check_types`; nothing is imported before that check)."""
    from avse.models.avse_model import AVSEModel
    from avse.models.registry import RegistryError
    from avse.models.safety import check_types

    config = dict(read_config(folder_or_file))
    config.pop(INFERENCE_KEY, None)
    config.pop(FILES_KEY, None)
    config.pop(LATENCY_KEY, None)  # derived from the rest; written for readers
    if not trust_code:
        check_types(config, folder_or_file)
    try:
        return AVSEModel(**config)
    except (RegistryError, TypeError, ValueError) as err:
        raise ModelLoadError(f"{folder_or_file}: {MODEL_CONFIG} does not describe a model this "
                             f"avse builds: {err}") from None


def load_state(model, ckpt_path: str, strict: bool = True):
    """Load weights with ``weights_only=True`` (:func:`avse.models.safety.load_weights`: a
    pickle that would run code is refused unrun); missing/unexpected keys and shapes are
    named."""
    from avse.models.safety import load_weights

    state = load_weights(ckpt_path)
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
    """The ``CKPT+*`` folder with the highest ``key`` in its meta (else the most recent) among
    the complete ones (:func:`avse.models.safety.checkpoint_candidates`)."""
    from avse.models.safety import checkpoint_candidates

    return checkpoint_candidates(save_folder, key)[0]


def load_model(folder: str, key: str = "si_sdr", trust_code: bool = False):
    """An :class:`AVSEModel` with its weights from an exported folder or an experiment folder.

    Exported: ``folder/model.yaml`` + ``folder/model.ckpt`` (checked against the ``files:``
    manifest of ``model.yaml`` when it has one). Experiment: ``model.yaml`` and
    ``save/CKPT+*/model.ckpt``: the complete checkpoint with the best validation ``key``; one
    that cannot be loaded is skipped with a warning and the next best used.
    ``trust_code``: see :func:`build_from_config`.
    """
    from avse.models.safety import check_manifest, checkpoint_candidates, logger

    model = build_from_config(folder, trust_code=trust_code)
    weights = os.path.join(folder, MODEL_WEIGHTS)
    if os.path.lexists(weights) or FILES_KEY in read_config(folder):
        check_manifest(folder, read_config(folder).get(FILES_KEY), MODEL_CONFIG)
        return load_state(model, weights).eval()
    problems = []
    for ckpt in checkpoint_candidates(os.path.join(folder, "save"), key):
        try:
            load_state(model, os.path.join(ckpt, MODEL_WEIGHTS))
        except ModelLoadError as err:
            logger.warning("skipping checkpoint %s: %s", ckpt, err)
            problems.append(str(err))
            continue
        if problems:
            logger.warning("using %s instead (the best loadable checkpoint)", ckpt)
        return model.eval()
    raise ModelLoadError(f"no loadable checkpoint in {os.path.join(folder, 'save')}: "
                         + "; ".join(problems))
