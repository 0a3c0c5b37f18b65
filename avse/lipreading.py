"""Lip-reading pretraining: :class:`LipReadingBrain`, the experiment's ``main`` and the export.

A visual-only recogniser (:class:`avse.models.lipreading.LipReadingModel`: front-end ->
conformer or V-TCN -> CTC head over the recipe's sentencepiece pieces) trained with
SpeechBrain's ``ctc_loss`` on :class:`avse.data.loaders.text.TextBatch` batches; its
front-end is then exported on its own (:func:`export_frontend`), for any AVSE yaml's ROI
visual encoder (``pretrained: PATH``, ``trainable``, ``unfreeze_frontend_after``).

:class:`LipReadingBrain` is an :class:`~avse.brain.AVSEBrain` (the same loop, hooks, DDP,
checkpoints, resume, loggers, ``valid_every_n_epochs``, ``lr_scheduler``, ``trace_dir``):
only the forward, the loss, the metrics and the checkpoint ranking differ. Hyperparameters
read from the yaml, besides AVSEBrain's:

- ``blank_frames`` (false): feed zeros instead of the lips, the "blind" baseline that shows
  how much the model reads from the lips rather than from the transcripts' statistics;
- ``curriculum``, ``train_shards``, ``valid_shards``, ``test_sets``, ``skip_bad_shards``: see
  :func:`make_loaders`. Skipped samples reach ``train_log.txt`` as AVSEBrain's
  ``skipped_samples`` (the training loader's ``faults``).

Validation and test decode greedily (SpeechBrain's ``ctc_greedy_decode``) and score CER
(characters, spaces included) and WER with SpeechBrain's ``ErrorRateStats``, in percent;
the best checkpoint is the one of the lowest validation CER. The test of each set writes
``<output_folder>/eval/<name>_hyps.tsv`` (``key, ref, hyp, cer, wer`` per utterance) and
``<name>.json``; ``eval/summary.json`` holds every set's.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import sys

import speechbrain as sb
import torch
from speechbrain.decoders.ctc import ctc_greedy_decode
from speechbrain.utils.metric_stats import ErrorRateStats

from avse.brain import AVSEBrain
from avse.data.loaders.text import make_text_loader, resolve_splits, tokenizer_location
from avse.evaluation import write_json
from avse.experiment import load_hparams
from avse.models.frontends import build_frontend, save_frontend
from avse.models.lipreading import frontend_state

logger = logging.getLogger(__name__)
MODEL_INFO = "lipreading.json"  # in the output folder: the model config and the shards' crop


class LipReadingBrain(AVSEBrain):
    """Train and evaluate a :class:`~avse.models.lipreading.LipReadingModel` held in
    ``modules["model"]``; ``tokenizer`` (decoding ids to text) comes from the loaders."""

    tokenizer = None

    def fit(self, epoch_counter, train_set, valid_set=None, **kwargs):
        self._take_tokenizer(train_set)
        return super().fit(epoch_counter, train_set, valid_set, **kwargs)

    def _take_tokenizer(self, loader):
        if self.tokenizer is None:
            self.tokenizer = getattr(getattr(loader, "dataset", None), "tokenizer", None)

    def _model(self):
        model = self.modules["model"]
        return getattr(model, "module", model)

    @staticmethod
    def checkpoint_importance(ckpt) -> float:
        """The lower the validation CER the better (-inf for epochs without validation)."""
        return -float(ckpt.meta.get("cer", float("inf")))

    # ------------------------------------------------------------------ forward / loss
    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        lips = torch.zeros_like(batch.lips) if getattr(self.hparams, "blank_frames", False) \
            else batch.lips
        model = self.modules["model"] if stage == sb.Stage.TRAIN else self._model()
        return model(lips, batch.lengths), batch

    def compute_objectives(self, predictions, batch, stage):
        log_probs, batch = predictions
        blank = self._model().blank_index
        loss = sb.nnet.losses.ctc_loss(log_probs.float(), batch.tokens, batch.lengths,
                                       batch.token_lengths, blank)
        if stage != sb.Stage.TRAIN:
            self._decode(log_probs.detach(), batch, blank)
        return loss

    def _decode(self, log_probs, batch, blank):
        if self.tokenizer is None:
            raise ValueError("LipReadingBrain: no sentencepiece model to turn ids into text: the "
                             "loaders found none beside the shards (meta.json 'tokenizer'); "
                             "give the yaml key tokenizer: PATH")
        hyps = [self.tokenizer.decode(ids) for ids in
                ctc_greedy_decode(log_probs, batch.lengths, blank_id=blank)]
        refs = [" ".join(t.split()) for t in batch.texts]
        for stats in (self.cer_stats, self.wer_stats):
            stats.append(batch.keys, [h.split() for h in hyps], [r.split() for r in refs])
        self.texts.extend(zip(refs, hyps))

    # ------------------------------------------------------------------ stage hooks
    def on_stage_start(self, stage, epoch=None):
        if stage != sb.Stage.TEST:  # AVSEBrain's: loader epochs, skipped validations, unfreezing
            super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.cer_stats = ErrorRateStats(split_tokens=True, space_token=" ")
            self.wer_stats = ErrorRateStats()
            self.texts = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            skipped = getattr(getattr(self, "train_loader", None), "skipped", None)
            if skipped:
                logger.info("epoch %s: training samples skipped so far: %s", epoch, dict(skipped))
        if stage != sb.Stage.TEST:  # the validation ranks checkpoints by -CER
            return super().on_stage_end(stage, stage_loss, epoch)
        rows = self._rows()
        self.test_summary = {**self._reduce_valid_stats(stage_loss), "count": len(rows)}
        out_dir = getattr(self, "eval_dir", None)
        if out_dir and sb.utils.distributed.if_main_process():
            os.makedirs(out_dir, exist_ok=True)
            name = getattr(self, "eval_name", "test")
            write_hyps(rows, os.path.join(out_dir, f"{name}_hyps.tsv"))
            write_json(self.test_summary, os.path.join(out_dir, f"{name}.json"))
            logger.info("%s: CER %.2f %%, WER %.2f %% over %d utterances", name,
                        self.test_summary.get("cer", float("nan")),
                        self.test_summary.get("wer", float("nan")), len(rows))

    def _rows(self) -> list:
        """``[{key, ref, hyp, cer, wer}]`` of every rank's utterances (per-utterance rates in %)."""
        rows = [{"key": c["key"], "ref": ref, "hyp": hyp, "cer": round(c["WER"], 2),
                 "wer": round(w["WER"], 2)}
                for c, w, (ref, hyp) in zip(self.cer_stats.scores, self.wer_stats.scores,
                                            self.texts)]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            every = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, rows)
            rows = [r for part in every for r in part]
        return rows

    def _reduce_valid_stats(self, stage_loss) -> dict:
        """Mean loss, CER and WER (%) over the decoded utterances of every rank."""
        n = len(self.texts)
        sums = [float(stage_loss) * n, float(n)]
        for stats in (self.cer_stats, self.wer_stats):
            sums += [sum(s["num_edits"] for s in stats.scores),
                     sum(s["num_ref_tokens"] for s in stats.scores)]
        sums = torch.tensor(sums, dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        out = {"loss": float(sums[0]) / max(float(sums[1]), 1.0)}
        if sums[1] > 0:
            out["cer"] = 100.0 * float(sums[2]) / max(float(sums[3]), 1.0)
            out["wer"] = 100.0 * float(sums[4]) / max(float(sums[5]), 1.0)
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate_to(self, test_set, out_dir: str, name: str = "test", min_key="cer"):
        """Evaluate the checkpoint of the lowest validation CER on ``test_set``; writes
        ``out_dir/<name>_hyps.tsv`` and ``<name>.json``; returns the summary dict."""
        self._take_tokenizer(test_set)
        self.eval_dir, self.eval_name = out_dir, name
        self.evaluate(test_set, min_key=min_key if self.checkpointer is not None else None)
        return self.test_summary


def write_hyps(rows, path: str) -> str:
    """One line per utterance: ``key, ref, hyp, cer, wer`` (tab-separated, with a header)."""
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, ["key", "ref", "hyp", "cer", "wer"], delimiter="\t",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    return path


# ---------------------------------------------------------------------------- export
def _find_model_info(ckpt: str) -> dict:
    folder = os.path.dirname(os.path.abspath(ckpt))
    for _ in range(4):  # model.ckpt -> CKPT+... -> save -> output folder
        path = os.path.join(folder, MODEL_INFO)
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
        folder = os.path.dirname(folder)
    raise FileNotFoundError(f"{ckpt}: no {MODEL_INFO} in the folders above it; export from the "
                            "experiment folder written by avse.lipreading.main, or from the Brain")


def export_frontend(source, path: str, preset: str | None = None, extra: dict | None = None) -> str:
    """Save the front-end of a lip-reading model as a front-end file (``save_frontend``).

    Arguments
    ---------
    source : LipReadingBrain, LipReadingModel or str
        a Brain (its model as it is now), a model, or a checkpoint of an experiment run by
        :func:`main`: a ``CKPT+...`` folder or its ``model.ckpt`` (the experiment folder's
        ``lipreading.json`` gives the front-end's type and config).
    path : str
        the front-end file to write.
    preset : str, optional
        the crop preset of the training shards (default: the Brain's or experiment's record).
    extra : dict, optional
        recorded in the file (default: the checkpoint's validation CER and the source).

    Returns ``path``.
    """
    info = {}
    if isinstance(source, (str, os.PathLike)):
        ckpt = os.path.join(source, "model.ckpt") if os.path.isdir(source) else str(source)
        info = _find_model_info(ckpt)
        fe = build_frontend(info["model"]["frontend_type"], **info["model"]["frontend_config"])
        fe.load_state_dict(frontend_state(torch.load(ckpt, map_location="cpu", weights_only=True)))
        meta_path = os.path.join(os.path.dirname(ckpt), "CKPT.yaml")
        if extra is None and os.path.isfile(meta_path):
            import yaml

            with open(meta_path) as f:
                meta = yaml.safe_load(f) or {}
            extra = {k: meta[k] for k in ("cer", "wer", "epoch") if k in meta}
        extra = {"source": os.path.abspath(ckpt), **(extra or {})}
    else:
        model = source._model() if isinstance(source, LipReadingBrain) else source
        fe = getattr(model, "frontend", None)
        if fe is None:
            raise TypeError(f"export_frontend: {type(source).__name__} holds no front-end; give "
                            "a LipReadingBrain, a LipReadingModel or a checkpoint path")
        info = getattr(source, "model_info", {}) or {}
    return save_frontend(fe, path, preset=preset or info.get("crop"), extra=extra)


# ---------------------------------------------------------------------------- experiment
def make_loaders(hparams):
    """The training and validation loaders from the yaml: ``train_shards`` (a split, or a list
    of split folders such as ``[pretrain, train]``; ``train_shards_meta`` for a ``pipe:``
    spec), ``batch_size``, ``epoch_steps``, ``curriculum``, ``shuffle_buffer``,
    ``num_workers``, ``seed``, ``tokenizer`` (optional), ``valid_shards`` (optional),
    ``valid_batch_size``, ``valid_max_seconds``, ``skip_bad_shards`` (false: a missing or
    unreadable shard is one error naming them all before training; true: left out, warned)."""
    common = dict(seed=hparams.get("seed", 0), tokenizer=hparams.get("tokenizer"),
                  skip_bad_shards=bool(hparams.get("skip_bad_shards", False)),
                  mouth_crop=hparams.get("mouth_crop"))
    train = make_text_loader(hparams["train_shards"], hparams["batch_size"], "train",
                             epoch_steps=hparams.get("epoch_steps"),
                             curriculum=hparams.get("curriculum"),
                             shuffle_buffer=hparams.get("shuffle_buffer", 100),
                             num_workers=hparams.get("num_workers", 0),
                             meta=hparams.get("train_shards_meta"), **common)
    valid = None
    if hparams.get("valid_shards"):
        valid = make_text_loader(hparams["valid_shards"], hparams.get("valid_batch_size", 8),
                                 "valid", max_seconds=hparams.get("valid_max_seconds"), **common)
    return train, valid


def run_tests(brain, hparams) -> dict:
    """Evaluate each of ``test_sets: {name: shards}`` (or ``{name: {shards, max_seconds,
    mouth_crop}}``; face shards get the entry's ``mouth_crop``, else the yaml's)."""
    results, out_dir = {}, os.path.join(hparams["output_folder"], "eval")
    for name, spec in (hparams.get("test_sets") or {}).items():
        spec = spec if isinstance(spec, dict) else {"shards": spec}
        loader = make_text_loader(spec["shards"], hparams.get("valid_batch_size", 8), "test",
                                  max_seconds=spec.get("max_seconds"), seed=hparams.get("seed", 0),
                                  tokenizer=hparams.get("tokenizer"),
                                  skip_bad_shards=bool(hparams.get("skip_bad_shards", False)),
                                  mouth_crop=spec.get("mouth_crop") or hparams.get("mouth_crop"))
        results[name] = brain.evaluate_to(loader, out_dir, name)
    if results and sb.utils.distributed.if_main_process():
        write_json(results, os.path.join(out_dir, "summary.json"))
    return results


def model_info(hparams) -> dict:
    """What ``lipreading.json`` records: the model config, the training shards' crop preset
    (for face shards, ``--crop face``, the ``mouth_crop`` cut from them) and vocabulary, the
    tokenizer's location."""
    splits = resolve_splits(hparams["train_shards"], hparams.get("train_shards_meta"),
                            missing_ok=True)
    model = hparams["modules"]["model"]
    crop = splits[0].meta.get("crop")
    crop = hparams.get("mouth_crop") if crop == "face" else crop
    return {"model": getattr(model, "config", None), "crop": crop,
            "vocab_size": splits[0].meta.get("vocab_size"),
            "tokenizer": hparams.get("tokenizer") or tokenizer_location(splits[0]),
            "blank_frames": bool(hparams.get("blank_frames", False))}


def main(argv=None):
    """Train (resuming), test on ``test_sets`` with the best checkpoint, export the front-end to
    ``export_path`` (default ``<output_folder>/frontend.pt``)."""
    argv = sys.argv[1:] if argv is None else argv
    hparams_file, run_opts, overrides, hparams = load_hparams(argv)
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=overrides)
    train, valid = make_loaders(hparams)
    info = model_info(hparams)
    if sb.utils.distributed.if_main_process():
        write_json(info, os.path.join(hparams["output_folder"], MODEL_INFO))
    brain = LipReadingBrain(modules=hparams["modules"], opt_class=hparams["opt_class"],
                            hparams=hparams, run_opts=run_opts,
                            checkpointer=hparams["checkpointer"])
    brain.model_info = info
    brain.fit(hparams["epoch_counter"], train, valid)
    results = run_tests(brain, hparams)
    if not results and brain.checkpointer is not None:  # tests load the best checkpoint
        brain.checkpointer.recover_if_possible(min_key="cer")
    if sb.utils.distributed.if_main_process():
        first = next(iter(results.values()), {})
        best = brain.checkpointer.find_checkpoint(min_key="cer") if brain.checkpointer else None
        path = hparams.get("export_path") or os.path.join(hparams["output_folder"], "frontend.pt")
        export_frontend(brain, path, extra={
            "source": os.path.abspath(hparams["output_folder"]), "cer": first.get("cer"),
            "wer": first.get("wer"), "valid_cer": best.meta.get("cer") if best else None,
            "blank_frames": info["blank_frames"]})
        logger.info("front-end exported to %s", path)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return brain, results
