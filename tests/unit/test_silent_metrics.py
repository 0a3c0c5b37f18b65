"""A silent target (conditions absent / sparse): ``silent_energy``, metrics over the active
samples, activity masks from batches, and undefined values written as null (never NaN/inf)."""
import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch

from avse.evaluation import (DEFAULT_METRICS, METRICS, MetricTracker, Scorer, Utterance,
                             compute_metrics, evaluate_many, format_table, means_rows,
                             write_csv, write_json, write_table)
from avse.evaluation.scoring import sample_mask
from avse.metrics import pesq_wb, sdr, si_sdr, stoi
from tests.unit.test_metrics import speechlike

SR = 16000
ALL = DEFAULT_METRICS + ("silent_energy",)
REFERENCE_METRICS = ("si_sdr", "si_sdri", "sdr", "sdri", "pesq", "stoi")


def _signals(seed=0, dur=2.0):
    target = speechlike(seed, dur=dur)
    other = speechlike(seed + 50, dur=dur)
    return target, other


def _same(a: dict, b: dict):
    """Equal dicts, NaN == NaN."""
    assert list(a) == list(b)
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], (k, a[k], b[k])


# ----------------------------------------------------------------------------- the metric
def test_silent_energy_absent_example():
    _, other = _signals()
    silence = np.zeros_like(other)
    mixture = other  # the target is silent: the mixture is the interferer alone
    m = compute_metrics(0.01 * mixture, silence, mixture, metrics=ALL,
                        active=np.zeros(len(other), bool))
    assert m["silent_energy"] == pytest.approx(-40.0, abs=1e-9)
    for name in REFERENCE_METRICS:  # undefined on a silent reference
        assert math.isnan(m[name]), name
    # everything let through: 0 dB; the floor is -100 dB, never -inf
    assert compute_metrics(mixture, silence, mixture, metrics=("silent_energy",),
                           active=np.zeros(len(other)))["silent_energy"] == pytest.approx(0.0)
    zero = compute_metrics(np.zeros_like(other), silence, mixture, metrics=("silent_energy",),
                           active=np.zeros(len(other)))["silent_energy"]
    assert zero == -100.0
    tiny = compute_metrics(1e-7 * mixture, silence, mixture, metrics=("silent_energy",),
                           active=np.zeros(len(other)))["silent_energy"]
    assert tiny == -100.0  # -140 dB clipped to the floor
    # a silent mixture there, or no silent sample at all: undefined
    assert math.isnan(compute_metrics(mixture, silence, silence, metrics=("silent_energy",),
                                      active=np.zeros(len(other)))["silent_energy"])
    assert math.isnan(compute_metrics(mixture, mixture, mixture, metrics=("silent_energy",))
                      ["silent_energy"])
    assert not METRICS["silent_energy"].default and "silent_energy" not in DEFAULT_METRICS
    assert METRICS["silent_energy"].needs_mixture


def test_sparse_mask_scores_the_active_span_like_the_cut_signals():
    target, other = _signals(1, dur=3.0)
    n = len(target)
    a, b = int(0.8 * SR), int(2.4 * SR)
    active = np.zeros(n, bool)
    active[a:b] = True
    reference = np.where(active, target, 0.0)
    mixture = reference + 0.7 * other
    rng = np.random.default_rng(3)
    estimate = reference + 0.1 * other + 0.01 * rng.standard_normal(n)
    m = compute_metrics(estimate, reference, mixture, metrics=ALL, active=active)
    est, ref, mix = estimate[a:b], reference[a:b], mixture[a:b]
    assert m["si_sdr"] == pytest.approx(si_sdr(est, ref), abs=1e-9)
    assert m["si_sdri"] == pytest.approx(si_sdr(est, ref) - si_sdr(mix, ref), abs=1e-9)
    assert m["sdr"] == pytest.approx(sdr(est, ref), abs=1e-9)
    assert m["sdri"] == pytest.approx(sdr(est, ref) - sdr(mix, ref), abs=1e-9)
    assert m["pesq"] == pytest.approx(pesq_wb(est, ref))
    assert m["stoi"] == pytest.approx(stoi(est, ref, SR))
    silent = ~active
    expect = 10 * np.log10(np.mean(estimate[silent] ** 2) / np.mean(mixture[silent] ** 2))
    assert m["silent_energy"] == pytest.approx(expect, abs=1e-9)
    # over the whole utterance the score would be different (the silent part counts)
    assert abs(compute_metrics(estimate, reference, metrics=("si_sdr",))["si_sdr"]
               - m["si_sdr"]) > 0.1


def test_several_active_spans_are_concatenated():
    target, other = _signals(2)
    active = np.zeros(len(target), bool)
    active[1000:9000] = active[20000:30000] = True
    est = target + 0.2 * other
    got = compute_metrics(est, target, target + other, metrics=("si_sdr", "si_sdri"),
                          active=torch.from_numpy(active))
    cut = lambda x: np.concatenate([x[1000:9000], x[20000:30000]])  # noqa: E731
    assert got["si_sdr"] == pytest.approx(si_sdr(cut(est), cut(target)), abs=1e-9)
    assert got["si_sdri"] == pytest.approx(
        si_sdr(cut(est), cut(target)) - si_sdr(cut(target + other), cut(target)), abs=1e-9)


