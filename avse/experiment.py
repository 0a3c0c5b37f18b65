"""The body of every ``egs/*/train.py``: yaml -> loaders -> AVSEBrain.fit -> evaluation.

``python egs/<exp>/train.py hparams/<x>.yaml [--data_folder DIR] [--key=value ...]`` or under
``torchrun``. Keys the yaml provides (see egs/synthetic/hparams/demo.yaml):

- ``modules: {model: ...}``, ``opt_class``, ``checkpointer``, ``epoch_counter``,
  ``train_logger`` and the AVSEBrain hyperparameters (``alpha``, ``aux_losses``, ...);
- data: ``train_shards`` (a split folder, an ``http(s)://`` split prefix, or a WebDataset
  URL spec such as ``pipe:...shard-{000000..000511}.tar`` with ``train_shards_meta``, the
  location of its meta.json; ``train_shards_resampled: true`` draws shards with
  replacement, see :mod:`avse.data.loaders.dynamic`), ``valid_shards`` + ``valid_list``,
  ``mixture_config`` (an ``avse.data.mixing.MixtureConfig``), ``batch_size``,
  ``num_workers``, ``epoch_steps`` (nominal epoch length, same on every rank),
  ``skip_bad_shards`` (false: a missing or unreadable shard is an error before training
  starts; true: it is left out with a warning, README "Reliability");
- ``test_sets: {name: {shards: [...], list: csv, visual_from: target|mismatched}}``
  evaluated with the best checkpoint into ``<output_folder>/eval/<name>.{csv,json}``, then
  ``eval/summary.json`` and one table of means over the sets, ``eval/table.{txt,csv}``;
- lists with noise tuples (recipes/MUSAN/README.md) read their noise from
  ``train_noise_shards`` / ``valid_noise_shards`` / a test set's ``noise_shards``.
"""
from __future__ import annotations

import logging
import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from avse.brain import AVSEBrain
from avse.data.loaders import make_list_loader, make_train_loader
from avse.evaluation import means_rows, write_json, write_table
from avse.models.io import save_config

logger = logging.getLogger(__name__)


