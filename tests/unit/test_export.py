"""avse-export: the offline forward in ONNX and .pt2, run at lengths other than the example's."""
import copy
import os

import pytest
import torch

from avse import export as E
from avse.export_rnn import ScanRNN, swap_rnns
from avse.models import AVSEModel, load_model
from tests.model_helpers import tiny_model_folder

LENGTHS = ((1.2, 1), (3.6, 3))  # seconds, batch: neither is the 2 s, batch-2 export example
TOL = 1e-4


def check(model, path, fmt, relative=False):
    """The exported file's estimate equals the model's at every LENGTHS (shape and values):
    within TOL, or within TOL of the output's peak when ``relative`` (deeper graphs whose
    float32 sums are ordered differently by the ONNX runtime)."""
    runner = E.onnx_session(path) if fmt == "onnx" else torch.export.load(path)
    for seconds, batch in LENGTHS:
        mixture, visual = E.example_inputs(model, seconds, batch=batch, seed=5)
        with torch.no_grad():
            ref = model(mixture, visual).estimate
        got = E.run_onnx(runner, mixture, visual) if fmt == "onnx" \
            else E.run_pt2(runner, mixture, visual)
        assert got.shape == ref.shape == (batch, int(seconds * 25) * 640)
        assert torch.isfinite(got).all()
        scale = max(1.0, ref.abs().max().item()) if relative else 1.0
        assert (got - ref).abs().max().item() < TOL * scale


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tiny_model_folder(str(tmp_path_factory.mktemp("demo")))
    return folder, load_model(folder)


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_demo_model_round_trip(demo, tmp_path, fmt):
    """conv / cnn (uint8 ROIs) / tcn through the CLI; the seed-5 input has encoder frames
    whose channels are all zero (the ONNX optimiser's dropped eps made those NaN)."""
    folder, model = demo
    out = str(tmp_path / f"m.{fmt}")
    assert E.main(["--model", folder, "--format", fmt, "--out", out]) == 0
    check(model, out, fmt)


def test_embedding_model_with_activity_head_onnx(tmp_path):
    """[B, Tv, 512] float input; the activity head (not part of the estimate) is left out."""
    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 40},
                      {"type": "embedding", "out_dim": 16, "hidden": 32, "num_blocks": 1},
                      {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 2,
                       "num_repeats": 1}, fusion="concat",
                      activity_head={"hidden": 8}).eval()
    mixture, visual = E.example_inputs(model, 1.0)
    assert visual.dtype == torch.float32 and visual.shape == (2, 25, 512)
    out = E.export_model(model, "onnx", str(tmp_path / "m.onnx"))
    check(model, out, "onnx")
    assert model.activity_head is not None  # the model itself is left as it was


def test_muse_default_upsampling_onnx(tmp_path):
    """MuSE with its default visual_upsample (round(L / Tv), derived from the lengths) keeps
    its length axes dynamic; the gathered interpolation the exported graph computes equals
    F.interpolate's to float rounding, also at ratios that are not 32 and lengths that pad
    or crop."""
    from avse.models.separators.muse import _upsample_gathered, upsample_visual

    gen = torch.Generator().manual_seed(0)
    for frames, factor, length in ((7, 3, 20), (7, 3, 25), (50, 32, 1599), (2, 1, 2)):
        visual = torch.randn(2, 3, frames, generator=gen)
        assert torch.allclose(_upsample_gathered(visual, length, torch.tensor(factor)),
                              upsample_visual(visual, length, factor), atol=1e-6)
    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 40},
                      {"type": "embedding", "out_dim": 16, "hidden": 32, "num_blocks": 1},
                      {"type": "muse", "bottleneck": 8, "hidden": 16, "num_blocks": 1,
                       "num_repeats": 1, "num_speakers": 5, "speaker_hidden": 8,
                       "speaker_blocks": 1}, fusion="concat").eval()
    assert model.separator.visual_upsample is None
    check(model, E.export_model(model, "onnx", str(tmp_path / "m.onnx")), "onnx")


