"""AVSEExtractor precision option: bf16 autocast stays close to fp32; bad values fail clearly."""
import pytest
import torch

from avse.inference import AVSEExtractor
from avse.metrics import si_sdr
from avse.models import AVSEModel


def _model():
    torch.manual_seed(0)
    return AVSEModel({"type": "conv", "out_channels": 32, "kernel_size": 16},
                     {"type": "embedding", "out_dim": 32},
                     {"type": "dprnn", "bottleneck": 16, "hidden": 16, "chunk_size": 20,
                      "num_layers": 2}, fusion={"type": "concat", "align": "linear"})


def test_bf16_extraction_is_close_to_fp32_and_returns_fp32():
    model = _model()
    g = torch.Generator().manual_seed(1)
    mix, emb = torch.randn(2, 16000, generator=g), torch.randn(2, 25, 512, generator=g)
    ref = AVSEExtractor(model).extract_batch(mix, emb)
    out = AVSEExtractor(model, precision="bf16").extract_batch(mix, emb)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert not torch.equal(out, ref)  # it really ran in bf16
    assert float(si_sdr(out, ref).min()) > 20.0  # but stays close


@pytest.mark.parametrize("precision,device,match", [("fp8", "cpu", "unknown precision"),
                                                    ("fp16", "cpu", "needs a CUDA device")])
def test_bad_precision_is_a_clear_error(precision, device, match):
    with pytest.raises(ValueError, match=match):
        AVSEExtractor(_model(), device=device, precision=precision)


def test_model_yaml_inference_section_is_written_read_and_defaulted(tmp_path):
    import yaml

    from avse.models.io import ModelLoadError, load_inference_config, save_model

    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 16},
                      {"type": "cnn", "out_dim": 16},
                      {"type": "tcn", "bottleneck": 16, "hidden": 16, "num_blocks": 1,
                       "num_repeats": 1}, fusion="concat")
    folder = save_model(model, str(tmp_path / "m"), inference={"crop": "landmarks"})
    config = yaml.safe_load(open(tmp_path / "m" / "model.yaml"))
    assert config["inference"] == {"crop": "landmarks", "visual_range": "full",
                                   "sample_rate": 16000, "mixture_norm": "peak"}
    ex = AVSEExtractor.from_hparams(folder)
    assert ex.crop == "landmarks" and AVSEExtractor.from_hparams(folder, crop="lrs2").crop == "lrs2"
    # a folder written before the section existed: the defaults
    del config["inference"]
    yaml.safe_dump(config, open(tmp_path / "m" / "model.yaml", "w"))
    assert load_inference_config(folder)["crop"] == "voxceleb2"
    config["inference"] = {"crop": "voxceleb2", "fps": 30}
    yaml.safe_dump(config, open(tmp_path / "m" / "model.yaml", "w"))
    with pytest.raises(ModelLoadError, match="fps"):
        load_inference_config(folder)
    with pytest.raises(ValueError, match="unknown crop"):
        AVSEExtractor(model, crop="mouth")


def test_training_records_the_shards_crop_in_model_yaml(tmp_path):
    import json

    from avse.experiment import training_inference_config

    split = tmp_path / "train"
    split.mkdir()
    (split / "meta.json").write_text(json.dumps({"count": 1, "num_shards": 1, "crop": "landmarks",
                                                 "format_version": 1,
                                                 "shard_pattern": "shard-%06d.tar"}))
    (split / "shard-000000.tar").write_bytes(b"")
    assert training_inference_config({"train_shards": str(split)})["crop"] == "landmarks"
    assert "crop" not in training_inference_config({"train_shards": str(tmp_path / "none")})
