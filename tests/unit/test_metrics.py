"""Metrics (SI-SDR, BSS-eval SDR vs fast_bss_eval, PESQ, STOI), the tracker and losses."""
import csv
import json
import logging
import math
import re
import sys

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from avse import losses, metrics
from avse.evaluation import (DEFAULT_METRICS, MetricTracker, Scorer, compute_metrics,
                             evaluate_many)
from avse.losses import aux_loss, neg_si_sdr, si_sdr_loss_with_intermediate
from avse.metrics import pesq_wb, sdr, sdri, si_sdr, si_sdri, stoi

SR = 16000


def np_si_sdr(est, ref, zero_mean=True):
    """Textbook float64 SI-SDR (no eps)."""
    est, ref = np.asarray(est, np.float64), np.asarray(ref, np.float64)
    if zero_mean:
        est, ref = est - est.mean(-1, keepdims=True), ref - ref.mean(-1, keepdims=True)
    target = (est * ref).sum(-1, keepdims=True) / (ref * ref).sum(-1, keepdims=True) * ref
    return 10 * np.log10((target ** 2).sum(-1) / ((est - target) ** 2).sum(-1))


def speechlike(seed=0, dur=3.0, sr=SR):
    """Harmonic tone bursts (f0 100-220 Hz with vibrato, harmonics < 4 kHz, Hann-shaped
    150-350 ms syllables separated by 50-200 ms pauses), peak 0.3."""
    rng = np.random.default_rng(seed)
    n = int(sr * dur)
    x = np.zeros(n)
    pos = int(0.1 * sr)
    while pos < n - int(0.3 * sr):
        length = int(rng.uniform(0.15, 0.35) * sr)
        f0 = rng.uniform(100, 220)
        t = np.arange(length) / sr
        vibrato = 1 + 0.1 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
        phase = 2 * np.pi * np.cumsum(f0 * vibrato) / sr
        seg = sum(np.sin(k * phase) / k for k in range(1, int(4000 / f0)))
        x[pos:pos + length] += seg * np.hanning(length)
        pos += length + int(rng.uniform(0.05, 0.2) * sr)
    return 0.3 * x / np.abs(x).max()


def add_noise(x, snr_db, seed):
    noise = np.random.default_rng(seed).standard_normal(x.shape)
    return x + noise * np.std(x) / np.std(noise) * 10 ** (-snr_db / 20)


@pytest.fixture(scope="module")
def speech():
    x = speechlike(0)
    return {"clean": x, "snr30": add_noise(x, 30, 1), "snr10": add_noise(x, 10, 2)}


# ----------------------------------------------------------------------------- SI-SDR
@pytest.mark.parametrize("zero_mean", [True, False])
def test_si_sdr_matches_numpy(zero_mean):
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 8000)) + 0.3
    est = 0.7 * ref + rng.standard_normal((3, 8000)) * np.array([[0.1], [1.0], [3.0]])
    want = np_si_sdr(est, ref, zero_mean)
    got = si_sdr(torch.tensor(est), torch.tensor(ref), zero_mean=zero_mean)
    assert got.shape == (3,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    got32 = si_sdr(torch.tensor(est, dtype=torch.float32), torch.tensor(ref, dtype=torch.float32),
                   zero_mean=zero_mean)
    np.testing.assert_allclose(got32.numpy(), want, atol=2e-3)
    np.testing.assert_allclose(si_sdr(est, ref, zero_mean=zero_mean), want, atol=1e-6)  # numpy in


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 20.0])
def test_si_sdr_known_snr(snr):
    rng = np.random.default_rng(int(snr) + 10)
    ref = rng.standard_normal(3 * SR)
    ref -= ref.mean()
    noise = rng.standard_normal(3 * SR)
    # random noise: SI-SDR ~ SNR (chance correlation with the reference: ~0.05 dB at 0 dB)
    noisy = ref + noise * np.linalg.norm(ref) / np.linalg.norm(noise) * 10 ** (-snr / 20)
    assert abs(si_sdr(noisy, ref) - snr) < (0.05 if snr >= 10 else 0.3)
    # noise orthogonal to the reference and zero-mean: SI-SDR == SNR exactly
    noise -= noise.mean()
    noise -= (noise @ ref) / (ref @ ref) * ref
    noisy = ref + noise * np.linalg.norm(ref) / np.linalg.norm(noise) * 10 ** (-snr / 20)
    assert abs(si_sdr(noisy, ref) - snr) < 1e-6


