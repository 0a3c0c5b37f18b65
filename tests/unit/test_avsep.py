"""AV-Sepformer separator (``avsep``): size, shapes, train/eval, layers against torch's own
transformer modules, chunking, and the reference checkpoint conversion.

The equality of the whole model with the reference implementation (SEANet repository,
``model/avsep.py``) was measured outside the test suite (the reference code is not part of
this repository); see the module docstring of :mod:`avse.models.separators.avsep`.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avse.models import AVSEModel
from avse.models.reference import avsep as R
from avse.models.separators import avsep as A

SMALL_SEP = {"type": "avsep", "d_model": 16, "num_heads": 2, "d_ffn": 24, "intra_layers": 1,
             "inter_layers": 2, "num_blocks": 2, "chunk_size": 10, "max_len": 40}


def small_model(**sep_kwargs):
    torch.manual_seed(0)
    return AVSEModel({"type": "conv", "out_channels": 12, "kernel_size": 16},
                     {"type": "embedding", "out_dim": 16, "hidden": None, "num_blocks": 1,
                      "norm": "bn"},
                     {**SMALL_SEP, **sep_kwargs}, fusion=None)


def inputs(batch=2, seconds=0.4):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(batch, int(16000 * seconds), generator=gen),
            torch.randn(batch, int(25 * seconds), 512, generator=gen))


# ---------------------------------------------------------------- size
def test_reference_parameter_count():
    """21.73 M as the reference trainer prints it (frozen sinusoid tables included)."""
    with torch.device("meta"):
        model = AVSEModel(**R.reference_config())
    counts = {slot: sum(p.numel() for p in getattr(model, slot).parameters())
              for slot in ("audio_encoder", "visual_encoder", "separator", "decoder")}
    total = sum(counts.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"AV-Sepformer: {total / 1e6:.3f} M parameters ({trainable / 1e6:.3f} M trainable) "
          f"{counts}")
    assert abs(total / 1e6 - 21.73) < 0.005, total
    assert total == 21_734_022  # the reference's exact count
    # 2 blocks x (5000 x 256 intra encoding + 64 frequencies) are frozen, as in the reference
    assert total - trainable == 2 * (5000 * 256 + 64)
    sep = model.separator
    assert len(sep.blocks) == 2 and sep.chunk_size == 160 and sep.fusion is None
    assert len(sep.blocks[0].intra) == 5 and len(sep.blocks[0].inter) == 5  # + 1 cross layer
    assert model.audio_encoder.stride == 8


# ---------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("length", [6400, 6401, 5003])
def test_forward_backward_shapes(length):
    model = small_model()
    mix, emb = inputs()
    mix = mix[:, :length]
    out = model(mix, emb, return_intermediate=True)
    assert out.estimate.shape == mix.shape and not out.intermediate
    assert torch.isfinite(out.estimate).all()
    out.estimate.square().mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:  # the frozen encoding tables
            assert p.grad is None and name.rsplit(".", 1)[-1] in ("inv_freq", "intra_pe"), name


def test_separator_mask_shape_and_activation():
    sep = small_model().separator
    feats, visual = torch.rand(2, 12, 57), torch.randn(2, 16, 3)
    with torch.no_grad():
        masks = sep(feats, visual, return_intermediate=True).masks
    assert len(masks) == 1 and masks[0].shape == feats.shape and (masks[0] >= 0).all()
    sig = small_model(mask_act="sigmoid").separator
    with torch.no_grad():
        m = sig(feats, visual).masks[-1]
    assert ((m > 0) & (m < 1)).all()


def test_eval_equals_train_without_dropout():
    """With dropout=pos_dropout=0 the separator is deterministic: train == eval.

    The visual front has BatchNorm (batch statistics in train mode), so in the whole-model
    comparison it stays in eval mode while the rest is in train mode.
    """
    model = small_model(dropout=0.0, pos_dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    mix, emb = inputs()
    with torch.no_grad():
        model.eval()
        ref = model(mix, emb).estimate
        model.train()
        model.visual_encoder.eval()
        train = model(mix, emb).estimate
    torch.testing.assert_close(train, ref, rtol=1e-5, atol=1e-6)
    # the default pos_dropout (0.1, reference) does act in training only
    model = small_model()
    with torch.no_grad():
        a = model.eval()(mix, emb).estimate
        b = model.eval()(mix, emb).estimate
        model.train()
        model.visual_encoder.eval()
        c = model(mix, emb).estimate
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_extra_fusion_at_the_bottleneck():
    model = small_model()
    assert model.separator.fusion is None
    torch.manual_seed(0)
    fused = AVSEModel({"type": "conv", "out_channels": 12, "kernel_size": 16},
                      {"type": "embedding", "out_dim": 16, "hidden": None, "num_blocks": 1},
                      SMALL_SEP, fusion={"type": "concat", "out_dim": 8}).eval()
    assert fused.separator.fusion.out_dim == 8 and fused.separator.fusion_proj is not None
    mix, emb = inputs()
    with torch.no_grad():
        assert fused(mix, emb).estimate.shape == mix.shape


# ---------------------------------------------------------------- layers vs torch modules
def test_transformer_layer_equals_torch_encoder_layer():
    torch.manual_seed(0)
    ours = A.TransformerLayer(16, 4, 24).eval()
    theirs = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, norm_first=True,
                                        batch_first=True).eval()
    ref = R.to_reference_state_dict(
        {f"separator.blocks.0.intra.0.{k}": v for k, v in ours.state_dict().items()}, prefix="")
    theirs.load_state_dict({k.split("layers.0.", 1)[1]: v for k, v in ref.items()})
    x = torch.randn(3, 11, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_cross_layer_equals_multihead_attention():
    """y + v + MHA(q=LN1(v), k=v=LN1(y)) + FFN(LN2(.)), with torch's MultiheadAttention."""
    torch.manual_seed(0)
    layer = A.CrossTransformerLayer(16, 4, 24).eval()
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat((layer.attn.q.weight, layer.attn.kv.weight)))
        mha.in_proj_bias.copy_(torch.cat((layer.attn.q.bias, layer.attn.kv.bias)))
        mha.out_proj.load_state_dict(layer.attn.out.state_dict())
    b, g, s = 2, 5, 7
    y, v = torch.randn(b, g, s, 16), torch.randn(b, s, 16)
    with torch.no_grad():
        yy = y.reshape(b * g, s, 16)
        vv = v.unsqueeze(1).expand(b, g, s, 16).reshape(b * g, s, 16)  # the reference repeats v
        x = yy + vv + mha(layer.norm1(vv), layer.norm1(yy), layer.norm1(yy),
                          need_weights=False)[0]
        x = x + layer.ff2(F.relu(layer.ff1(layer.norm2(x))))
        torch.testing.assert_close(layer(y, v).reshape(b * g, s, 16), x, rtol=1e-5, atol=1e-5)


