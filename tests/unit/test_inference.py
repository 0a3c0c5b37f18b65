"""AVSEExtractor: the precision option (bf16 autocast stays close to fp32; bad values fail
clearly), model.yaml's inference section, and gating with an activity head."""
import numpy as np
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


# ------------------------------------------------------------------------------ gating
LOUD_DB = -22.0  # the controlled head: a frame "speaks" when the normalised mixture is louder


def _head_model(seed: int = 0):
    """A small AVSEModel with a real activity head whose logits are controlled: +8 where the
    (peak-normalised) mixture's frame power is above LOUD_DB, -8 elsewhere."""
    from avse.models.activity import frame_log_power

    torch.manual_seed(seed)
    model = AVSEModel({"type": "conv", "out_channels": 16, "kernel_size": 32},
                      {"type": "cnn", "out_dim": 16},
                      {"type": "tcn", "bottleneck": 16, "hidden": 32, "num_blocks": 2,
                       "num_repeats": 1, "norm": "cln"}, fusion="concat",
                      activity_head={"hidden": 8})
    assert model.has_activity_head

    def forward(mixture, estimate, feats, est_feats, visual):
        power = frame_log_power(mixture, visual.shape[-1])
        return torch.where(power > LOUD_DB, 8.0, -8.0)

    model.activity_head.forward = forward
    return model.eval()


