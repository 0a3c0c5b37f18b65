"""AV-DPRNN: size, the reference chunking, the yaml, and reference checkpoint conversion."""
import os

import pytest
import torch
import torch.nn.functional as F

from avse.models import AVSEModel
from avse.models.reference.dprnn import (convert_reference_state_dict, reference_config,
                                         to_reference_state_dict)
from avse.models.separators.dprnn import DPRNNSeparator
from avse.models.separators.dual_path import reference_num_chunks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF_PARAMS = 4_119_302  # the reference AV-DPRNN (TaoRuijie/SEANet model/dprnn.py): 4.12 M


def _reference_table():
    """(key, shape) of the reference trainer's state dict at the published size
    (dprnn(256, 40, 64, 128, 100, 6) under ``model.``), in the reference's order."""
    table = [("model.encoder.conv1d_U.weight", (256, 1, 40)),
             ("model.separator.layer_norm.weight", (256,)),
             ("model.separator.layer_norm.bias", (256,)),
             ("model.separator.bottleneck_conv1x1.weight", (64, 256, 1)),
             ("model.separator.v_ds.weight", (256, 512))]
    for i in range(5):  # VisualConv1D(V=256, H=512): ReLU, gLN, 1x1, ReLU, gLN, dw, PReLU, gLN, 1x1
        v = f"model.separator.v_conv.{i}.net."
        table += [(v + "1.gamma", (1, 256, 1)), (v + "1.beta", (1, 256, 1)),
                  (v + "2.weight", (512, 256, 1)),
                  (v + "4.gamma", (1, 512, 1)), (v + "4.beta", (1, 512, 1)),
                  (v + "5.weight", (512, 1, 3)), (v + "6.weight", (1,)),
                  (v + "7.gamma", (1, 512, 1)), (v + "7.beta", (1, 512, 1)),
                  (v + "8.weight", (256, 512, 1))]
    table += [("model.separator.av_conv.weight", (64, 320, 1))]
    for i in range(6):
        for path in ("intra", "inter"):
            r = f"model.separator.rnn_s.{i}.{path}_"
            for sfx in ("", "_reverse"):
                table += [(f"{r}rnn.weight_ih_l0{sfx}", (512, 64)),
                          (f"{r}rnn.weight_hh_l0{sfx}", (512, 128)),
                          (f"{r}rnn.bias_ih_l0{sfx}", (512,)),
                          (f"{r}rnn.bias_hh_l0{sfx}", (512,))]
            table += [(f"{r}linear.weight", (64, 256)), (f"{r}linear.bias", (64,)),
                      (f"{r}norm.weight", (64,)), (f"{r}norm.bias", (64,))]
    table += [("model.separator.adder_s.prelu.weight", (1,)),
              ("model.separator.adder_s.mask_conv1x1.weight", (256, 64, 1)),
              ("model.decoder_s.basis_signals.weight", (40, 256))]
    return table


REF_TABLE = _reference_table()


def reference_state(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in REF_TABLE}


@pytest.fixture(scope="module")
def model():
    return AVSEModel(**reference_config())


def test_parameter_count(model):
    total = sum(p.numel() for p in model.parameters())
    assert total == REF_PARAMS == sum(torch.Size(s).numel() for _, s in REF_TABLE)
    assert round(total / 1e6, 2) == 4.12
    sep = model.separator
    assert len(sep.blocks) == 6 and sep.chunk_size == 100 and sep.padding == "reference"
    assert model.separator.fusion.align == "linear"


@pytest.mark.parametrize("length", [1, 9, 10, 11, 15, 19, 20, 21, 95, 100, 3199])
def test_reference_chunking(length):
    """K/2 zeros before, gap + K/2 after, hop K/2 (the reference's _Segmentation)."""
    sep = DPRNNSeparator(in_dim=4, visual_dim=4, bottleneck=4, hidden=4, chunk_size=20,
                         num_layers=1)
    k, p = 20, 10
    gap = k - (p + length % k) % k
    x = torch.randn(2, length, 3)
    expect = F.pad(x, (0, 0, p, gap + p)).unfold(1, k, p).transpose(2, 3)  # [B, S, K, 3]
    chunks = sep._chunk(x)
    assert chunks.shape == expect.shape and torch.equal(chunks, expect)
    assert chunks.shape[1] == sep.num_chunks(length) == reference_num_chunks(length, k)
    torch.testing.assert_close(sep._overlap_add(chunks, length), 2 * x)
    minimal = DPRNNSeparator(in_dim=4, visual_dim=4, bottleneck=4, hidden=4, chunk_size=20,
                             num_layers=1, padding="minimal")
    assert minimal._chunk(x).shape[1] == minimal.num_chunks(length) == -(-length // p) + 1


def test_four_seconds_give_66_chunks(model):
    assert model.audio_encoder.num_frames(64000) == 3199
    assert model.separator.num_chunks(3199) == 66
    with pytest.raises(ValueError, match="padding"):
        DPRNNSeparator(in_dim=4, visual_dim=4, padding="same")


@pytest.mark.parametrize("name", ["dprnn", "dprnn_roi"])
def test_yaml_model_is_the_reference(name, tmp_path):
    """The recipes build the reference separator: linear visual upsampling, its chunking."""
    from hyperpyyaml import load_hyperpyyaml

    with open(os.path.join(REPO, "egs", "voxceleb2", "hparams", f"{name}.yaml")) as f:
        hp = load_hyperpyyaml(f, {"data_folder": str(tmp_path / "data"),
                                  "output_folder": str(tmp_path / "exp")})
    model = hp["model"]
    assert model.separator.fusion.align == "linear" and model.separator.padding == "reference"
    if name == "dprnn":
        ref = reference_config()
        assert {k: model.config[k] for k in ref} == ref
        assert sum(p.numel() for p in model.parameters()) == REF_PARAMS


def test_reference_state_dict_round_trip(model):
    ref = reference_state()
    ours = convert_reference_state_dict(ref)
    model.load_state_dict(ours, strict=True)
    back = to_reference_state_dict(model.state_dict())
    assert {k: tuple(v.shape) for k, v in back.items()} == dict(REF_TABLE)
    assert len(back) == len(REF_TABLE) == 203
    for k, v in ref.items():
        assert torch.equal(back[k], v), k
    assert all(not any(t.data_ptr() == r.data_ptr() for r in ref.values()) for t in ours.values())


def test_reference_state_dict_errors(model):
    ref = reference_state()
    renamed = dict(ref)
    renamed["model.separator.rnn_s.3.intra_lin.weight"] = renamed.pop(
        "model.separator.rnn_s.3.intra_linear.weight")
    with pytest.raises(ValueError, match=r"missing keys: model\.separator\.rnn_s\.3\.intra_linear"
                                         r"\.weight.*unexpected keys: model\.separator\.rnn_s\.3"
                                         r"\.intra_lin\.weight"):
        convert_reference_state_dict(renamed)
    shaped = dict(ref, **{"model.separator.av_conv.weight": torch.zeros(64, 300, 1)})
    with pytest.raises(ValueError, match=r"wrong shapes: model\.separator\.av_conv\.weight"):
        convert_reference_state_dict(shaped)
    unprefixed = {k[len("model."):]: v for k, v in ref.items()}
    with pytest.raises(ValueError, match="must start with 'model.'"):
        convert_reference_state_dict(unprefixed)
    seanet = AVSEModel(**{**reference_config(), "separator": {"type": "seanet",
                                                              "num_layers": 2}})
    with pytest.raises(ValueError, match="speech_blocks"):
        to_reference_state_dict(seanet.state_dict())