def test_si_sdr_scale_and_offset_invariance():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 8000, generator=g, dtype=torch.float64)
    est = ref + 0.5 * torch.randn(2, 8000, generator=g, dtype=torch.float64)
    base = si_sdr(est, ref)
    for c in (0.01, 7.0):
        torch.testing.assert_close(si_sdr(c * est, ref), base, atol=1e-4, rtol=0)
        torch.testing.assert_close(si_sdr(est, c * ref), base, atol=1e-4, rtol=0)
    torch.testing.assert_close(si_sdr(est + 3.0, ref - 1.0), base, atol=1e-9, rtol=0)
    assert not torch.allclose(si_sdr(est + 3.0, ref, zero_mean=False), base)


def test_si_sdr_silent_inputs_finite_with_finite_grad():
    x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    z = torch.zeros(2, 4000)
    for est, ref in [(z, z), (x, z), (z, x)]:
        est = est.clone().requires_grad_(True)
        v = si_sdr(est, ref)
        assert torch.isfinite(v).all()
        v.sum().backward()
        assert torch.isfinite(est.grad).all()
    for est, ref in [(z, z), (x, z), (z, x)]:  # silence anywhere: 10 log10(eps) = -80 dB
        torch.testing.assert_close(si_sdr(est, ref), torch.full((2,), -80.0))
    assert float(si_sdr(x, x).min()) > 80  # perfect: large but finite


def test_si_sdr_half_precision_is_upcast():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4000, generator=g)
    y = x + 0.3 * torch.randn(2, 4000, generator=g)
    for dtype in (torch.float16, torch.bfloat16):
        v = si_sdr(torch.zeros(2, 4000, dtype=dtype), torch.zeros(2, 4000, dtype=dtype))
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
        torch.testing.assert_close(si_sdr(y.to(dtype), x.to(dtype)), si_sdr(y, x),
                                   atol=0.1, rtol=0)


# ----------------------------------------------------------------------------- SDR
def fbe_sdr(est, ref):
    """fast_bss_eval's bss_eval_sources SDR (torch float64 inputs: numpy 2 breaks it)."""
    import fast_bss_eval

    e = torch.as_tensor(np.asarray(est, np.float64))[..., None, :]
    r = torch.as_tensor(np.asarray(ref, np.float64))[..., None, :]
    return fast_bss_eval.bss_eval_sources(r, e, compute_permutation=False)[0][..., 0].numpy()


def _sdr_cases():
    rng = np.random.default_rng(42)
    cases = {}
    x = rng.standard_normal(4 * SR)
    cases["white+noise"] = (x + 0.5 * rng.standard_normal(x.size), x)
    ar = lfilter([1.0], [1.0, -0.9], rng.standard_normal(2 * SR))  # low-pass, coloured
    h = rng.standard_normal(24) * np.exp(-np.arange(24) / 6.0)
    noise = 0.3 * np.std(ar) * rng.standard_normal(ar.size)
    cases["ar1*fir24+noise"] = (lfilter(h, [1.0], ar) + noise, ar)
    h = rng.standard_normal(600) * np.exp(-np.arange(600) / 150.0)  # longer than 512 taps
    cases["white*fir600+noise"] = (lfilter(h, [1.0], x[:SR]) + 0.2 * rng.standard_normal(SR),
                                   x[:SR])
    s = speechlike(3) + 1e-4 * 0.3 * rng.standard_normal(3 * SR)  # -80 dB floor
    interf = speechlike(7)
    for snr in (10.0, -5.0):
        h = rng.standard_normal(16) * np.exp(-np.arange(16) / 3.0)
        est = (lfilter(h, [1.0], s) + 10 ** (-snr / 20) * interf
               + 0.003 * rng.standard_normal(s.size))
        cases[f"speechlike*fir+interf{snr:+.0f}dB"] = (est, s)
    x = rng.standard_normal(400)  # shorter than the filter
    cases["short400"] = (x + rng.standard_normal(400), x)
    ref = rng.standard_normal((2, 3, 6000))
    noise = rng.standard_normal((2, 3, 6000)) * np.arange(1, 4)[:, None]
    cases["batch2x3"] = (0.5 * ref + noise, ref)
    return cases


