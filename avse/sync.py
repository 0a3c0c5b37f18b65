"""Audio-visual synchronisation sweep: a model's SI-SDR(i) with the lips offset by k frames.

For each offset (video frames, 1 frame = 640 samples = 40 ms) every mixture of a VoxMix
list is extracted with the target's visual stream moved by
:func:`avse.data.mixing.shift_visual` (positive = the video lags the audio, negative = it
leads; edge-padded, so lengths do not change), and SI-SDR / SI-SDRi are averaged per
offset. Batches come from :func:`avse.data.loaders.make_list_loader` (stage ``test``)
and the model is called as :class:`avse.brain.AVSEBrain` does in its test stage, so
offset 0 reproduces the experiment's own evaluation of the same list::

    python tools/eval_sync.py --model exp/demo/train                    # its test list
    python tools/eval_sync.py --model MODEL_DIR --shards DIR/shards/test \\
        --list DIR/lists/voxmix_2mix.csv --offsets -5:5 --max_mixtures 200

``--model``: an experiment folder (``model.yaml`` + ``save/CKPT+*``; best validation
SI-SDR) or an exported one (``model.yaml`` + ``model.ckpt``). Without ``--shards`` /
``--list`` an experiment's ``hyperparams.yaml`` ``test_sets.<--test_set>`` gives them (and
its ``noise_shards``, for lists with noise tuples; else ``--noise_shards``). Mixtures are
made with ``MixtureConfig(crop_seconds=None)`` and the experiment's ``normalise``: the list's
rows as they are (a noise *source* in ``eval_mixture_config`` is not rebuilt).
Writes into ``--out_dir`` (default ``<model>/eval``): ``sync_sweep.csv`` (one row per
offset), ``sync_sweep.json``, ``sync_sweep_utts.csv`` (per mixture and offset) and
``sync_sweep.png`` (skipped, with a note, when matplotlib is missing); prints the table.

Example
-------
>>> parse_offsets("-2:2"), parse_offsets("-4:4:4"), parse_offsets("3,-1")
([-2, -1, 0, 1, 2], [-4, 0, 4], [3, -1])
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys

import numpy as np
import torch
import yaml

from avse.data.align import FPS
from avse.data.mixing import pad_to, shift_visual
from avse.metrics import ALL_METRICS, MetricTracker, compute_metrics

logger = logging.getLogger(__name__)

FRAME_MS = 1000.0 / FPS  # 40 ms
SIGN = "positive offset = video lags audio (lips shown late); negative = video leads"
OUTPUT_NAME = "sync_sweep"


# --------------------------------------------------------------------------- pieces
def parse_offsets(text: str) -> list:
    """``"a:b"`` (inclusive, step 1), ``"a:b:step"`` or ``"a,b,c"`` -> list of int frames.

    Raises ValueError with what was wrong (empty range, not integers, step <= 0, repeats).
    """
    text = str(text).strip()
    parts = text.split(":") if ":" in text else text.split(",")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = None
    if numbers is None or (":" in text and len(numbers) not in (2, 3)):
        raise ValueError(f"offsets {text!r}: expected 'low:high', 'low:high:step' or a comma "
                         "list of whole video frames, e.g. -5:5 or -2,0,2")
    if ":" in text:
        lo, hi, step = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1
        if step <= 0 or lo > hi:
            raise ValueError(f"offsets {text!r}: need low <= high and step > 0")
        offsets = list(range(lo, hi + 1, step))
    else:
        offsets = numbers
    if len(set(offsets)) != len(offsets):
        raise ValueError(f"offsets {text!r}: an offset is repeated")
    return offsets


def shift_batch_visual(visual: torch.Tensor, lengths, offset: int) -> torch.Tensor:
    """Apply :func:`shift_visual` to each example of ``visual [B, Tv, ...]`` over its own
    frames (``lengths``: relative, as in :class:`~avse.data.loaders.AVBatch`), then edge-pad
    back to ``Tv`` as the collate function does.

    Example
    -------
    >>> v = torch.tensor([[0, 1, 2, 3], [5, 6, 6, 6]])
    >>> shift_batch_visual(v, torch.tensor([1.0, 0.5]), -1).tolist()
    [[1, 2, 3, 3], [6, 6, 6, 6]]
    """
    if offset == 0:
        return visual
    out, n_max = [], visual.shape[1]
    for i in range(visual.shape[0]):
        n = n_max if lengths is None else max(1, int(round(float(lengths[i]) * n_max)))
        frames = shift_visual(visual[i, :n].cpu().numpy(), offset)
        out.append(torch.from_numpy(pad_to(None, frames, n_max)[1]))
    return torch.stack(out).to(visual.device)


@torch.no_grad()
def sync_sweep(model, loader, offsets, metrics=("si_sdr", "si_sdri"), device: str = "cpu",
               progress: bool = False) -> MetricTracker:
    """Per-mixture metrics for every offset: a :class:`~avse.metrics.MetricTracker` whose rows
    carry an ``offset`` column (``tracker.summary(by="offset")`` gives the means).

    ``model``: an :class:`~avse.models.AVSEModel` (called as ``model(mixture, visual)``, as in
    the Brain's test stage); ``loader``: a list loader yielding
    :class:`~avse.data.loaders.AVBatch`. Each batch is read once and run at every offset.
    """
    model = model.to(device).eval()
    tracker = MetricTracker(metrics=list(metrics))
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="sync sweep", unit="batch")
    for batch in batches:
        batch = batch.to(device)
        for offset in offsets:
            visual = shift_batch_visual(batch.visual, batch.lengths, offset)
            estimate = model(batch.mixture, visual).estimate.detach().float()
            for i, key in enumerate(batch.keys):
                n = int(round(float(batch.lengths[i]) * estimate.shape[-1]))
                row = compute_metrics(estimate[i, :n].cpu().numpy(),
                                      batch.target[i, :n].cpu().numpy(),
                                      batch.mixture[i, :n].cpu().numpy(), metrics=metrics)
                tracker.add(key, row, offset=int(offset))
    return tracker


def summarise(tracker: MetricTracker, offsets) -> list:
    """One dict per offset: ``offset, offset_ms, count, <metric>, <metric>_std`` (and
    ``si_sdri_vs_0``, the change against offset 0, when both are there)."""
    by = tracker.summary(by="offset") if len(tracker) else {}
    rows = []
    for offset in offsets:
        summ = by.get(int(offset), {})
        row = {"offset": int(offset), "offset_ms": offset * FRAME_MS,
               "count": max([s["count"] for s in summ.values()] + [0])}
        for metric in tracker.metrics:
            stats = summ.get(metric, {"mean": float("nan"), "std": float("nan")})
            row[metric], row[metric + "_std"] = stats["mean"], stats["std"]
        rows.append(row)
    ref = next((r for r in rows if r["offset"] == 0), None)
    if ref is not None and "si_sdri" in tracker.metrics:
        for row in rows:
            row["si_sdri_vs_0"] = row["si_sdri"] - ref["si_sdri"]
    return rows


def format_table(rows) -> str:
    """Aligned text table of :func:`summarise` rows (means only)."""
    if not rows:
        return "(no offsets)"
    cols = [c for c in rows[0] if not c.endswith("_std")]
    text = [[c for c in cols]]
    for r in rows:
        text.append([f"{r[c]:+d}" if c == "offset" else f"{r[c]:+.0f}" if c == "offset_ms"
                     else str(r[c]) if c == "count" else f"{r[c]:.3f}" for c in cols])
    w = [max(len(line[i]) for line in text) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w[i]) for i, v in enumerate(line)) for line in text)


def plot_sweep(rows, path: str, title: str = "") -> bool:
    """SI-SDRi against the offset into ``path`` (png): means and a +-1 standard-error band
    (SI-SDR when the sweep has no SI-SDRi). False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "si_sdri" if "si_sdri" in rows[0] else "si_sdr"
    x = np.array([r["offset"] for r in rows])
    mean = np.array([r[metric] for r in rows], np.float64)
    sem = np.array([r[metric + "_std"] / np.sqrt(max(r["count"], 1)) for r in rows], np.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(x, mean - sem, mean + sem, alpha=0.2, label="+-1 standard error")
    ax.plot(x, mean, "o-", label=metric.replace("si_sdr", "SI-SDR"))
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_xticks(x)
    ax.set_xlabel("visual offset (video frames of 40 ms; + = video lags audio)")
    ax.set_ylabel(metric.replace("si_sdr", "SI-SDR") + " (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    top = ax.secondary_xaxis("top", functions=(lambda f: f * FRAME_MS, lambda ms: ms / FRAME_MS))
    top.set_xlabel("ms")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_outputs(rows, tracker: MetricTracker, out_dir: str, info: dict,
                  plot: bool = True) -> dict:
    """Write ``sync_sweep.{csv,json,png}`` and ``sync_sweep_utts.csv``; returns their paths
    (``png`` None when the plot was skipped)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{OUTPUT_NAME}.{ext}") for ext in ("csv", "json", "png")}
    paths["utts"] = os.path.join(out_dir, f"{OUTPUT_NAME}_utts.csv")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{k: repr(float(v)) if isinstance(v, float) else v for k, v in r.items()}
                          for r in rows])
    tracker.write_csv(paths["utts"])
    n = info.get("n_mixtures", "?")
    if not (plot and plot_sweep(rows, paths["png"], f"AV sync sweep, {n} mixtures")):
        paths["png"] = None
    clean = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
             for r in rows]
    with open(paths["json"], "w") as f:
        json.dump({**info, "frame_ms": FRAME_MS, "sign": SIGN, "metrics": tracker.metrics,
                   "sweep": clean, "plot": paths["png"] and os.path.basename(paths["png"])},
                  f, indent=2)
        f.write("\n")
    return paths


# --------------------------------------------------------------------------- experiment
class _PlainLoader(yaml.SafeLoader):
    """Reads a resolved hyperpyyaml file as plain data: every ``!tag`` keeps its node's value."""


def _plain(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_PlainLoader.add_multi_constructor("!", _plain)
_PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", _plain)


def experiment_test_set(exp_dir: str, name: str = "test") -> dict:
    """``{shards, list, noise_shards, seed, normalise}`` of ``test_sets.<name>`` in an experiment's
    ``hyperparams.yaml`` (read as plain data: nothing is built). Raises ValueError."""
    path = os.path.join(exp_dir, "hyperparams.yaml")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: {exp_dir} is not an experiment folder; give "
                         "--shards and --list")
    with open(path) as f:
        hp = yaml.load(f, Loader=_PlainLoader) or {}
    sets = hp.get("test_sets") or {}
    if name not in sets:
        raise ValueError(f"{path}: no test_sets.{name} (it has {sorted(sets) or 'none'}); pass "
                         "--test_set NAME, or --shards and --list")
    spec = sets[name]
    if spec.get("visual_from", "target") != "target":
        logger.warning("test_sets.%s uses visual_from=%s; the sweep shifts the target's own lips",
                       name, spec.get("visual_from"))
    eval_cfg = hp.get("eval_mixture_config")
    normalise = eval_cfg.get("normalise", "peak") if isinstance(eval_cfg, dict) else "peak"
    shards = spec["shards"]
    return {"shards": [shards] if isinstance(shards, str) else list(shards), "list": spec["list"],
            "noise_shards": spec.get("noise_shards"), "seed": int(hp.get("seed", 0) or 0),
            "normalise": normalise}


# --------------------------------------------------------------------------- CLI
def _offsets_arg(text):
    try:
        return parse_offsets(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _metrics_arg(text):
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown or not metrics:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {unknown or text!r}; known: "
                                         + ", ".join(ALL_METRICS))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_sync", description=__doc__.split("\nExample")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="experiment folder or exported model folder")
    p.add_argument("--shards", nargs="+", help="shard split folder(s) holding the list's "
                   "utterances (default: the experiment's test set)")
    p.add_argument("--list", help="VoxMix csv (default: the experiment's test set list)")
    p.add_argument("--noise_shards", nargs="+", help="noise shard folder(s) for lists with noise "
                   "tuples (default: the experiment test set's noise_shards)")
    p.add_argument("--test_set", default="test", help="which test_sets entry of the experiment")
    p.add_argument("--set", dest="set_name", default="test",
                   help="rows of this mixture set (a list holding one set is used whole)")
    p.add_argument("--offsets", type=_offsets_arg, default=parse_offsets("-5:5"),
                   help="video frames: low:high[:step] or a comma list (default -5:5); " + SIGN)
    p.add_argument("--max_mixtures", type=int, default=None, help="first N rows only")
    p.add_argument("--metrics", type=_metrics_arg, default=["si_sdr", "si_sdri"],
                   help="comma list out of " + ", ".join(ALL_METRICS) + " (default si_sdr,si_sdri)")
    p.add_argument("--out_dir", help="default <model>/eval")
    p.add_argument("--batch_size", type=int, default=1, help="1: exact full-length mixtures")
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=None,
                   help="list-mode seed (default: the experiment's)")
    p.add_argument("--normalise", default=None, choices=["peak", "peak_separate", "none"],
                   help="mixture normalisation (default: the experiment's, else peak)")
    p.add_argument("--key", default="si_sdr", help="checkpoint selection key (experiment folder)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no_plot", action="store_true")
    p.add_argument("--noprogressbar", action="store_true")
    return p


def run(args) -> dict:
    """The sweep for parsed arguments; returns ``{"rows", "paths", "tracker"}``."""
    from avse.data.lists import read_list
    from avse.data.loaders import make_list_loader, select_rows
    from avse.data.mixing import MixtureConfig
    from avse.models.io import load_model

    spec = {"shards": args.shards, "list": args.list, "noise_shards": None, "seed": 0,
            "normalise": "peak"}
    if not (args.shards and args.list):
        found = experiment_test_set(args.model, args.test_set)
        spec.update({k: v for k, v in found.items() if k in ("noise_shards", "seed", "normalise")})
        spec["shards"], spec["list"] = args.shards or found["shards"], args.list or found["list"]
    if not os.path.isfile(spec["list"]):
        raise ValueError(f"mixture list {spec['list']} not found")
    seed = spec["seed"] if args.seed is None else args.seed
    normalise = spec["normalise"] if args.normalise is None else args.normalise
    normalise = None if normalise in (None, "none") else normalise
    rows = select_rows(read_list(spec["list"]), args.set_name, spec["list"])
    if args.max_mixtures is not None:
        rows = rows[:args.max_mixtures]
    model = load_model(args.model, key=args.key)
    loader = make_list_loader(spec["shards"], rows, stage="test",
                              config=MixtureConfig(crop_seconds=None, normalise=normalise),
                              batch_size=args.batch_size, num_workers=args.num_workers, seed=seed,
                              noise_dirs=args.noise_shards or spec["noise_shards"])
    tracker = sync_sweep(model, loader, args.offsets, args.metrics, args.device,
                         progress=not args.noprogressbar and sys.stderr.isatty())
    summary = summarise(tracker, args.offsets)
    info = {"model": args.model, "list": spec["list"], "shards": list(spec["shards"]),
            "n_mixtures": len(rows), "offsets": list(args.offsets)}
    out_dir = args.out_dir or os.path.join(args.model, "eval")
    paths = write_outputs(summary, tracker, out_dir, info, plot=not args.no_plot)
    return {"rows": summary, "paths": paths, "tracker": tracker}


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    for i in range(len(argv) - 1):  # "--offsets -5:5": argparse takes "-5:5" for an option
        if argv[i] == "--offsets":
            argv[i:i + 2] = [f"--offsets={argv[i + 1]}"]
            break
    args = parser.parse_args(argv)
    if args.list is not None and not os.path.isfile(args.list):
        parser.error(f"--list {args.list}: no such file")
    for d in args.shards or []:
        if not os.path.isdir(d):
            parser.error(f"--shards {d}: no such folder")
    if args.max_mixtures is not None and args.max_mixtures < 1:
        parser.error(f"--max_mixtures must be >= 1, got {args.max_mixtures}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from avse.data.shards import ShardError
    from avse.models.io import ModelLoadError

    try:
        result = run(args)
    except (ModelLoadError, ShardError, ValueError, OSError) as err:
        print(f"eval_sync: error: {err}", file=sys.stderr)
        return 2
    rows, paths = result["rows"], result["paths"]
    print(f"AV sync sweep over {rows[0]['count'] if rows else 0} mixture(s); {SIGN}; "
          f"1 frame = {FRAME_MS:.0f} ms")
    print(format_table(rows))
    written = [paths[k] for k in ("csv", "json", "utts", "png") if paths[k]]
    print("wrote " + ", ".join(written))
    if paths["png"] is None and not args.no_plot:
        print("plot skipped: matplotlib is not installed (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