def test_positional_encodings():
    block = A.DualPathTransformerBlock(256, 8, 32, 0, 1)
    pe = block.intra_pe  # [5000, 256]: sin at even, cos at odd channels
    pos, i = 37, 5
    arg = torch.tensor(pos / 10000 ** (2 * i / 256))
    torch.testing.assert_close(pe[pos, 2 * i], torch.sin(arg))
    torch.testing.assert_close(pe[pos, 2 * i + 1], torch.cos(arg))
    ek, es = block._pos2d(160, 102, torch.zeros(1, 256))
    assert ek.shape == (160, 128) and es.shape == (102, 128)
    w = 1 / 10000 ** (2 * i / 128)
    torch.testing.assert_close(ek[9, 2 * i + 1], torch.cos(torch.tensor(9 * w)))
    torch.testing.assert_close(es[60, 2 * i], torch.sin(torch.tensor(60 * w)))


# ---------------------------------------------------------------- chunking / visual alignment
@pytest.mark.parametrize("length", [1, 79, 80, 81, 159, 160, 161, 240, 3999, 7999, 8000])
def test_chunking_matches_the_reference_padding(length):
    sep = A.AVSepformerSeparator(in_dim=4, visual_dim=4, d_model=4, num_heads=1, d_ffn=4,
                                 intra_layers=0, inter_layers=1, num_blocks=1)
    k, p = 160, 80
    gap = k - (p + length % k) % k  # the reference's padding
    x = torch.randn(2, length, 3)
    padded = F.pad(x, (0, 0, p, gap + p))
    expect = padded.unfold(1, k, p).transpose(2, 3)  # [B, S, K, 3], hop K/2
    chunks = sep._chunk(x)
    assert chunks.shape == expect.shape == (2, (length + gap) // p + 1, k, 3)
    assert torch.equal(chunks, expect)
    torch.testing.assert_close(sep._dp_overlap_add(chunks, length), 2 * x)


def test_four_seconds_give_one_chunk_per_video_frame():
    sep = A.AVSepformerSeparator(in_dim=4, visual_dim=6, d_model=4, num_heads=1, d_ffn=4,
                                 intra_layers=0, inter_layers=1, num_blocks=1)
    chunks = sep._chunk(torch.zeros(1, 7999, 4))  # 64000 samples, kernel 16, hop 8
    assert chunks.shape[1] == 102
    visual = torch.randn(1, 6, 100)
    v = sep._visual_chunks(visual, 102)
    proj = sep.visual_proj(visual.transpose(1, 2))
    assert torch.equal(v[:, :100], proj) and torch.equal(v[:, 100], proj[:, -1])
    assert torch.equal(sep._visual_chunks(visual, 90), proj[:, :90])


# ---------------------------------------------------------------- reference checkpoints
def reference_layout():
    """(key, shape) of the reference trainer's state_dict (SEANet ``avsep()``)."""
    d, f, n = 256, 1024, 256
    layer = {"self_attn.in_proj_weight": (3 * d, d), "self_attn.in_proj_bias": (3 * d,),
             "self_attn.out_proj.weight": (d, d), "self_attn.out_proj.bias": (d,),
             "linear1.weight": (f, d), "linear1.bias": (f,), "linear2.weight": (d, f),
             "linear2.bias": (d,), "norm1.weight": (d,), "norm1.bias": (d,),
             "norm2.weight": (d,), "norm2.bias": (d,)}
    keys = {"AudioEncoder.conv1d.weight": (n, 1, 16), "AudioDecoder.weight": (n, 1, 16),
            "Separator.norm.weight": (n,), "Separator.norm.bias": (n,),
            "Separator.conv1d.weight": (d, n, 1),
            "Separator.visual_conv.5.weight": (d, 512, 1), "Separator.visual_conv.5.bias": (d,),
            "Separator.conv2d.weight": (d, d, 1, 1), "Separator.conv2d.bias": (d,),
            "Separator.end_conv1x1.weight": (n, d, 1), "Separator.prelu.weight": (1,),
            "Separator.output.0.weight": (d, d, 1), "Separator.output.0.bias": (d,),
            "Separator.output_gate.0.weight": (d, d, 1), "Separator.output_gate.0.bias": (d,)}
    for i in range(5):
        net = f"Separator.visual_conv.{i}.net."
        for j in (1, 4):
            keys.update({net + f"{j}.{p}": (512,) for p in
                         ("weight", "bias", "running_mean", "running_var")})
            keys[net + f"{j}.num_batches_tracked"] = ()
        keys.update({net + "2.weight": (512, 1, 3), net + "3.weight": (1,),
                     net + "5.weight": (512, 512, 1)})
    for b in range(2):
        blk = f"Separator.dual_mdl.{b}."
        keys.update({blk + "pos2d.penc.inv_freq": (64,),
                     blk + "intra_mdl.pos_enc.pe": (5000, 1, d)})
        keys.update({f"{blk}{norm}_norm.{p}": (d,) for norm in ("intra", "inter")
                     for p in ("weight", "bias")})
        for prefix in ([f"intra_mdl.mdl.layers.{i}." for i in range(5)]
                       + ["inter_mdl.mdl.cross_attention_layer."]
                       + [f"inter_mdl.mdl.transformer_layers.{i}." for i in range(5)]):
            keys.update({blk + prefix + k: s for k, s in layer.items()})
    return {"model." + k: s for k, s in keys.items()}


@pytest.fixture(scope="module")
def reference_state():
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in reference_layout().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 1000, shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


def test_reference_layout_is_ours():
    with torch.device("meta"):
        model = AVSEModel(**R.reference_config())
    ours = R.to_reference_state_dict(model.state_dict())
    assert {k: tuple(v.shape) for k, v in ours.items()} == reference_layout()


def test_conversion_round_trip(reference_state):
    converted = R.convert_reference_state_dict(reference_state)
    with torch.device("meta"):
        layout = AVSEModel(**R.reference_config()).state_dict()
    assert set(converted) == set(layout)
    assert all(converted[k].shape == layout[k].shape for k in layout)
    # packed in_proj of the cross-attention layer -> q | kv; 1x1 convs -> linears
    ref = reference_state["model.Separator.dual_mdl.1.inter_mdl.mdl.cross_attention_layer."
                          "self_attn.in_proj_weight"]
    assert torch.equal(converted["separator.blocks.1.cross.attn.q.weight"], ref[:256])
    assert torch.equal(converted["separator.blocks.1.cross.attn.kv.weight"], ref[256:])
    assert torch.equal(converted["separator.blocks.0.intra.3.attn.qkv.weight"],
                       reference_state["model.Separator.dual_mdl.0.intra_mdl.mdl.layers.3."
                                       "self_attn.in_proj_weight"])
    assert torch.equal(converted["separator.visual_proj.weight"],
                       reference_state["model.Separator.visual_conv.5.weight"][..., 0])
    back = R.to_reference_state_dict(converted)
    assert set(back) == set(reference_state)
    for key, value in reference_state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    # bare Cross_Sepformer keys (no "model.") are accepted too
    bare = {k[len("model."):]: v for k, v in reference_state.items()}
    assert R.convert_reference_state_dict(bare).keys() == converted.keys()


def test_converted_state_loads_strictly(reference_state):
    model = AVSEModel(**R.reference_config())
    model.load_state_dict(R.convert_reference_state_dict(reference_state, model=model))
    pe = reference_state["model.Separator.dual_mdl.0.intra_mdl.pos_enc.pe"]
    torch.testing.assert_close(model.separator.blocks[0].intra_pe, pe[:, 0])


def test_conversion_names_bad_keys(reference_state):
    key = "model.Separator.dual_mdl.0.inter_mdl.mdl.transformer_layers.2.linear1.weight"
    renamed = dict(reference_state)
    renamed[key.replace("linear1", "linear3")] = renamed.pop(key)
    with pytest.raises(ValueError, match="missing keys") as err:
        R.convert_reference_state_dict(renamed)
    assert key[len("model."):] in str(err.value)
    assert "linear3" in str(err.value) and "unexpected keys" in str(err.value)

    extra = {**reference_state, "model.Separator.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="unexpected keys: Separator.extra.weight"):
        R.convert_reference_state_dict(extra)

    missing = dict(reference_state)
    del missing["model.Separator.prelu.weight"]
    with pytest.raises(ValueError, match="missing keys: Separator.prelu.weight"):
        R.convert_reference_state_dict(missing)

    shaped = {**reference_state, "model.Separator.conv2d.weight": torch.zeros(256, 256, 1)}
    with pytest.raises(ValueError, match=r"wrong shapes: Separator.conv2d.weight \(256, 256, 1\)"):
        R.convert_reference_state_dict(shaped)

    # a model with parts the reference lacks cannot be exported
    with pytest.raises(ValueError, match="separator.fusion"):
        R.to_reference_state_dict({"separator.fusion.audio_proj.weight": torch.zeros(1)})