SDR_CASES = _sdr_cases()


@pytest.mark.parametrize("name", list(SDR_CASES))
def test_sdr_matches_fast_bss_eval(name):
    est, ref = SDR_CASES[name]
    want = fbe_sdr(est, ref)
    got = sdr(torch.as_tensor(est), torch.as_tensor(ref))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    assert got.shape == ref.shape[:-1]
    np.testing.assert_allclose(got.numpy(), want, atol=0.01)
    got32 = sdr(torch.as_tensor(est, dtype=torch.float32),
                torch.as_tensor(ref, dtype=torch.float32))
    np.testing.assert_allclose(got32.numpy(), want, atol=0.05)


def test_sdr_is_filter_invariant_and_types():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(8000), np.zeros(600)])
    h = rng.standard_normal(100)
    est = lfilter(h, [1.0], x)  # full convolution (x has a silent tail): inside the subspace
    assert sdr(est, x) > 100 and si_sdr(est, x) < 10
    assert isinstance(sdr(est, x), float)  # numpy in -> float out
    assert isinstance(sdr(np.stack([est, x]), x), np.ndarray)


def test_sdr_degenerate_inputs():
    x = np.random.default_rng(0).standard_normal(8000)
    z = np.zeros(8000)
    assert sdr(x, x) == 150.0  # clamped, not inf
    for est, ref in [(z, z), (x, z), (z, x)]:
        assert sdr(est, ref) == -150.0
    tone = np.sin(0.3 * np.arange(8000))  # rank-deficient Toeplitz system
    assert np.isfinite(sdr(tone + 0.1 * x, tone))
    bad = torch.tensor(np.stack([x + 0.1, x]))
    bad[1, 7] = float("nan")
    out = sdr(bad, torch.tensor(np.stack([x, x])))
    assert np.isfinite(out[0].item()) and math.isnan(out[1].item())


def test_sdr_has_no_runtime_dependency_on_fast_bss_eval():
    import inspect
    import re

    assert not re.search(r"^\s*(import|from)\s+fast_bss_eval", inspect.getsource(metrics), re.M)


def test_improvements():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(8000)
    mix = ref + rng.standard_normal(8000)
    est = ref + 0.1 * rng.standard_normal(8000)
    assert si_sdri(est, ref, mix) == pytest.approx(si_sdr(est, ref) - si_sdr(mix, ref), abs=1e-12)
    assert sdri(est, ref, mix) == pytest.approx(sdr(est, ref) - sdr(mix, ref), abs=1e-12)
    assert si_sdri(mix, ref, mix) == 0.0 and sdri(mix, ref, mix) == 0.0
    assert si_sdri(est, ref, mix) > 15


# ----------------------------------------------------------------------------- PESQ / STOI
def test_pesq_stoi_order(speech):
    clean = speech["clean"]
    p = {k: pesq_wb(v, clean) for k, v in speech.items()}
    s = {k: stoi(v, clean, SR) for k, v in speech.items()}
    assert p["clean"] > 4.0 and s["clean"] > 0.999
    assert p["clean"] > p["snr30"] > p["snr10"] >= 1.0
    assert s["clean"] > s["snr30"] > s["snr10"] > 0.5
    assert pesq_wb(torch.tensor(speech["snr30"]), torch.tensor(clean)) == pytest.approx(p["snr30"])


