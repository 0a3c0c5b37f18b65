"""What AVSEBrain relies on in SpeechBrain's ``Brain`` beyond its documented hooks.

Each test fails with a message naming the AVSEBrain code to revisit when a SpeechBrain upgrade
changes the behaviour:

- ``_wrap_distributed`` (private, overridden for DDP on CPU): ``on_fit_start`` calls it once
  with no arguments before ``init_optimizers``; SpeechBrain's own version still converts
  BatchNorm to SyncBatchNorm (which fails on CPU), ours does not.
- ``fit`` / ``evaluate`` call the stage hooks in the order the Brain's loaders need: a loader
  passed to ``fit`` is iterated as given, after ``on_stage_start(stage, epoch)`` (where the
  Brain calls ``set_epoch`` / ``skip_batches``); an emptied validation loader gives an empty
  pass that still ends in ``on_stage_end`` (epochs without validation).
- ``self.step`` holds the batches already done when an intra-epoch checkpoint is recovered,
  before ``on_stage_start(TRAIN)`` (the Brain skips them); ``init_optimizers`` sets
  ``self.optimizer`` (read for the learning rate and the schedulers).
"""
import inspect

import pytest
import speechbrain as sb
import torch
from torch.utils.data import DataLoader

from avse.brain import AVSEBrain

UPGRADE = "speechbrain upgrade (installed {}): ".format(sb.__version__)


class _Brain(sb.core.Brain):
    """A minimal Brain recording the calls AVSEBrain relies on."""

    def __init__(self, *args, **kwargs):
        self.events = []
        super().__init__(*args, **kwargs)

    def compute_forward(self, batch, stage):
        return self.modules.net(batch)

    def compute_objectives(self, predictions, batch, stage):
        return predictions.pow(2).mean()

    def on_stage_start(self, stage, epoch=None):
        self.events.append(("start", stage, epoch, self.step))
        loader, epochs = getattr(self, "empty_valid", (None, ()))
        if stage == sb.Stage.VALID and epoch in epochs:
            loader.empty = True

    def on_stage_end(self, stage, stage_loss, epoch=None):
        self.events.append(("end", stage, epoch))

    def evaluate_batch(self, batch, stage):
        self.events.append(("evaluate_batch", stage))
        return super().evaluate_batch(batch, stage)

    def _wrap_distributed(self):
        self.events.append(("wrap",))
        super()._wrap_distributed()

    def init_optimizers(self):
        self.events.append(("init_optimizers",))
        super().init_optimizers()


class _Loader(DataLoader):
    """Records each ``iter()``; ``empty`` makes the next pass yield nothing (like
    ``skip_batches(len(loader))`` of the Brain's list loaders)."""

    def __init__(self, name, events, n=4):  # n batches of 2 (BatchNorm trains on > 1)
        super().__init__([torch.ones(3) * i for i in range(2 * n)], batch_size=2)
        self.name, self.events, self.empty = name, events, False

    def __iter__(self):
        self.events.append(("iter", self.name))
        if self.empty:
            self.empty = False
            return iter(())
        return super().__iter__()


def _brain(cls=_Brain, checkpointer=None, batch_norm=True, **run_opts):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4),
                              torch.nn.BatchNorm1d(4) if batch_norm else torch.nn.Identity())
    return cls(modules={"net": net}, opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
               run_opts={"device": "cpu", "noprogressbar": True, **run_opts},
               checkpointer=checkpointer)


def test_wrap_distributed_is_called_once_by_fit_before_the_optimizers():
    params = list(inspect.signature(sb.core.Brain._wrap_distributed).parameters)
    assert params == ["self"], (
        UPGRADE + f"Brain._wrap_distributed now takes {params}: update the override in "
        "avse/brain.py (AVSEBrain._wrap_distributed)")
    brain = _brain()
    assert ("wrap",) not in brain.events, UPGRADE + "Brain.__init__ now wraps the modules"
    brain.fit(range(1, 2), _Loader("train", brain.events))
    calls = [e for e in brain.events if e[0] in ("wrap", "init_optimizers")]
    assert calls == [("wrap",), ("init_optimizers",)], (
        UPGRADE + f"Brain.fit no longer calls _wrap_distributed() once before init_optimizers() "
        f"(calls: {calls}): AVSEBrain._wrap_distributed (DDP on CPU) would not run; move it "
        "to the hook that now wraps the modules")
    assert isinstance(brain.optimizer, torch.optim.SGD), (
        UPGRADE + "init_optimizers no longer sets self.optimizer, which AVSEBrain reads for "
        "the learning rate and its schedulers")


def _fails_on_cpu(brain) -> bool:
    """SpeechBrain's DDP wrap + a training forward on CPU stop at SyncBatchNorm."""
    try:
        sb.core.Brain._wrap_distributed(brain)
        brain.modules.net(torch.randn(2, 3))
    except ValueError as err:
        return "SyncBatchNorm" in str(err)
    return False


