"""Helpers shared by the model tests: seeded inputs and weight perturbation."""
import torch
from torch import nn


def av_inputs(batch=2, seconds=0.6, seed=1):
    """mixture ``[B, T]`` @16 kHz and lip embeddings ``[B, Tv, 512]`` @25 fps."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, int(16000 * seconds), generator=gen),
            torch.randn(batch, int(25 * seconds), 512, generator=gen))


def randomise(model, seed=0, scale=0.1):
    """Move every parameter and BatchNorm statistic away from its init (1-d ones included),
    so that a weight mapping is tested on values that tell the tensors apart."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


def tiny_model_folder(folder: str) -> str:
    """A small saved AVSE model (conv / cnn / 2-block TCN, 16 channels) in ``folder``."""
    from avse.models import AVSEModel, save_model

    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32},
                      {"type": "cnn", "out_dim": 16},
                      {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 2,
                       "num_repeats": 1}, fusion="concat")
    return save_model(model, folder)