def test_no_mask_or_all_true_mask_is_exactly_today():
    target, other = _signals(4, dur=1.5)
    est, mix = target + 0.3 * other, target + other
    plain = compute_metrics(est, target, mix, metrics=ALL)
    _same(plain, compute_metrics(est, target, mix, metrics=ALL, active=np.ones(len(est), bool)))
    _same(plain, compute_metrics(est, target, mix, metrics=ALL, active=np.ones(len(est))))
    assert all(np.isfinite(plain[m]) for m in DEFAULT_METRICS)
    assert math.isnan(plain["silent_energy"])  # no silent samples
    assert Utterance(est, target, mix, active=np.ones(len(est), bool)).active is None


def test_short_active_span_gives_nan_pesq_stoi_without_raising():
    target, other = _signals(5)
    active = np.zeros(len(target), bool)
    active[8000:8000 + 1600] = True  # 0.1 s: too short for PESQ and STOI
    ref = np.where(active, target, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        m = compute_metrics(ref + 0.05 * other, ref, ref + other, metrics=ALL, active=active)
    assert math.isnan(m["pesq"]) and math.isnan(m["stoi"])
    assert np.isfinite(m["si_sdr"]) and np.isfinite(m["silent_energy"])
    # 0.3 s: PESQ scores it, STOI (30 frames of speech needed) does not
    active[8000:8000 + 4800] = True
    ref = np.where(active, target, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(ref + 0.05 * other, ref, ref + other, metrics=("pesq", "stoi"),
                            active=active)
    assert np.isfinite(m["pesq"]) and math.isnan(m["stoi"])


def test_mask_of_the_wrong_length_is_an_error():
    x = np.ones(100)
    with pytest.raises(ValueError, match="active mask"):
        Utterance(x, x, x, active=np.ones(99, bool))


def test_evaluate_many_with_masks():
    target, other = _signals(6, dur=1.5)
    active = np.zeros(len(target), bool)
    active[4000:16000] = True
    ref = np.where(active, target, 0.0)
    ests, refs, mixes = [ref + 0.1 * other, 0.01 * other], [ref, 0 * ref], [ref + other, other]
    actives = [active, np.zeros(len(target), bool)]
    rows = evaluate_many(ests, refs, mixes, metrics=ALL, actives=actives)
    for row, e, r, m, a in zip(rows, ests, refs, mixes, actives):
        _same(row, compute_metrics(e, r, m, metrics=ALL, active=a))
    assert rows[1]["silent_energy"] == pytest.approx(-40.0, abs=1e-9)
    with pytest.raises(ValueError, match="differ in number"):
        evaluate_many(ests, refs, mixes, actives=actives[:1])


# ----------------------------------------------------------------------------- batches
def test_sample_mask_from_frames():
    act = torch.tensor([1.0, 0.0, 1.0, 0.0])
    m = sample_mask(act, 2000)
    assert m.dtype == bool and m.shape == (2000,)
    assert m[:640].all() and not m[640:1280].any() and m[1280:1920].all() and not m[1920:].any()
    with pytest.raises(ValueError, match="activity"):
        sample_mask(act, 640 * 4 + 1)


def test_score_batch_uses_the_batch_activity():
    g = torch.Generator().manual_seed(0)
    tv = 30
    n = 640 * tv
    target = torch.tensor(np.stack([speechlike(s, dur=n / SR) for s in (7, 8, 9)]),
                          dtype=torch.float32)
    other = torch.randn(3, n, generator=g) * 0.1
    activity = torch.ones(3, tv)
    activity[0] = 0.0  # absent
    activity[1, :10] = activity[1, 20:] = 0.0  # sparse: frames 10..19
    activity[2, 20:] = 0.0  # present, 20 of 30 frames long (the rest is padding)
    gain = activity.repeat_interleave(640, dim=1)
    target = target * gain
    target[2, 640 * 20:] = 0.0
    mixture = target + other
    lengths = torch.tensor([1.0, 1.0, 20 / 30])
    batch = {"target": target, "mixture": mixture, "keys": ["a", "s", "p"], "lengths": lengths,
             "activity": activity}
    estimate = target + 0.05 * other
    tracker = MetricTracker()
    Scorer(ALL).score_batch(estimate, batch, tracker)
    absent, sparse, present = tracker.rows
    assert all(math.isnan(absent[m]) for m in REFERENCE_METRICS)
    assert absent["silent_energy"] == pytest.approx(
        10 * math.log10(float((0.05 * other[0]).pow(2).mean() / other[0].pow(2).mean())),
        abs=1e-4)
    cut = slice(640 * 10, 640 * 20)
    assert sparse["si_sdr"] == pytest.approx(
        float(si_sdr(estimate[1, cut].double(), target[1, cut].double())), abs=1e-6)
    assert np.isfinite(sparse["silent_energy"]) and sparse["silent_energy"] < -20
    # an ordinary example (all ones over its own length): today's values, no silent energy
    plain = Scorer(ALL).score(estimate[2, :640 * 20].numpy(), target[2, :640 * 20].numpy(),
                              mixture[2, :640 * 20].numpy())
    _same({m: present[m] for m in ALL}, plain)
    assert math.isnan(present["silent_energy"])
    # activity None (or no field): the batch is scored as before
    t1, t2 = MetricTracker(), MetricTracker()
    Scorer(("si_sdr", "silent_energy")).score_batch(estimate, {**batch, "activity": None}, t1)
    Scorer(("si_sdr", "silent_energy")).score_batch(
        estimate, {k: v for k, v in batch.items() if k != "activity"}, t2)
    assert [r["si_sdr"] for r in t1.rows] == [r["si_sdr"] for r in t2.rows]
    assert np.isfinite(t1.rows[0]["si_sdr"]) and math.isnan(t1.rows[0]["silent_energy"])


# ----------------------------------------------------------------------------- null in files
def _absent_tracker():
    t = MetricTracker(metrics=ALL)
    for i, energy in enumerate((-35.5, -41.25)):
        t.add(f"absent{i}", {m: float("nan") for m in REFERENCE_METRICS} | {
            "silent_energy": energy}, condition="absent")
    t.add("twomix", {m: 5.0 for m in REFERENCE_METRICS} | {"silent_energy": float("nan")},
          condition="2mix")
    t.add("broken", {"si_sdr": float("inf"), "silent_energy": float("-inf")}, condition="2mix")
    return t


def _no_nan_or_inf(text: str):
    low = text.lower()
    assert "nan" not in low and "inf" not in low, text


def test_tracker_files_have_null_never_nan(tmp_path):
    t = _absent_tracker()
    t.write_csv(tmp_path / "utts.csv")
    text = (tmp_path / "utts.csv").read_text()
    _no_nan_or_inf(text)
    rows = list(csv.DictReader(text.splitlines()))
    assert rows[0]["si_sdr"] == "" and rows[0]["pesq"] == "" and rows[0]["stoi"] == ""
    assert float(rows[0]["silent_energy"]) == -35.5
    assert rows[2]["silent_energy"] == "" and float(rows[2]["si_sdr"]) == 5.0
    assert rows[3]["si_sdr"] == "" and rows[3]["silent_energy"] == ""
    t.write_json(tmp_path / "summary.json", by="condition")
    text = (tmp_path / "summary.json").read_text()
    _no_nan_or_inf(text)
    js = json.loads(text)
    absent = js["by_condition"]["absent"]
    assert absent["si_sdr"] == {"mean": None, "std": None, "count": 0}
    assert absent["silent_energy"]["mean"] == pytest.approx(-38.375)
    _no_nan_or_inf(t.table())  # the infinities are left out of the summaries
    assert t.summary()["si_sdr"]["count"] == 1
    _no_nan_or_inf(t.table(by="condition"))
    line = next(x for x in t.table(by="condition").split("[condition=absent]")[1].splitlines()
                if x.startswith("si_sdr "))
    assert line.split() == ["si_sdr", "null", "null", "0"]


def test_tables_csv_json_write_null(tmp_path):
    t = _absent_tracker()
    results = t.summary(by="condition")
    rows = means_rows(results, list(ALL))
    assert rows[0]["condition"] == "absent" and math.isnan(rows[0]["si_sdr"])
    table = write_table(rows, str(tmp_path), "conditions", ("txt", "csv", "json"), data=results)
    for name in ("conditions.txt", "conditions.csv", "conditions.json"):
        _no_nan_or_inf((tmp_path / name).read_text())
    header, absent, twomix = table.splitlines()
    assert header.split() == ["condition", *ALL]
    assert absent.split() == ["absent", *["null"] * 6, "-38.38"]
    assert twomix.split()[-1] == "null"
    with open(tmp_path / "conditions.csv") as f:
        cells = {r["condition"]: r for r in csv.DictReader(f)}
    assert cells["absent"]["si_sdr"] == "" and float(cells["absent"]["silent_energy"]) == -38.375
    assert cells["2mix"]["silent_energy"] == ""
    js = json.loads((tmp_path / "conditions.json").read_text())
    assert js["absent"]["stoi"]["mean"] is None and js["2mix"]["si_sdr"]["count"] == 1
    # infinities and numpy floats too
    write_csv([{"a": np.float32("inf"), "b": np.float64(1.5), "c": None}], tmp_path / "x.csv")
    assert (tmp_path / "x.csv").read_text().splitlines() == ["a,b,c", ",1.5,"]
    write_json({"a": [float("inf"), np.float32(0.5)], "b": np.nan}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [None, 0.5], "b": None}
    text = format_table([{"k": "x", "v": float("-inf"), "w": np.float32("nan"), "o": 1}],
                        formats={"o": "{:+d}", "v": "{:.1f}"})
    assert text.splitlines()[1].split() == ["x", "null", "null", "+1"]