def load_hparams(argv):
    """Parse SpeechBrain-style arguments and load the yaml with overrides."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file) as f:
        hparams = load_hyperpyyaml(f, overrides)
    return hparams_file, run_opts, overrides, hparams


def make_loaders(hparams):
    """The training loader (dynamic mixing or list mode) and the validation loader."""
    config = hparams["mixture_config"]
    if hparams.get("train_list"):
        train = make_list_loader(hparams["train_shards"], hparams["train_list"], stage="train",
                                 config=config, batch_size=hparams["batch_size"],
                                 num_workers=hparams.get("num_workers", 0),
                                 seed=hparams.get("seed", 0),
                                 noise_dirs=hparams.get("train_noise_shards"),
                                 skip_bad_shards=hparams.get("skip_bad_shards", False),
                                 mouth_crop=hparams.get("mouth_crop"))
    else:
        train = make_train_loader(hparams["train_shards"], config, hparams["batch_size"],
                                  num_workers=hparams.get("num_workers", 0),
                                  epoch_steps=hparams.get("epoch_steps"),
                                  shuffle_buffer=hparams.get("shuffle_buffer", 100),
                                  seed=hparams.get("seed", 0),
                                  meta=hparams.get("train_shards_meta"),
                                  resampled=hparams.get("train_shards_resampled", False),
                                  skip_bad_shards=hparams.get("skip_bad_shards", False),
                                  mouth_crop=hparams.get("mouth_crop"))
    valid = None
    if hparams.get("valid_list"):
        valid = make_list_loader(hparams["valid_shards"], hparams["valid_list"], stage="valid",
                                 config=hparams.get("eval_mixture_config", config),
                                 batch_size=hparams.get("valid_batch_size", 1),
                                 seed=hparams.get("seed", 0),
                                 noise_dirs=hparams.get("valid_noise_shards"),
                                 skip_bad_shards=hparams.get("skip_bad_shards", False),
                                 mouth_crop=hparams.get("mouth_crop"))
    return train, valid


def run_tests(brain, hparams) -> dict:
    """Evaluate every entry of ``test_sets``; returns ``{name: summary}``. Face shards
    (``--crop face``, e.g. GRID / TCD-TIMIT) get the model's crop cut at load time: the
    entry's ``mouth_crop``, else the crop the model was trained on
    (:func:`training_inference_config`)."""
    results, crop = {}, None
    out_dir = os.path.join(hparams["output_folder"], "eval")
    for name, spec in (hparams.get("test_sets") or {}).items():
        if not spec.get("mouth_crop") and crop is None:
            crop = training_inference_config(hparams).get("crop", "")
        loader = make_list_loader(spec["shards"], spec["list"], stage="test",
                                  config=hparams.get("eval_mixture_config", hparams["mixture_config"]),
                                  batch_size=1, visual_from=spec.get("visual_from", "target"),
                                  seed=hparams.get("seed", 0),
                                  noise_dirs=spec.get("noise_shards"),
                                  mouth_crop=spec.get("mouth_crop") or crop or None)
        results[name] = brain.evaluate_to(loader, out_dir, name)
    if results and sb.utils.distributed.if_main_process():
        write_json(results, os.path.join(out_dir, "summary.json"))
        # one table over all test sets (e.g. the named conditions): eval/table.{txt,csv}
        table = write_table(means_rows(results), out_dir, "table")
        logger.info("test sets (means):\n%s", table)
        print(table)
    return results


def training_inference_config(hparams) -> dict:
    """What ``model.yaml``'s ``inference`` section records: the crop preset of the training
    shards (their meta.json; for face shards, ``--crop face``, the ``mouth_crop`` cut from
    them), the sample rate and the mixture normalisation (``none`` when
    the training mixtures were not normalised, ``mixture_config: normalise: null``, as the
    causal egs do: a live stream has no whole-file peak)."""
    from avse.data.remote import resolve_split
    from avse.data.shards import ShardError

    mixing = hparams.get("mixture_config")
    norm = "none" if mixing is not None and getattr(mixing, "normalise", "peak") is None \
        else "peak"
    config = {"sample_rate": int(hparams.get("sample_rate", 16000)), "mixture_norm": norm}
    try:
        crop = resolve_split(hparams["train_shards"], hparams.get("train_shards_meta")).meta.get("crop")
    except (KeyError, ShardError, OSError) as err:
        logger.warning("the training shards' crop preset is unknown (%s); model.yaml records the "
                       "default", err)
        crop = None
    if crop == "face":  # face-centred shards: the preset cut from them (hparams mouth_crop)
        crop = hparams.get("mouth_crop")
    if crop:
        config["crop"] = crop
    return config


def main(argv=None):
    """Train (resuming from the last checkpoint: a finished experiment is only evaluated again)
    and evaluate one experiment on its ``test_sets``."""
    argv = sys.argv[1:] if argv is None else argv
    hparams_file, run_opts, overrides, hparams = load_hparams(argv)
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=overrides)
    model = hparams["modules"]["model"]
    if sb.utils.distributed.if_main_process() and getattr(model, "config", None) is not None:
        save_config(model, hparams["output_folder"], training_inference_config(hparams))
        from avse.embed import record_shards_frontend  # shards of the embedding stage

        record_shards_frontend(hparams["output_folder"], hparams["train_shards"],
                               hparams.get("train_shards_meta"))
    brain = AVSEBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                      run_opts=run_opts, checkpointer=hparams["checkpointer"])
    train, valid = make_loaders(hparams)
    brain.fit(hparams["epoch_counter"], train, valid)
    results = run_tests(brain, hparams)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank leaves together and tears the group down, rather than aborting in the
        # interpreter's exit while a peer still talks to it
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return brain, results
