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
