"""AV-TFGridNet separator: shapes, gradients, determinism, mapping output on the STFT."""
import pytest
import torch

from avse.models import registry
from avse.models import AVSEModel
from avse.models.base import VisualEncoder
from avse.models.separators.tfgridnet import GridNetBlock, TFGridNetSeparator

SMALL = {"emb_dim": 8, "hidden": 8, "num_blocks": 2, "num_heads": 2, "qk_dim": 16}
STFT = {"type": "stft", "n_fft": 64, "hop": 32, "win": 64}  # F = 33


class TinyVisual(VisualEncoder):
    """Embedding ``[B, Tv, 512]`` -> ``[B, 6, Tv]`` by one linear map."""

    input_kind = "emb"

    def __init__(self):
        super().__init__()
        self.out_dim = 6
        self.proj = torch.nn.Linear(512, 6)

    def forward(self, emb):
        return self.proj(emb).transpose(1, 2)


def model(fusion="film", **kwargs):
    torch.manual_seed(0)
    return AVSEModel(STFT, TinyVisual(), {"type": "tfgridnet", **SMALL, **kwargs}, fusion=fusion)


def test_registered_as_a_mapping_separator():
    assert registry.get("separator", "tfgridnet") is TFGridNetSeparator
    assert TFGridNetSeparator.output_type == "mapping"


@pytest.mark.parametrize("kernel,stride", [(4, 1), (4, 4), (1, 1), (3, 2)])
def test_separator_shapes(kernel, stride):
    sep = TFGridNetSeparator(in_dim=2 * 33, visual_dim=6, kernel=kernel, stride=stride, **SMALL)
    for length in (1, 2, 7, 30):
        out = sep(torch.randn(2, 66, length), torch.randn(2, 6, 3))
        assert len(out.masks) == 1 and out.masks[0].shape == (2, 66, length)
        assert torch.isfinite(out.masks[0]).all()


def test_block_keeps_shape_for_any_size():
    block = GridNetBlock(8, n_freq=9, hidden=8, kernel=4, stride=3, num_heads=2, qk_dim=16)
    for length in (1, 4, 5, 11):
        assert block(torch.randn(2, 8, length, 9)).shape == (2, 8, length, 9)


def test_odd_in_dim_and_bad_heads_rejected():
    with pytest.raises(ValueError, match="2F"):
        TFGridNetSeparator(in_dim=65, visual_dim=6, **SMALL)
    with pytest.raises(ValueError, match="multiple"):
        TFGridNetSeparator(in_dim=66, visual_dim=6, **{**SMALL, "num_heads": 3})


@pytest.mark.parametrize("fusion", ["film", "concat", "cross_attention",
                                    {"type": "concat", "out_dim": 5}])
def test_backward_all_grads_finite(fusion):
    m = model(fusion=fusion)
    mix, emb = torch.randn(2, 4000), torch.randn(2, 7, 512)
    m(mix, emb).estimate.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_eval_equals_train_and_intermediates():
    m = model(intermediate_heads=True)
    mix, emb = torch.randn(2, 3000), torch.randn(2, 5, 512)
    with torch.no_grad():
        train = m.train()(mix, emb, return_intermediate=True)
        ev = m.eval()(mix, emb)
    torch.testing.assert_close(train.estimate, ev.estimate)
    assert len(train.intermediate) == SMALL["num_blocks"] - 1 and not ev.intermediate


@pytest.mark.parametrize("length", [16000, 16001, 12345, 401, 31])
def test_mapping_decoded_to_input_length(length):
    m = model().eval()
    with torch.no_grad():
        out = m(torch.randn(1, length), torch.randn(1, max(1, length // 640), 512))
    assert out.estimate.shape == (1, length) and torch.isfinite(out.estimate).all()


def test_output_is_the_mapping_not_a_mask():
    m = model().eval()
    mix, emb = torch.randn(1, 3200), torch.randn(1, 5, 512)
    with torch.no_grad():
        feats = m.audio_encoder(mix)
        mapped = m.separator(feats, m.visual_encoder(emb)).masks[-1]
        est = m(mix, emb).estimate
    torch.testing.assert_close(est, m.decoder(mapped, 3200))


def test_scale_equivariant_and_uses_the_visual_stream():
    m = model(fusion="concat").eval()
    mix, emb = torch.randn(1, 3200), torch.randn(1, 5, 512)
    with torch.no_grad():
        a = m(mix, emb).estimate
        b = m(3.0 * mix, emb).estimate
        c = m(mix, emb + torch.randn_like(emb)).estimate
    torch.testing.assert_close(b, 3.0 * a, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a, c)


def test_fuse_once():
    sep = model(fuse_each_block=False).separator
    assert len(sep.fusions) == 1
    sep = model().separator
    assert len(sep.fusions) == SMALL["num_blocks"]