def test_pesq_stoi_errors_give_nan():
    x = speechlike(1, dur=1.0)
    with pytest.warns(RuntimeWarning, match="PESQ"):
        assert math.isnan(pesq_wb(x[:800], x[:800]))  # 50 ms: too short
    with pytest.warns(RuntimeWarning, match="PESQ"):
        assert math.isnan(pesq_wb(np.zeros(SR), np.zeros(SR)))
    with pytest.warns(RuntimeWarning, match="PESQ"):
        assert math.isnan(pesq_wb(x, x, sr=22050))
    with pytest.warns(RuntimeWarning, match="STOI"):
        assert math.isnan(stoi(x[:-5], x, SR))


# ----------------------------------------------------------------------------- compute_metrics
def test_compute_metrics(speech):
    clean, est = speech["clean"], speech["snr30"]
    mix = clean + 0.5 * speechlike(9)
    m = compute_metrics(est, clean, mix)
    assert list(m) == list(DEFAULT_METRICS)
    assert all(isinstance(v, float) for v in m.values())
    assert m["si_sdr"] == pytest.approx(si_sdr(est, clean))
    assert m["sdri"] == pytest.approx(sdr(est, clean) - sdr(mix, clean))
    assert m["pesq"] == pytest.approx(pesq_wb(est, clean))
    m_t = compute_metrics(torch.tensor(est, dtype=torch.float32)[None],
                          torch.tensor(clean, dtype=torch.float32), torch.tensor(mix),
                          metrics=("stoi", "si_sdr"))
    assert list(m_t) == ["stoi", "si_sdr"] and m_t["si_sdr"] == pytest.approx(m["si_sdr"], abs=1e-3)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(est, clean, mix, metrics=("snr",))
    with pytest.raises(ValueError, match="mixture"):
        compute_metrics(est, clean, metrics=("sdri",))
    with pytest.raises(ValueError, match="length"):
        compute_metrics(est[:-1], clean, metrics=("si_sdr",))


def test_evaluate_many_parallel_equals_serial():
    refs = [speechlike(s, dur=1.0) for s in range(3)]
    ests = [add_noise(r, 15, s) for s, r in enumerate(refs)]
    mixes = [add_noise(r, 0, s + 5) for s, r in enumerate(refs)]
    serial = evaluate_many(ests, refs, mixes, n_jobs=1)
    parallel = evaluate_many(ests, refs, mixes, n_jobs=2)
    assert serial == parallel
    assert serial[1] == compute_metrics(ests[1], refs[1], mixes[1])