@pytest.mark.parametrize("n_fft,hop,win", [(256, 128, 256), (64, 16, 50), (512, 128, 400)])
def test_overlap_add_istft_equals_torch_istft(n_fft, hop, win):
    """The exported graph's inverse STFT equals STFTDecoder's torch.istft (within 1e-5), also
    trimming to a shorter length, and inverts the STFT encoder."""
    from avse.models.audio_encoders import STFTEncoder
    from avse.models.decoders import STFTDecoder

    gen = torch.Generator().manual_seed(0)
    ref, alt = STFTDecoder(n_fft, hop, win), E.OverlapAddISTFT(n_fft, hop, win)
    for length in (1000, 1280, 3201):
        feats = torch.randn(2, n_fft + 2, length // hop + 1, generator=gen)
        for out_len in (length, length - 7):
            assert (alt(feats, out_len) - ref(feats, out_len)).abs().max() < 1e-5
        wav = torch.randn(2, length, generator=gen)
        assert (alt(STFTEncoder(n_fft, hop, win)(wav), length) - wav).abs().max() < 1e-5


def test_tfgridnet_onnx(tmp_path):
    """stft / tfgridnet: torch.istft swapped for OverlapAddISTFT in the exported graph, the
    BLSTMs as scans over a static (33 frequency steps) and a dynamic length; the padding of
    L = 5 Tv + 1 frames to whole steps of 4 stays symbolic; the model keeps its decoder."""
    from avse.models.decoders import STFTDecoder

    torch.manual_seed(0)
    model = AVSEModel({"type": "stft", "n_fft": 256, "hop": 128, "win": 256},
                      {"type": "embedding", "out_dim": 8, "hidden": 16, "num_blocks": 1},
                      {"type": "tfgridnet", "emb_dim": 8, "hidden": 8, "num_blocks": 1,
                       "kernel": 4, "stride": 4, "num_heads": 2, "qk_dim": 16},
                      fusion="film").eval()
    check(model, E.export_model(model, "onnx", str(tmp_path / "m.onnx")), "onnx")
    assert type(model.decoder) is STFTDecoder


class Recurrent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.per_step = torch.nn.LSTM(1, 2, batch_first=True)  # over a static length (6)
        self.lstm = torch.nn.LSTM(12, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(10, 4, batch_first=False)

    def forward(self, x):
        b, t, d = x.shape
        y, _ = self.per_step(x.reshape(b * t, d, 1))  # each step's 6 features as a sequence
        y, _ = self.lstm(y.reshape(b, t, 2 * d))
        z, _ = self.gru(y.transpose(0, 1))
        return z.transpose(0, 1)


def test_recurrent_layers_keep_a_dynamic_time_axis(tmp_path):
    """nn.LSTM / nn.GRU as scans: exported at T=20, run at T=7, 45 and 6 from .pt2 and ONNX
    (nn.LSTM itself would be frozen at T=20 by torch.export); a scan over a static length
    (6, as a dual-path model's chunk) before the dynamic ones does not tie T to the example
    (torch's scan() wrapper did, through its dynamo cache: T != 6)."""
    import onnxruntime as ort
    from torch.export import Dim

    model = Recurrent().eval()
    swapped, count = swap_rnns(model)
    assert count == 3 and isinstance(swapped.lstm, ScanRNN) and type(model.lstm) is torch.nn.LSTM
    program = torch.export.export(swapped, (torch.randn(2, 20, 6),), strict=False,
                                  dynamic_shapes={"x": {0: Dim("b"), 1: Dim("t", min=3)}})
    torch.export.save(program, str(tmp_path / "r.pt2"))
    torch.onnx.export(program, dynamo=True, optimize=False).save(str(tmp_path / "r.onnx"))
    loaded = torch.export.load(str(tmp_path / "r.pt2")).module()
    session = ort.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"])
    for batch, steps in ((1, 7), (3, 45), (2, 6)):
        x = torch.randn(batch, steps, 6)
        with torch.no_grad():
            ref = model(x)
            assert (swapped(x) - ref).abs().max() < 1e-5
            assert (loaded(x) - ref).abs().max() < TOL
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert (torch.from_numpy(got) - ref).abs().max() < TOL


def test_unexportable_model_exits_2_with_one_line(demo, tmp_path, capsys, monkeypatch):
    """A separator whose control flow depends on the data does not export: exit 2, one line
    naming the exporter's reason, no file."""
    folder, model = demo
    model = copy.deepcopy(model)
    forward = model.separator.forward

    def data_dependent(feats, visual, **kwargs):
        return forward(feats if feats.sum() > 0 else -feats, visual, **kwargs)

    model.separator.forward = data_dependent
    monkeypatch.setattr("avse.models.io.load_model", lambda *args, **kwargs: model)
    out = str(tmp_path / "m.pt2")
    assert E.main(["--model", folder, "--format", "pt2", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("avse-export: error: torch.export failed")
    assert "data-dependent" in err.lower() or "data dependent" in err.lower()
    assert not os.path.exists(out)


def test_onnx_graph_with_nan_is_refused(demo, tmp_path):
    """An operator the ONNX translation computes differently (attention with a negative
    scale: onnxscript scales q and k by sqrt(scale)) gives NaN: refused, no file left."""
    import torch.nn.functional as F

    _, model = demo
    model = copy.deepcopy(model)
    forward = model.separator.forward

    def negative_attention(feats, visual, **kwargs):
        q = feats.transpose(1, 2).unsqueeze(1)  # [B, 1, L, N]
        att = F.scaled_dot_product_attention(q, q, q, scale=-0.5).squeeze(1).transpose(1, 2)
        return forward(feats + 0 * att, visual, **kwargs)

    model.separator.forward = negative_attention
    out = str(tmp_path / "m.onnx")
    with pytest.raises(E.ExportError, match="NaN"):
        E.export_model(model, "onnx", out, seconds=0.4)
    assert not os.path.exists(out)



DUAL_PATH = {  # tiny dual-path separators (chunking by unfold / gather; SEANet's negated query)
    "dprnn": {"type": "dprnn", "bottleneck": 8, "hidden": 8, "chunk_size": 20, "num_layers": 2},
    "seanet": {"type": "seanet", "bottleneck": 8, "hidden": 8, "chunk_size": 20,
               "num_layers": 2},
    "avsep": {"type": "avsep", "d_model": 16, "num_heads": 2, "d_ffn": 32, "intra_layers": 1,
              "inter_layers": 1, "num_blocks": 1, "chunk_size": 20},
}


@pytest.mark.parametrize("arch", sorted(DUAL_PATH))
def test_dual_path_models_onnx(arch, tmp_path):
    torch.manual_seed(0)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 16},
                      {"type": "embedding", "out_dim": 16, "hidden": 16, "num_blocks": 1},
                      DUAL_PATH[arch], fusion=None if arch == "avsep" else "concat").eval()
    path = E.export_model(model, "onnx", str(tmp_path / f"{arch}.onnx"))
    check(model, path, "onnx", relative=True)
