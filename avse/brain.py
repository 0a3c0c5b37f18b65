"""AVSEBrain: the one training loop (a ``speechbrain.core.Brain``).

Only ``compute_forward``, ``compute_objectives`` and the stage hooks are overridden;
``fit_batch`` stays SpeechBrain's, so gradient accumulation, ``no_sync``, non-finite
checks, ``max_grad_norm`` clipping and mixed precision (``--precision bf16`` on CPU,
``fp16`` on CUDA) all work as documented there.

Hyperparameters read from the yaml (``self.hparams``):

- ``alpha`` (0): weight of deep supervision: ``loss = -SI-SDR(final) + alpha * sum_k
  -SI-SDR(intermediate_k)`` (the SEANet repository's convention; ``intermediate_reduction:
  mean`` averages instead).
- ``silent_loss`` ("energy"), ``silent_energy_floor`` (-40 dB), ``silent_energy_weight`` (1):
  examples whose target is silent (conditions ``absent`` / ``sparse``) are trained on their
  output power relative to the mixture instead of SI-SDR (:func:`avse.losses.extraction_loss`;
  ``silent_loss: none`` keeps SI-SDR everywhere). Without silent examples the loss is the
  mean negative SI-SDR, as before.
- ``aux_losses`` ({}): ``name: {output: <aux key>, target: <batch field>, kind: si_sdr|l1|
  cross_entropy|bce, weight: w, intermediate: bool, mask_silent: bool}``; summed over the
  final and (optionally) intermediate predictions, in the training stage only (validation
  ranks by SI-SDR); e.g. SEANet's noise branch, MuSE's speaker classification, or the
  activity head (``{output: activity, target: activity, kind: bce}``). ``mask_silent``
  (default: true, except for ``bce``) leaves the silent-target examples out of the term.
- ``lr_scheduler`` (optional): ``speechbrain.nnet.schedulers.StepScheduler`` (decay every
  n epochs, the seed's x0.97 every 3) or ``ReduceLROnPlateau`` (on validation loss).
- ``unfreeze_frontend_after`` (null: never): with a visual encoder whose front-end is frozen
  (``trainable: false``, e.g. one loaded with ``pretrained:``), unfreeze it at the start of
  epoch N + 1 (``set_frontend_trainable(True)``; 0: from the first epoch). The optimizer holds
  the front-end's parameters from the start (SpeechBrain's ``opt_class`` takes every
  parameter; one that skips frozen ones gets them added as one more param group when the
  optimizer is made), so they train from that epoch on with the current learning rate, and a
  run resumed before or after the unfreezing restores the same optimizer layout (a resumed
  run unfreezes again at its first epoch past N). Under DDP the model is wrapped again, as
  DDP only reduces the gradients of parameters that required them when it was wrapped.
- ``valid_every_n_epochs`` (1), ``keep_checkpoints`` (1 best by validation SI-SDR, plus
  the most recent), ``train_logger``, ``tensorboard_logger``, ``eval_metrics`` (metrics of the
  TEST stage, default :data:`avse.evaluation.DEFAULT_METRICS`), ``trace_dir`` (debugging:
  per-rank json of the keys trained on, step count and a parameter checksum after each epoch).

The TEST stage scores with :class:`avse.evaluation.Scorer` (the scoring of the condition
evaluation and the sync sweep too). Of SpeechBrain's internals only ``_wrap_distributed`` is
overridden (CPU DDP); tests/unit/test_speechbrain_contract.py checks it and the behaviour of
``Brain.fit`` the hooks here rely on (hook order, loaders used as given, ``self.step`` after
an intra-epoch resume, an empty validation pass).
"""
from __future__ import annotations

import json
import logging
import os

import speechbrain as sb
import torch

from avse import losses
from avse.checkpoints import RunState, upgrade
from avse.faults import fault_point
from avse.evaluation import DEFAULT_METRICS, MetricTracker, Scorer, batch_field, batch_to
from avse.metrics import si_sdr