def _loud_quiet(pattern, seed=0):
    """``[(loud?, n_frames), ...]`` -> mixture [T] (std 0.2 loud, 0.02 quiet) and lips."""
    rng = np.random.default_rng(seed)
    env = np.concatenate([np.full(n * 640, 0.2 if loud else 0.02) for loud, n in pattern])
    mix = (env * rng.standard_normal(len(env))).astype(np.float32)
    lips = rng.integers(0, 255, (len(env) // 640, 88, 88), dtype=np.uint8)
    return mix, lips


def test_gate_attenuates_silent_frames_by_the_configured_db_and_leaves_speech_untouched():
    from avse.gating import Gate

    model = _head_model()
    mix, lips = _loud_quiet([(True, 20), (False, 30), (True, 25), (False, 25)])
    plain = AVSEExtractor(model)
    ref, prob = plain.extract(mix, lips, return_activity=True)  # no gate: nothing attenuated
    assert torch.equal(ref, plain.extract(mix, lips))  # the old return type, same values
    assert prob.shape == (100,) and torch.all((prob < 1e-3) | (prob > 1 - 1e-3))
    speaking = Gate().speaking(prob.numpy())
    np.testing.assert_array_equal(speaking, np.r_[np.ones(20), np.zeros(30), np.ones(25),
                                                  np.zeros(25)].astype(bool))
    for db in (30.0, 12.0):
        out = AVSEExtractor(model, gate=True, gate_db=db).extract(mix, lips).numpy()
        ref_np = ref.numpy()
        passed = Gate(0.5, db).passed(prob.numpy())
        assert passed.sum() == 20 + 5 + 2 + 25 + 5  # hangover 5 frames, 2 frames ahead
        keep = np.repeat(passed, 640)
        np.testing.assert_array_equal(out[keep], ref_np[keep])  # bit for bit
        # attenuated frames, away from the 20 ms ramps next to passed frames
        deep = ~np.repeat(widen_by_one(passed), 640)
        assert deep.sum() > 30 * 640
        np.testing.assert_allclose(out[deep], ref_np[deep] * 10 ** (-db / 20), rtol=1e-5,
                                   atol=1e-9)
        # the ramps: 20 ms (320 samples) at each of the 3 edges of the passed frames
        low = 10 ** (-db / 20)
        ramped = np.abs(out[~keep]) > np.abs(ref_np[~keep]) * low * 1.001 + 1e-9
        assert 3 * 318 <= ramped.sum() <= 3 * 320, ramped.sum()  # the last one at the floor
    # a threshold above the head's probabilities: everything is attenuated
    none = AVSEExtractor(model, gate=True, gate_threshold=0.9999999).extract(mix, lips).numpy()
    assert np.abs(none).max() < np.abs(ref.numpy()).max() * 10 ** (-29 / 20)


def widen_by_one(passed):
    """Frames within one frame of a passed frame (where a ramp may sit)."""
    from avse.gating import widen

    return widen(passed, 1, 1)


def test_batch_api_returns_the_activity_and_gates_each_row():
    model = _head_model()
    a, lips_a = _loud_quiet([(True, 25), (False, 25)], seed=1)
    b, lips_b = _loud_quiet([(False, 25), (True, 25)], seed=2)
    mix, lips = torch.from_numpy(np.stack([a, b])), torch.from_numpy(np.stack([lips_a, lips_b]))
    est, act = AVSEExtractor(model).extract_batch(mix, lips, return_activity=True)
    assert act.shape == (2, 50) and act.dtype == torch.float32
    assert bool((act[0, :25] > 0.99).all() and (act[0, 25:] < 0.01).all())
    assert bool((act[1, :25] < 0.01).all() and (act[1, 25:] > 0.99).all())
    gated = AVSEExtractor(model, gate=True).extract_batch(mix, lips)
    assert torch.equal(gated[0, : 30 * 640], est[0, : 30 * 640])  # row 0 speaks first
    assert torch.equal(gated[1, 23 * 640:], est[1, 23 * 640:])  # row 1 last (2 frames ahead)
    assert float(gated[0, 32 * 640:].abs().max()) < float(est[0, 32 * 640:].abs().max()) * 0.04
    one, act_one = AVSEExtractor(model).extract_array(a, lips_a, None, return_activity=True)
    assert one.shape == (50 * 640,) and act_one.shape == (50,)
    # without a head: None, and the plain return types are unchanged
    plain = AVSEExtractor(_model())
    x, y = torch.randn(1, 16000), torch.randn(1, 25, 512)
    out, none = plain.extract_batch(x, y, return_activity=True)
    assert none is None and torch.equal(out, plain.extract_batch(x, y))
    assert isinstance(plain.extract_array(x[0].numpy(), y[0].numpy(), 1.0), np.ndarray)


def test_gate_without_an_activity_head_is_a_clear_error_naming_the_folder(tmp_path, capsys):
    from avse.inference import main
    from avse.models.io import save_model

    with pytest.raises(ValueError, match="no activity head.*activity_head.*demo.yaml"):
        AVSEExtractor(_model(), gate=True)
    folder = save_model(_model(), str(tmp_path / "plain"))
    with pytest.raises(ValueError, match=f"{folder}.*without --gate"):
        AVSEExtractor.from_hparams(folder, gate=True)
    assert main(["--model", folder, "--video", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "t.wav"), "--gate", "--noprogressbar"]) == 2
    err = capsys.readouterr().err
    assert folder in err and "activity_head" in err and "--gate" in err
    assert not (tmp_path / "t.wav").exists()
    # a saved model with a head loads with its head, gate on
    head = _head_model()
    del head.activity_head.forward  # the real head again
    ex = AVSEExtractor.from_hparams(save_model(head, str(tmp_path / "head")), gate=True,
                                    gate_db=20.0)
    assert ex.gate and ex.has_activity and ex.gating.attenuation_db == 20.0


def test_one_face_cli_prints_the_speaking_time(tmp_path, capsys, monkeypatch):
    import soundfile as sf

    from avse import inference
    from avse.models.io import save_model

    model = _head_model()
    mix, lips = _loud_quiet([(True, 30), (False, 20)], seed=3)
    sf.write(tmp_path / "mix.wav", mix, 16000, subtype="FLOAT")
    np.save(tmp_path / "lips.npy", lips)
    folder = save_model(model, str(tmp_path / "m"))
    monkeypatch.setattr(AVSEExtractor, "load_visual", lambda self, video: np.load(video))
    real = inference.AVSEExtractor.from_hparams.__func__

    def with_controlled_head(cls, *args, **kwargs):
        ex = real(cls, *args, **kwargs)
        ex.model.activity_head.forward = model.activity_head.forward
        return ex

    monkeypatch.setattr(AVSEExtractor, "from_hparams", classmethod(with_controlled_head))
    assert inference.main(["--model", folder, "--video", str(tmp_path / "lips.npy"), "--mixture",
                           str(tmp_path / "mix.wav"), "--out", str(tmp_path / "t.wav"),
                           "--gate", "--gate_db", "40", "--noprogressbar"]) == 0
    out = capsys.readouterr().out
    assert "speaking 1.20 s of 2.00 s (60 %) in 1 span(s): 0.00-1.20" in out, out
    wav = sf.read(tmp_path / "t.wav")[0]
    assert np.abs(wav[40 * 640:]).max() < np.abs(wav[: 30 * 640]).max() * 10 ** (-30 / 20)
