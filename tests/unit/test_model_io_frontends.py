"""Model folders and front-ends: a training-time ``pretrained:`` file is not a dependency of the
exported folder, and folders written before the front-end split (old cnn keys) still load."""
import os

import torch
import yaml

from avse.models import AVSEModel
from avse.models.frontends import save_frontend
from avse.models.io import MODEL_CONFIG, load_model, load_state, save_model

SPECS = dict(audio_encoder={"type": "conv", "out_channels": 16, "kernel_size": 16},
             separator={"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 2,
                        "num_repeats": 1},
             fusion="concat")


def _model(**visual):
    torch.manual_seed(0)
    return AVSEModel(visual_encoder={"type": "cnn", "out_dim": 16, **visual}, **SPECS)


def test_pretrained_file_seeds_training_but_not_the_exported_folder(tmp_path):
    fe_path = str(tmp_path / "fe.pt")
    save_frontend(_model().visual_encoder, fe_path, preset="voxceleb2")
    model = _model(pretrained=fe_path, trainable=False)
    folder = str(tmp_path / "exported")
    save_model(model, folder)
    with open(os.path.join(folder, MODEL_CONFIG)) as f:
        spec = yaml.safe_load(f)["visual_encoder"]
    assert "pretrained" not in spec and spec["trainable"] is False
    os.remove(fe_path)  # the folder must not need it
    again = load_model(folder)
    lips = torch.randint(0, 256, (1, 5, 88, 88), dtype=torch.uint8)
    model.eval()
    assert torch.equal(again.visual_encoder(lips), model.visual_encoder(lips))


def test_checkpoint_with_the_old_cnn_keys_loads(tmp_path):
    model = _model().eval()
    state = model.state_dict()
    old = {k.replace("visual_encoder.frontend.", "visual_encoder."): v for k, v in state.items()}
    assert "visual_encoder.cnn.0.weight" in old and "visual_encoder.frame_proj.weight" in old
    path = str(tmp_path / "old.ckpt")
    torch.save(old, path)
    fresh = AVSEModel(visual_encoder={"type": "cnn", "out_dim": 16}, **SPECS).eval()
    load_state(fresh, path)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