logger = logging.getLogger(__name__)


class AVSEBrain(sb.core.Brain):
    """Train and evaluate an :class:`~avse.models.AVSEModel` held in ``modules["model"]``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_state = RunState()  # random generators + fault counters, per checkpoint
        self.nonfinite_in_a_row = 0
        self._step_finite = True
        if self.checkpointer is not None:
            upgrade(self.checkpointer)  # complete-or-invisible saves (avse.checkpoints)
            self.checkpointer.add_recoverable("run_state", self.run_state, optional_load=True)

    def fit(self, epoch_counter, train_set, valid_set=None, **kwargs):
        """SpeechBrain's ``fit``, keeping the loaders for the stage hooks: at the start of each
        epoch a training loader with ``set_epoch`` is told the epoch (reseeding dynamic mixing)
        and, after an intra-epoch resume, to skip the batches already done."""
        self.train_loader, self.valid_loader = train_set, valid_set
        return super().fit(epoch_counter, train_set, valid_set, **kwargs)

    @staticmethod
    def checkpoint_importance(ckpt) -> float:
        """How good a checkpoint is (the higher the better): its validation SI-SDR."""
        return _ckpt_si_sdr(ckpt)

    def _wrap_distributed(self):
        """SpeechBrain converts BatchNorm to SyncBatchNorm before wrapping in DDP, which only
        works on GPUs; on CPU (gloo) wrap without it (each rank keeps its BN statistics).

        A private SpeechBrain method (called by ``Brain.on_fit_start`` between ``_compile``
        and ``init_optimizers``; no public hook sits there): guarded by
        tests/unit/test_speechbrain_contract.py."""
        if self.distributed_launch and self.device_type == "cpu":
            from torch.nn.parallel import DistributedDataParallel

            for name, module in self.modules.items():
                if any(p.requires_grad for p in module.parameters()):
                    self.modules[name] = DistributedDataParallel(
                        module, find_unused_parameters=self.find_unused_parameters)
            return
        super()._wrap_distributed()

    # ------------------------------------------------------------------ front-end unfreezing
    def init_optimizers(self):
        """SpeechBrain's, then (with ``unfreeze_frontend_after``) the visual front-end's
        parameters added as one more param group where ``opt_class`` left them out."""
        super().init_optimizers()
        if _unfreeze_after(self.hparams) is None or getattr(self, "optimizer", None) is None:
            return
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        missing = [p for p in self._frontend_encoder().frontend.parameters() if id(p) not in held]
        if missing:
            self.optimizer.add_param_group({"params": missing})

    def _frontend_encoder(self):
        model = self.modules["model"]
        encoder = getattr(getattr(model, "module", model), "visual_encoder", None)
        if not hasattr(encoder, "set_frontend_trainable"):
            raise ValueError(f"unfreeze_frontend_after is set, but the visual encoder "
                             f"({type(encoder).__name__}) has no front-end to unfreeze: use a "
                             "ROI visual encoder (cnn, resnet18, dlr_resnet18) or remove the key")
        return encoder

    def _maybe_unfreeze_frontend(self, epoch):
        """At the start of epoch N + 1 and later: unfreeze a frozen front-end (see the module
        docstring, ``unfreeze_frontend_after``)."""
        after = _unfreeze_after(self.hparams)
        if after is None or epoch is None or epoch <= after:
            return
        encoder = self._frontend_encoder()
        if encoder.trainable:
            return
        encoder.set_frontend_trainable(True)
        from torch.nn.parallel import DistributedDataParallel as DDP

        for name, module in self.modules.items():  # DDP reduces what required grad when made
            if isinstance(module, DDP):
                ids = None if self.device_type == "cpu" or self.distributed_backend == "gloo" \
                    else [self.device]
                self.modules[name] = DDP(module.module, device_ids=ids,
                                         find_unused_parameters=self.find_unused_parameters)
        logger.info("epoch %d: the visual front-end is unfrozen (unfreeze_frontend_after: %d)",
                    epoch, after)

    # ------------------------------------------------------------------ non-finite steps
    def check_loss_isfinite(self, loss):
        """Note a non-finite loss; the step is skipped in :meth:`optimizers_step` (SpeechBrain
        would count it and step anyway)."""
        self._step_finite = self._step_finite and bool(torch.isfinite(loss))

    def optimizers_step(self):
        """SpeechBrain's step, unless the loss or a gradient of this step is NaN/inf on any
        rank: then the gradients are dropped, the step skipped and counted with a warning, and
        more than ``--nonfinite_patience`` (3) in a row stop the run with a clear error. With
        fp16's GradScaler (which skips such steps itself and lowers its scale) SpeechBrain's
        step runs as it is."""
        finite, self._step_finite = self._step_finite, True
        if self.scaler.is_enabled():
            return super().optimizers_step()
        grads = [p.grad for p in self.modules.parameters() if p.grad is not None]
        if grads:
            finite = finite and bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        flag = torch.tensor([0.0 if finite else 1.0])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag)  # every rank skips together
        if float(flag) == 0.0:
            self.nonfinite_in_a_row = 0
            return super().optimizers_step()
        self.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        counters = self.run_state.counters
        counters["nonfinite_skipped"] = counters.get("nonfinite_skipped", 0) + 1
        self._epoch_nonfinite = getattr(self, "_epoch_nonfinite", 0) + 1
        logger.warning("training step %d: non-finite loss or gradient; the step is skipped (%d "
                       "in a row, %d in this run)", self.attempted_steps,
                       self.nonfinite_in_a_row, counters["nonfinite_skipped"])
        if self.nonfinite_in_a_row > self.nonfinite_patience:
            raise NonFiniteError(
                f"training stopped: {self.nonfinite_in_a_row} optimiser steps in a row had a "
                f"non-finite loss or gradient (--nonfinite_patience={self.nonfinite_patience}) "
                f"after optimiser step {self.optimizer_step}. The last complete checkpoint in "
                f"{getattr(self.checkpointer, 'checkpoints_dir', '(none)')} is unaffected: lower "
                "the learning rate, set max_grad_norm, or check the data, then run the same "
                "command to resume")

    @property
    def attempted_steps(self) -> int:
        """Optimiser steps taken plus those skipped as non-finite (survives a resume)."""
        state = getattr(self, "run_state", None)  # (a Brain built without __init__ in tests)
        skipped = int(state.counters.get("nonfinite_skipped", 0)) if state is not None else 0
        return getattr(self, "optimizer_step", 0) + skipped

    # ------------------------------------------------------------------ forward / loss
    def compute_forward(self, batch, stage):
        batch = batch_to(batch, self.device)
        mixture = batch_field(batch, "mixture")
        visual = batch_field(batch, "visual")
        need_inter = stage == sb.Stage.TRAIN and self._wants_intermediate()
        model = self.modules.model
        if stage != sb.Stage.TRAIN:  # ranks evaluate different row counts: no DDP collectives
            model = getattr(model, "module", model)
        output = model(mixture, visual, return_intermediate=need_inter)
        return output, batch

    def _wants_intermediate(self) -> bool:
        if getattr(self.hparams, "alpha", 0.0) > 0:
            return True
        aux = getattr(self.hparams, "aux_losses", None) or {}
        return any(spec.get("intermediate", False) for spec in aux.values())

    def compute_objectives(self, predictions, batch, stage):
        output, batch = predictions
        target = batch_field(batch, "target")
        mixture = batch_field(batch, "mixture")
        active = losses.active_examples(target, mixture)
        hp = self.hparams
        loss = losses.extraction_loss(
            output.estimate, output.intermediate, target, mixture,
            alpha=float(getattr(hp, "alpha", 0.0)),
            reduction=getattr(hp, "intermediate_reduction", "sum"),
            silent=getattr(hp, "silent_loss", "energy"),
            energy_floor_db=float(getattr(hp, "silent_energy_floor", -40.0)),
            energy_weight=float(getattr(hp, "silent_energy_weight", 1.0)), active=active)
        if stage == sb.Stage.TRAIN:  # auxiliary heads (e.g. speaker classifiers) train only
            for name, spec in (getattr(hp, "aux_losses", None) or {}).items():
                loss = loss + self._aux_loss(name, spec, output, batch, active)
            if fault_point("loss", index=self.attempted_steps + 1) == "nan":  # tests only
                loss = loss * float("nan")
        if stage != sb.Stage.TRAIN:
            self._track(output.estimate.detach().float(), batch, stage, active)  # bf16/fp16 too
        return loss

    def _aux_loss(self, name, spec, output, batch, active=None):
        key = spec.get("output", name)
        if key not in output.aux:
            raise KeyError(f"aux_losses.{name}: the model has no auxiliary output {key!r}; it "
                           f"has {sorted(output.aux)}")
        target = batch_field(batch, spec["target"])
        preds = [output.aux[key]]
        if spec.get("intermediate", False):
            preds += list(output.aux.get(key + "_intermediate", []))
        kind = spec.get("kind", "si_sdr")
        mask = active if spec.get("mask_silent", kind != "bce") else None
        return float(spec.get("weight", 1.0)) * losses.aux_loss(kind, preds, target, mask)

    # ------------------------------------------------------------------ metrics
    def _track(self, estimate, batch, stage, active):
        if stage == sb.Stage.TEST:  # per utterance, full length: the evaluation's scorer
            self.scorer.score_batch(estimate, batch, self.test_tracker,
                                    batch_columns=("interferers", "lips_of"))
            return
        target = batch_field(batch, "target").float()
        mixture = batch_field(batch, "mixture").float()
        sdr = si_sdr(estimate.float(), target)
        sdr_mix = si_sdr(mixture, target)
        energy = losses.silent_energy_db(estimate.float(), mixture, floor_db=-100.0)
        for ok, v, i, e in zip(active.tolist(), sdr.tolist(), (sdr - sdr_mix).tolist(),
                               energy.tolist()):
            # SI-SDR of a silent target is undefined: such rows count by their output energy
            self.valid_stats.append((v, i, None) if ok else (None, None, e))

    # ------------------------------------------------------------------ stage hooks
    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            self._trace = {}
            self._epoch_nonfinite = 0
            self._maybe_unfreeze_frontend(epoch)
            loader = getattr(self, "train_loader", None)
            if hasattr(loader, "set_epoch") and epoch is not None:
                loader.set_epoch(epoch)
            if hasattr(loader, "skip_batches"):
                loader.skip_batches(self.step)  # > 0 only right after an intra-epoch resume
        elif stage == sb.Stage.VALID:
            self.valid_stats = []
            if not self._validates(epoch) and hasattr(self.valid_loader, "skip_batches"):
                self.valid_loader.skip_batches(len(self.valid_loader))  # an empty pass
        elif stage == sb.Stage.TEST:
            metrics = tuple(getattr(self.hparams, "eval_metrics", None) or DEFAULT_METRICS)
            if getattr(self, "eval_silent", False) and "silent_energy" not in metrics:
                metrics += ("silent_energy",)  # rows with a silent target: their output energy
            if getattr(self, "scorer", None) is None or self.scorer.metrics != metrics:
                self.scorer = Scorer(metrics)  # one per Brain: one missing-package line
            self.test_tracker = MetricTracker(metrics=self.scorer.metrics)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self._write_trace(epoch)
            self.train_loss = stage_loss
            self.train_faults = self._epoch_faults()
            self.epoch_lr = self.optimizer.param_groups[0]["lr"]
            self._step_scheduler(epoch)
            if not self._validates(epoch):  # else the validation end logs and checkpoints
                self._log({"epoch": epoch, "lr": self.epoch_lr},
                          {"loss": stage_loss, **self.train_faults}, None)
                if self.checkpointer is not None:
                    self.checkpointer.save_and_keep_only(
                        meta={"epoch": epoch}, importance_keys=[self.checkpoint_importance],
                        num_to_keep=int(getattr(self.hparams, "keep_checkpoints", 1)))
            return
        if stage == sb.Stage.VALID:
            if not self._validates(epoch):
                return
            stats = self._reduce_valid_stats(stage_loss)
            plateau = getattr(self.hparams, "lr_scheduler", None)
            if isinstance(plateau, sb.nnet.schedulers.ReduceLROnPlateau):
                _, new_lr = plateau([self.optimizer], epoch, stats["loss"])
                sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self._log({"epoch": epoch, "lr": self.epoch_lr},
                      {"loss": self.train_loss, **getattr(self, "train_faults", {})}, stats)
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(
                    meta={"epoch": epoch, **stats}, importance_keys=[self.checkpoint_importance],
                    num_to_keep=int(getattr(self.hparams, "keep_checkpoints", 1)))
            self.last_valid_stats = stats
            return
        # TEST: gather every rank's rows, rank 0 writes
        self.test_tracker = self.test_tracker.gathered()
        self.test_summary = self.test_tracker.summary()
        out_dir = getattr(self, "eval_dir", None)
        if out_dir and sb.utils.distributed.if_main_process():
            os.makedirs(out_dir, exist_ok=True)
            name = getattr(self, "eval_name", "test")
            self.test_tracker.write_csv(os.path.join(out_dir, f"{name}.csv"))
            self.test_tracker.write_json(os.path.join(out_dir, f"{name}.json"))
            logger.info("%s:\n%s", name, self.test_tracker.table())

    def _epoch_faults(self) -> dict:
        """This epoch's skipped steps (non-finite) and skipped samples (the training loader's
        ``faults``), summed over ranks; only the non-zero ones (they go in the train log)."""
        faults = getattr(getattr(self, "train_loader", None), "faults", None) or {}
        skipped = int(faults.get("skipped", 0)) if isinstance(faults, dict) else 0
        new = max(skipped - getattr(self, "_samples_skipped_seen", 0), 0)  # count since start
        self._samples_skipped_seen = skipped
        counts = torch.tensor([float(getattr(self, "_epoch_nonfinite", 0)), float(new)],
                              dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)  # samples: summed over ranks
            counts[0] /= torch.distributed.get_world_size()  # steps: every rank skips the same
        out = {}
        if counts[0] > 0:
            out["skipped_steps"] = int(counts[0])
        if counts[1] > 0:
            out["skipped_samples"] = int(counts[1])
            total = self.run_state.counters.get("samples_skipped", 0) + int(counts[1])
            self.run_state.counters["samples_skipped"] = total
        return out

    def _reduce_valid_stats(self, stage_loss) -> dict:
        """Mean loss, SI-SDR and SI-SDRi (rows whose target speaks) and ``silent_energy`` (rows
        whose target is silent: output power relative to the mixture, dB) over the validation
        rows of every rank; a statistic without rows is left out."""
        rows = self.valid_stats
        n = len(rows)
        spoken = [r for r in rows if r[2] is None]
        silent = [r[2] for r in rows if r[2] is not None]
        sums = torch.tensor([float(stage_loss) * n, sum(v for v, _, _ in spoken),
                             sum(i for _, i, _ in spoken), float(len(spoken)), sum(silent),
                             float(len(silent)), float(n)], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        stats = {"loss": float(sums[0]) / max(float(sums[6]), 1.0)}
        if sums[3] > 0:
            stats["si_sdr"] = float(sums[1]) / float(sums[3])
            stats["si_sdri"] = float(sums[2]) / float(sums[3])
        if sums[5] > 0:
            stats["silent_energy"] = float(sums[4]) / float(sums[5])
        return stats

    def evaluate_batch(self, batch, stage):
        if stage == sb.Stage.VALID:
            fault_point("valid_batch")
        return super().evaluate_batch(batch, stage)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            fault_point("train_step", index=self.optimizer_step)
        if getattr(self.hparams, "trace_dir", None):
            self._trace.setdefault("keys", []).extend(batch_field(batch, "keys"))
            self._trace["steps"] = self._trace.get("steps", 0) + 1

    def _write_trace(self, epoch):
        """``trace_dir`` (a debugging option): what each rank trained on, one json per rank."""
        trace_dir = getattr(self.hparams, "trace_dir", None)
        if not trace_dir:
            return
        os.makedirs(trace_dir, exist_ok=True)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        checksum = sum(float(p.detach().double().sum()) for p in self.modules.parameters())
        record = {"rank": rank, "epoch": epoch, "optimizer_step": self.optimizer_step,
                  "param_checksum": checksum, **self._trace,
                  "data_faults": getattr(getattr(self, "train_loader", None), "faults", None)}
        with open(os.path.join(trace_dir, f"rank{rank}_epoch{epoch}.json"), "w") as f:
            json.dump(record, f)
        self._trace = {}

    def _validates(self, epoch) -> bool:
        """Whether epoch ``epoch`` ends with a validation pass (every n epochs, and the last)."""
        if getattr(self, "valid_loader", None) is None or epoch is None:
            return False
        every = int(getattr(self.hparams, "valid_every_n_epochs", 1) or 1)
        return epoch % every == 0 or epoch == getattr(self.hparams, "number_of_epochs", None)

    def _step_scheduler(self, epoch):
        """Epoch-based decay (e.g. StepScheduler: x0.97 every 3 epochs) after each epoch."""
        sched = getattr(self.hparams, "lr_scheduler", None)
        if sched is not None and not isinstance(sched, sb.nnet.schedulers.ReduceLROnPlateau):
            _, new_lr = sched(epoch)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)

    def _log(self, stats_meta, train_stats, valid_stats):
        # called on every rank: SpeechBrain's loggers write on the main process and broadcast
        for name in ("train_logger", "tensorboard_logger"):
            log = getattr(self.hparams, name, None)
            if log is not None:
                log.log_stats(stats_meta=stats_meta, train_stats=train_stats,
                              valid_stats=valid_stats)

    # ------------------------------------------------------------------ evaluation
    def evaluate_to(self, test_set, out_dir: str, name: str = "test", max_key="si_sdr"):
        """Evaluate the best checkpoint (by ``max_key``) on ``test_set``.

        A list whose rows have a silent target (``absent`` / ``sparse``) is scored with
        ``silent_energy`` too; SI-SDR and the others then cover the target's active part.

        Writes ``out_dir/<name>.csv`` (per utterance) and ``<name>.json`` (mean, std, count
        per metric); returns the summary dict.
        """
        self.eval_dir, self.eval_name = out_dir, name
        rows = getattr(getattr(test_set, "dataset", None), "rows", None) or []
        self.eval_silent = any(getattr(m, "activity", None) for m in rows)
        self.evaluate(test_set, max_key=max_key if self.checkpointer is not None else None)
        return self.test_summary


class NonFiniteError(RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss or gradient."""


def _unfreeze_after(hparams):
    """``unfreeze_frontend_after`` as an int (None: never); a clear error when it is not one."""
    after = getattr(hparams, "unfreeze_frontend_after", None)
    if after is None:
        return None
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(f"unfreeze_frontend_after must be a whole number of epochs >= 0 or "
                         f"null, got {after!r}")
    return after


def _ckpt_si_sdr(ckpt) -> float:
    """Checkpoint importance: validation SI-SDR (-inf for epochs without validation)."""
    return float(ckpt.meta.get("si_sdr", float("-inf")))
