"""Audio-visual synchronisation sweep: a model's SI-SDR(i) with the lips offset by k frames.

For each offset (video frames, 1 frame = 640 samples = 40 ms) every mixture of a VoxMix
list is extracted with the target's visual stream moved by
:func:`avse.data.mixing.shift_visual` (positive = the video lags the audio, negative = it
leads; edge-padded, so lengths do not change), and SI-SDR / SI-SDRi are averaged per
offset. Batches come from :func:`avse.data.loaders.make_list_loader` (stage ``test``)
and are scored by :func:`avse.evaluation.scoring.score_loader` (the scorer of the Brain's
test stage), so offset 0 reproduces the experiment's own evaluation of the same list::

    python -m avse.evaluation.sync_sweep --model exp/demo/train         # its test list
    python tools/eval_sync.py --model exp/demo/train                    # the same
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
``sync_sweep.png`` (not with ``--no_plot``); prints the table.

Example
-------
>>> parse_offsets("-2:2"), parse_offsets("-4:4:4"), parse_offsets("3,-1")
([-2, -1, 0, 1, 2], [-4, 0, 4], [3, -1])
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

import torch
import yaml

from avse.data.mixing import pad_to, shift_visual
from avse.evaluation.registry import METRICS, check_metrics
from avse.evaluation.report import FRAME_MS, MetricTracker, format_table, plot_sweep, write_table
from avse.evaluation.scoring import score_loader

logger = logging.getLogger(__name__)

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


def sync_sweep(model, loader, offsets, metrics=("si_sdr", "si_sdri"), device: str = "cpu",
               progress: bool = False) -> MetricTracker:
    """Per-mixture metrics for every offset: a :class:`~avse.evaluation.report.MetricTracker`
    whose rows carry an ``offset`` column (``tracker.summary(by="offset")`` gives the means).

    ``model``: an :class:`~avse.models.AVSEModel`; ``loader``: a list loader yielding
    :class:`~avse.data.loaders.AVBatch`; ``metrics``: names or a
    :class:`~avse.evaluation.scoring.Scorer`. Each batch is read once and run at every offset
    (:func:`~avse.evaluation.scoring.score_loader` with one visual variant per offset).
    """
    variants = [({"offset": int(k)}, functools.partial(shift_batch_visual, offset=int(k)))
                for k in offsets]
    return score_loader(model, loader, metrics, variants, device, progress, desc="sync sweep")


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


def sweep_table(rows) -> str:
    """Aligned text table of :func:`summarise` rows (means only)."""
    if not rows:
        return "(no offsets)"
    return format_table(rows, [c for c in rows[0] if not c.endswith("_std")],
                        {"offset": "{:+d}", "offset_ms": "{:+.0f}"}, digits=3)


def write_outputs(rows, tracker: MetricTracker, out_dir: str, info: dict,
                  plot: bool = True) -> dict:
    """Write ``sync_sweep.{csv,json,png}`` and ``sync_sweep_utts.csv``; returns their paths
    (``png`` None without ``plot``)."""
    stem = os.path.join(out_dir, OUTPUT_NAME)
    paths = {ext: f"{stem}.{ext}" for ext in ("csv", "json", "png")}
    paths["utts"] = f"{stem}_utts.csv"
    n = info.get("n_mixtures", "?")
    if plot:
        os.makedirs(out_dir, exist_ok=True)
        plot_sweep(rows, paths["png"], f"AV sync sweep, {n} mixtures")
    else:
        paths["png"] = None
    report = {**info, "frame_ms": FRAME_MS, "sign": SIGN, "metrics": tracker.metrics,
              "sweep": rows, "plot": paths["png"] and os.path.basename(paths["png"])}
    write_table(rows, out_dir, OUTPUT_NAME, ("csv", "json"), data=report)
    tracker.write_csv(paths["utts"])
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
    if not metrics:
        raise argparse.ArgumentTypeError(f"no metric in {text!r}; known: {', '.join(METRICS)}")
    try:
        return list(check_metrics(metrics))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
                   help="comma list out of " + ", ".join(METRICS) + " (default si_sdr,si_sdri)")
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
    from avse.models.io import load_inference_config, load_model

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
                              mouth_crop=load_inference_config(args.model).get("crop"),
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
    print(sweep_table(rows))
    written = [paths[k] for k in ("csv", "json", "utts", "png") if paths[k]]
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
