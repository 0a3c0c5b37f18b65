"""AVSEBrain's ``unfreeze_frontend_after``: a frozen visual front-end starts training at epoch
N + 1, with its parameters in the optimizer whatever ``opt_class`` took, and DDP re-wrapped."""
import socket

import pytest
import torch

from avse.brain import AVSEBrain
from avse.models import AVSEModel

VISUAL = {"type": "cnn", "out_dim": 8, "hidden": 8, "channels": [4, 8], "num_blocks": 1,
          "trainable": False}


def _model(visual=VISUAL):
    torch.manual_seed(0)
    return AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32}, dict(visual),
                     {"type": "tcn", "bottleneck": 8, "hidden": 16, "num_blocks": 2,
                      "num_repeats": 1})


def _brain(model, after, opt_class=None):
    opt_class = opt_class or (lambda params: torch.optim.AdamW(params, lr=1e-2))
    brain = AVSEBrain(modules={"model": model}, opt_class=opt_class,
                      hparams={"unfreeze_frontend_after": after}, run_opts={"device": "cpu"})
    brain.on_fit_start()
    return brain


def _step(brain, epoch):
    """One training step of epoch ``epoch``; returns how much the front-end moved."""
    brain.on_stage_start(__import__("speechbrain").Stage.TRAIN, epoch)
    brain.modules.train()
    fe = brain.modules["model"].visual_encoder.frontend
    before = [p.detach().clone() for p in fe.parameters()]
    gen = torch.Generator().manual_seed(epoch)
    mix = torch.randn(2, 640 * 10, generator=gen)
    lips = torch.randint(0, 256, (2, 10, 88, 88), dtype=torch.uint8, generator=gen)
    brain.optimizer.zero_grad()
    brain.modules["model"](mix, lips).estimate.pow(2).mean().backward()
    brain.optimizer.step()
    return max((a - b).abs().max().item() for a, b in zip(fe.parameters(), before)), fe.training


@pytest.mark.parametrize("filtered", [False, True])
def test_the_front_end_trains_from_epoch_n_plus_one(filtered):
    opt = (lambda ps: torch.optim.AdamW([p for p in ps if p.requires_grad], lr=1e-2)) \
        if filtered else None
    brain = _brain(_model(), 2, opt)
    fe = brain.modules["model"].visual_encoder.frontend
    held = {id(p) for g in brain.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in held for p in fe.parameters())  # from the start
    assert len(brain.optimizer.param_groups) == (2 if filtered else 1)
    for epoch in (1, 2):
        moved, training = _step(brain, epoch)
        assert moved == 0 and not training and not any(p.requires_grad for p in fe.parameters())
    moved, training = _step(brain, 3)
    assert moved > 0 and training and brain.modules["model"].visual_encoder.trainable


def test_a_resumed_run_past_n_unfreezes_at_its_first_epoch_and_none_never():
    brain = _brain(_model(), 0)
    assert _step(brain, 5)[0] > 0
    brain = _brain(_model(), None)
    assert _step(brain, 9)[0] == 0


def test_bad_values_and_encoders_without_front_end_are_named():
    with pytest.raises(ValueError, match="unfreeze_frontend_after must be a whole number"):
        _brain(_model(), "2")
    emb = {"type": "embedding", "out_dim": 8, "hidden": 8, "num_blocks": 1}
    with pytest.raises(ValueError, match=r"\(EmbeddingVisualEncoder\) has no front-end"):
        _brain(_model(emb), 1)


def test_ddp_is_wrapped_again_when_unfreezing():
    from torch.nn.parallel import DistributedDataParallel as DDP

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=0, world_size=1)
    try:
        model = _model()
        brain = _brain(model, 1)
        brain.modules["model"] = old = DDP(model)
        brain.on_stage_start(__import__("speechbrain").Stage.TRAIN, 2)
        new = brain.modules["model"]
        assert isinstance(new, DDP) and new is not old and new.module is model
        assert model.visual_encoder.trainable
    finally:
        torch.distributed.destroy_process_group()