def test_missing_eval_packages_one_line_other_metrics_computed(monkeypatch, caplog, speech):
    """Without pesq / pystoi (the ``eval`` extra): one warning line for the whole run, NaN
    columns, every other metric computed."""
    monkeypatch.setitem(sys.modules, "pesq", None)  # ``import pesq`` raises ImportError
    monkeypatch.setitem(sys.modules, "pystoi", None)
    clean = torch.tensor(speech["clean"][:2 * SR], dtype=torch.float32).reshape(2, SR)
    noise = torch.tensor(speechlike(5, dur=2.0), dtype=torch.float32).reshape(2, SR)
    batch = {"target": clean, "mixture": clean + noise, "keys": ["a", "b"],
             "lengths": torch.tensor([1.0, 0.5]), "visual_keys": ["a", "x"]}
    tracker = MetricTracker()
    with caplog.at_level(logging.WARNING):
        scorer = Scorer()
        for _ in range(3):
            scorer.score_batch(clean + 0.1 * noise, batch, tracker, batch_columns=("lips_of",))
    lines = [r.getMessage() for r in caplog.records if "avse[eval]" in r.getMessage()]
    assert len(lines) == 1 and "pesq" in lines[0] and "pystoi" in lines[0], caplog.text
    assert scorer.missing == {"pesq": "pesq", "stoi": "pystoi"}
    assert tracker.columns == ["id", "lips_of", *DEFAULT_METRICS] and len(tracker) == 6
    for row in tracker.rows:
        assert math.isnan(row["pesq"]) and math.isnan(row["stoi"])
        assert all(np.isfinite(row[m]) for m in ("si_sdr", "si_sdri", "sdr", "sdri"))
    assert tracker.rows[1]["si_sdr"] == pytest.approx(
        si_sdr(clean[1, :SR // 2] + 0.1 * noise[1, :SR // 2], clean[1, :SR // 2]).item(), abs=1e-4)
    many = evaluate_many([speech["snr30"]], [speech["clean"]], [speech["snr10"]])
    assert math.isnan(many[0]["stoi"]) and np.isfinite(many[0]["sdri"])
    with pytest.raises(ImportError, match=re.escape("pip install 'avse[eval]'")):
        pesq_wb(speech["clean"], speech["clean"])


# ----------------------------------------------------------------------------- tracker
def _tracker():
    t = MetricTracker(metrics=("si_sdr", "pesq"))
    t.add("u1", {"si_sdr": 10.0, "pesq": 3.0}, condition="2mix")
    t.add("u2", {"si_sdr": 14.0, "pesq": float("nan")}, condition="2mix")
    t.add("u3", {"si_sdr": 6.0, "pesq": 2.0, "stoi": 0.9}, condition="3mix")
    return t


def test_tracker_summary_nan_and_groups():
    t = _tracker()
    s = t.summary()
    assert list(s) == ["si_sdr", "pesq", "stoi"] and len(t) == 3
    assert s["si_sdr"] == {"mean": 10.0, "std": pytest.approx(np.std([10, 14, 6])), "count": 3}
    assert s["pesq"]["mean"] == 2.5 and s["pesq"]["count"] == 2
    assert s["stoi"]["count"] == 1  # missing in u1/u2 counts as NaN
    g = t.summary(by="condition")
    assert list(g) == ["2mix", "3mix"]
    assert g["2mix"]["si_sdr"]["mean"] == 12.0 and g["2mix"]["pesq"]["count"] == 1
    assert g["2mix"]["stoi"]["count"] == 0 and math.isnan(g["2mix"]["stoi"]["mean"])
    with pytest.raises(KeyError):
        t.summary(by="speaker")
    with pytest.raises(ValueError):
        t.add("u4", {"si_sdr": 1.0}, pesq=2.0)
    t.append("u4", si_sdr=2.0, condition="3mix", snr_db=5)
    assert t.rows[-1] == {"id": "u4", "si_sdr": 2.0, "condition": "3mix", "snr_db": 5.0}
    assert "snr_db" in t.metrics and t.summary(by="condition")["3mix"]["si_sdr"]["mean"] == 4.0


def test_tracker_files_and_table(tmp_path):
    t = _tracker()
    t.write_csv(tmp_path / "sub" / "per_utt.csv")
    with open(tmp_path / "sub" / "per_utt.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "condition", "si_sdr", "pesq", "stoi"]
    assert rows[1] == ["u1", "2mix", "10.0", "3.0", ""]  # undefined: an empty cell
    assert rows[3] == ["u3", "3mix", "6.0", "2.0", "0.9"]
    t.write_json(tmp_path / "summary.json", by="condition")
    js = json.loads((tmp_path / "summary.json").read_text())
    assert js["n"] == 3 and js["summary"]["pesq"] == {"mean": 2.5, "std": 0.5, "count": 2}
    assert js["by_condition"]["2mix"]["stoi"] == {"mean": None, "std": None, "count": 0}
    lines = t.table().splitlines()
    assert lines[0].split() == ["metric", "mean", "std", "count"]
    assert lines[1].split() == ["si_sdr", "10.0000", f"{np.std([10, 14, 6]):.4f}", "3"]
    assert len({len(line) for line in lines}) == 1  # aligned
    grouped = t.table(by="condition")
    assert "[condition=2mix]" in grouped and "[condition=3mix]" in grouped
    assert "nan" not in grouped.lower()
    assert next(line for line in grouped.splitlines() if line.startswith("stoi")).split() == [
        "stoi", "null", "null", "0"]  # stoi of 2mix


# ----------------------------------------------------------------------------- losses
def _batch(seed=0, b=2, n=4000):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(b, n, generator=g)
    return target, [target + s * torch.randn(b, n, generator=g) for s in (0.1, 0.5, 1.0, 2.0)]


def test_neg_si_sdr_and_gradient():
    target, (est, *_) = _batch()
    est = est.clone().requires_grad_(True)
    loss = neg_si_sdr(est, target)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, -si_sdr(est, target).mean())
    loss.backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    # a gradient step improves SI-SDR
    with torch.no_grad():
        assert neg_si_sdr(est - 1e-3 * est.grad / est.grad.norm() * est.norm(), target) < loss


def test_deep_supervision_weighting():
    target, (fin, *mids) = _batch(1)
    main = neg_si_sdr(fin, target)
    parts = torch.stack([neg_si_sdr(m, target) for m in mids])
    for alpha in (0.0, 0.1, 0.5):
        got = si_sdr_loss_with_intermediate(fin, mids, target, alpha=alpha)
        torch.testing.assert_close(got, main + alpha * parts.sum())
    got = si_sdr_loss_with_intermediate(fin, mids, target, alpha=0.3, reduction="mean")
    torch.testing.assert_close(got, main + 0.3 * parts.mean())
    stacked = si_sdr_loss_with_intermediate(fin, torch.stack(mids), target, alpha=0.1)
    torch.testing.assert_close(stacked, main + 0.1 * parts.sum())
    torch.testing.assert_close(si_sdr_loss_with_intermediate(fin, [], target), main)
    with pytest.raises(ValueError):
        si_sdr_loss_with_intermediate(fin, mids, target, reduction="max")
    # gradients reach every intermediate
    mids = [m.clone().requires_grad_(True) for m in mids]
    si_sdr_loss_with_intermediate(fin, mids, target, alpha=0.1).backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in mids)


def test_losses_silent_target_finite():
    target = torch.zeros(2, 4000)
    est = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    total = si_sdr_loss_with_intermediate(est, [est * 0.5], target, alpha=0.1)
    total = total + aux_loss("si_sdr", est, target) + aux_loss("l1", est, target)
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(est.grad).all()
    assert torch.isfinite(neg_si_sdr(torch.zeros(2, 4000), target))


def test_aux_losses():
    assert set(losses.AUX_LOSSES) >= {"si_sdr", "cross_entropy", "l1"}
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([0, 3, 1, 4])
    ce = aux_loss("cross_entropy", logits, labels)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(logits, labels))
    ce.backward()
    assert logits.grad.abs().sum() > 0
    torch.testing.assert_close(aux_loss("cross_entropy", [logits, logits], labels), 2 * ce)
    assert aux_loss("cross_entropy", logits, torch.full((4,), -100)).item() == 0.0
    a, b = torch.ones(2, 10), torch.zeros(2, 10)
    assert float(aux_loss("l1", a, b)) == 1.0
    target, (est, *_) = _batch()
    torch.testing.assert_close(aux_loss("si_sdr", est, target), neg_si_sdr(est, target))
    with pytest.raises(KeyError, match="unknown aux loss"):
        aux_loss("mse", a, b)

    @losses.register_aux_loss("_test_l2")
    def _l2(p, t):
        return ((p - t) ** 2).mean()

    try:
        assert float(aux_loss("_test_l2", a, b)) == 1.0
    finally:
        losses.AUX_LOSSES.pop("_test_l2")
