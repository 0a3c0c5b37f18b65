#!/usr/bin/env python3
"""Demo report: results.json, the metrics table, example.png and example wavs.

With the condition table beside it (``<out_dir>/conditions/conditions.json``), results.json
also gets the silent-target rows: ``silent_energy_absent`` (output power relative to the
mixture when the target is silent, dB; goal <= -20), ``silent_energy_sparse`` and
``si_sdri_sparse_active``.

    python egs/synthetic/report.py --exp_dir exp/demo/train --data_folder DIR --out_dir exp/demo
"""
import argparse
import json
import os
import sys

import numpy as np
import soundfile as sf
import torch

from avse.data.loaders import make_list_loader
from avse.data.mixing import MixtureConfig
from avse.evaluation import DEFAULT_METRICS, format_table
from avse.models.io import load_model

TARGETS = {"si_sdri": 8.0, "gap_to_mismatched_lips": 8.0, "absent_silent_energy": -20.0}


def lip_opening(lips: np.ndarray) -> np.ndarray:
    """Mouth opening proxy per frame: darkness of the ROI centre (the mouth), 0..1."""
    h, w = lips.shape[1:]
    centre = lips[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4].astype(np.float32)
    dark = 1.0 - centre.mean(axis=(1, 2)) / 255.0
    return (dark - dark.min()) / max(dark.max() - dark.min(), 1e-6)


def plot_example(path, mixture, estimate, reference, lips, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 3, 1.2]})
    for ax, (name, wav) in zip(axes, (("mixture", mixture), ("estimate", estimate),
                                      ("reference (target)", reference))):
        ax.specgram(wav, NFFT=512, Fs=16000, noverlap=384, cmap="magma", vmin=-120)
        ax.set_ylabel("Hz")
        ax.set_title(name, loc="left", fontsize=10)
    t = np.arange(len(lips)) / 25.0
    axes[3].plot(t, lip_opening(lips), color="tab:green")
    axes[3].set_ylabel("lip opening")
    axes[3].set_xlabel("time (s)")
    axes[3].set_xlim(0, len(mixture) / 16000)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exp_dir", required=True, help="the training output_folder")
    p.add_argument("--data_folder", required=True, help="the recipe's --out_dir")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--list", default="lists/voxmix_2mix.csv")
    args = p.parse_args(argv)
    summaries = {}
    for name in ("test", "test_mismatched_lips"):
        path = os.path.join(args.exp_dir, "eval", f"{name}.json")
        if not os.path.isfile(path):
            sys.exit(f"{path} not found: run the training (it evaluates at the end) first")
        summaries[name] = json.load(open(path))["summary"]
    results = {k: summaries["test"][k]["mean"]
               for k in DEFAULT_METRICS if k in summaries["test"]}
    results.update({f"{k}_mismatched_lips": summaries["test_mismatched_lips"][k]["mean"]
                    for k in DEFAULT_METRICS if k in summaries["test_mismatched_lips"]})
    results["num_test_mixtures"] = summaries["test"]["si_sdr"]["count"]
    gap = results["si_sdri"] - results["si_sdri_mismatched_lips"]
    results["targets"] = TARGETS
    met = results["si_sdri"] >= TARGETS["si_sdri"] and gap >= TARGETS["gap_to_mismatched_lips"]
    conditions = os.path.join(args.out_dir, "conditions", "conditions.json")
    if os.path.isfile(conditions):  # the silent target: output energy rel. mixture (dB)
        table = json.load(open(conditions))
        for name in ("absent", "sparse"):
            value = (table.get(name, {}).get("silent_energy") or {}).get("mean")
            if value is not None:
                results[f"silent_energy_{name}"] = value
        if "sparse" in table and (table["sparse"].get("si_sdri") or {}).get("mean") is not None:
            results["si_sdri_sparse_active"] = table["sparse"]["si_sdri"]["mean"]
        absent = results.get("silent_energy_absent")
        met = met and absent is not None and absent <= TARGETS["absent_silent_energy"]
    results["meets_targets"] = bool(met)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

    print(format_table([{"metric": k, "true lips": results[k],
                         "mismatched lips": results.get(k + "_mismatched_lips", float("nan"))}
                        for k in DEFAULT_METRICS if k in results]))
    if "silent_energy_absent" in results:
        print(f"silent target: output {results['silent_energy_absent']:.1f} dB relative to the "
              f"mixture when the target is absent (goal <= {TARGETS['absent_silent_energy']:g})")
    print(f"SI-SDRi gap (true - mismatched lips): {gap:.2f} dB; targets met: {results['meets_targets']}")

    model = load_model(args.exp_dir)
    test_shards = [os.path.join(args.data_folder, "shards", "test")]
    lst = os.path.join(args.data_folder, args.list)
    cfg = MixtureConfig(crop_seconds=None)
    true_b = next(iter(make_list_loader(test_shards, lst, "test", cfg)))
    bad_b = next(iter(make_list_loader(test_shards, lst, "test", cfg, visual_from="mismatched")))
    with torch.no_grad():
        est = model(true_b.mixture, true_b.visual).estimate[0].numpy()
        est_bad = model(bad_b.mixture, bad_b.visual).estimate[0].numpy()
    mix, ref = true_b.mixture[0].numpy(), true_b.target[0].numpy()
    for name, wav in (("mixture", mix), ("estimate", est), ("reference", ref),
                      ("estimate_mismatched_lips", est_bad)):
        peak = max(float(np.abs(wav).max()), 1e-6)
        sf.write(os.path.join(args.out_dir, f"example_{name}.wav"), wav / peak * 0.9, 16000)
    plot_example(os.path.join(args.out_dir, "example.png"), mix, est, ref,
                 true_b.visual[0].numpy(), f"target {true_b.keys[0]}")
    print(f"wrote {args.out_dir}/results.json, example.png and example_*.wav")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