def test_speechbrain_ddp_wrap_still_needs_our_cpu_override(tmp_path):
    for name in ("distributed_launch", "device_type", "find_unused_parameters"):
        assert hasattr(_brain(), name), (
            UPGRADE + f"Brain no longer sets self.{name}, read by AVSEBrain._wrap_distributed")
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        plain = _brain(batch_norm=False, distributed_backend="gloo")
        plain.distributed_launch = True  # what torchrun's RANK / LOCAL_RANK set
        sb.core.Brain._wrap_distributed(plain)
        assert isinstance(plain.modules.net, DistributedDataParallel), (
            UPGRADE + "Brain._wrap_distributed no longer wraps modules in DDP under torchrun; "
            "see what does now and update AVSEBrain._wrap_distributed")
        theirs = _brain(distributed_backend="gloo")
        theirs.distributed_launch = True
        assert _fails_on_cpu(theirs), (
            UPGRADE + "Brain._wrap_distributed now trains BatchNorm modules under DDP on CPU "
            "(no SyncBatchNorm error): AVSEBrain._wrap_distributed may go")
        ours = _brain(AVSEBrain, distributed_backend="gloo")
        ours.distributed_launch = True
        ours._wrap_distributed()
        assert isinstance(ours.modules.net, DistributedDataParallel)
        assert "SyncBatchNorm" not in {type(m).__name__ for m in ours.modules.net.modules()}
        assert ours.modules.net(torch.randn(2, 3)).shape == (2, 4)  # trains on CPU
    finally:
        dist.destroy_process_group()


def test_fit_and_evaluate_drive_the_stage_hooks_as_the_brain_expects():
    brain = _brain()
    train, valid = _Loader("train", brain.events), _Loader("valid", brain.events, n=2)
    brain.empty_valid = valid, {1}  # epoch 1: an emptied validation loader (no validation)
    brain.fit(range(1, 3), train, valid)
    got = [e[:3] for e in brain.events if e[0] in ("start", "end", "iter", "evaluate_batch")]
    T, V = sb.Stage.TRAIN, sb.Stage.VALID
    want = [("start", T, 1), ("iter", "train"), ("end", T, 1),
            ("start", V, 1), ("iter", "valid"), ("end", V, 1),  # empty pass: no batch, an end
            ("start", T, 2), ("iter", "train"), ("end", T, 2),
            ("start", V, 2), ("iter", "valid"), ("evaluate_batch", V), ("evaluate_batch", V),
            ("end", V, 2)]
    assert got == want, (
        UPGRADE + "Brain.fit calls the stage hooks / iterates the loaders differently; "
        "AVSEBrain.on_stage_start tells the loaders passed to fit the epoch (set_epoch), the "
        "batches to skip after a resume (skip_batches) and empties the validation loader on "
        f"epochs without validation.\ngot  {got}\nwant {want}")
    brain.events.clear()
    brain.evaluate(_Loader("test", brain.events, n=2))
    got = [e[:3] for e in brain.events if e[0] in ("start", "end", "iter", "evaluate_batch")]
    S = sb.Stage.TEST
    assert got == [("start", S, None), ("iter", "test"), ("evaluate_batch", S),
                   ("evaluate_batch", S), ("end", S, None)], (
        UPGRADE + f"Brain.evaluate drives the TEST hooks differently: {got}")


class _Stop(Exception):
    pass


def test_step_is_restored_before_the_train_stage_starts(tmp_path):
    """An intra-epoch checkpoint after 2 of 4 batches: on resume, ``on_stage_start(TRAIN, 1)``
    sees ``self.step == 2`` (AVSEBrain then has the loader skip those batches)."""
    def make():
        counter = sb.utils.epoch_loop.EpochCounter(1)
        ckpt = sb.utils.checkpoints.Checkpointer(str(tmp_path), recoverables={"counter": counter})
        return _brain(checkpointer=ckpt, ckpt_interval_steps=2), counter

    brain, counter = make()
    ckpt_modules = brain.modules.net
    brain.checkpointer.add_recoverable("net", ckpt_modules)

    def stop_after_third(batch, outputs, loss, should_step):
        if brain.step == 3:
            raise _Stop()

    brain.on_fit_batch_end = stop_after_third
    with pytest.raises(_Stop):
        brain.fit(counter, _Loader("train", brain.events))
    again, counter = make()
    again.checkpointer.add_recoverable("net", again.modules.net)
    again.fit(counter, _Loader("train", again.events))
    starts = [e for e in again.events if e[:2] == ("start", sb.Stage.TRAIN)]
    assert starts and starts[0][2:] == (1, 2), (
        UPGRADE + f"after an intra-epoch resume on_stage_start(TRAIN) saw (epoch, step) = "
        f"{starts[0][2:] if starts else None}, not (1, 2): AVSEBrain.on_stage_start skips "
        "self.step batches of the training loader")
