"""Per architecture: parameters, algorithmic latency (look-ahead + block, ms; "utterance" for
a non-causal model), training-step time (batch 2 x 4 s), inference time and
real-time factor (batch 1 x 4 s), and peak memory, on CPU with 2 threads.

    python benchmarks/models.py                          # every egs/voxceleb2/hparams/*.yaml
    python benchmarks/models.py --archs dprnn seanet --repeats 3
    python benchmarks/models.py --yaml egs/synthetic/hparams/demo.yaml \
        --yaml egs/synthetic/hparams/demo_causal.yaml      # any experiment yaml
    # side by side with the reference implementation (a local checkout, not part of AVSE):
    python benchmarks/models.py --archs seanet \
        --reference seanet=/path/to/SEANet/model/seanet.py:seanet

    # mixed precision on both sides (torch.autocast bf16; the reference trains with AMP):
    python benchmarks/models.py --precision bf16 --reference ...

Each architecture runs in its own process so that peak memory (max RSS) is its own. With
``--precision bf16`` the last column gives how far our bf16 inference output is from our
fp32 one (SI-SDR in dB between the two, higher = closer; fp32 rounding alone is > 100 dB).
Prints numbers; asserts nothing.
"""
import argparse
import glob
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS, SR, FPS = 4.0, 16000, 25


def _inputs(batch, visual_input, torch):
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(batch, int(SECONDS * SR), generator=g)
    frames = int(SECONDS * FPS)
    if visual_input == "emb":
        vis = torch.randn(batch, frames, 512, generator=g)
    else:
        vis = torch.randint(0, 255, (batch, frames, 88, 88), dtype=torch.uint8, generator=g)
    return mix, vis


def _timeit(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _outputs_sum(out, torch):
    if hasattr(out, "estimate"):
        parts = [out.estimate, *out.intermediate]
        for v in out.aux.values():
            parts.extend(v if isinstance(v, (list, tuple)) else [v])
    else:
        parts = list(out) if isinstance(out, (list, tuple)) else [out]
    return sum(p.float().square().mean() for p in parts if torch.is_tensor(p) and p.is_floating_point())


def measure(build, visual_input, repeats, ours: bool, precision: str = "fp32",
            threads: int = 2) -> dict:
    import contextlib

    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]

    def autocast():
        return (torch.autocast("cpu", dtype=dtype) if dtype is not None
                else contextlib.nullcontext())

    model = build()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mix2, vis2 = _inputs(2, visual_input, torch)
    mix1, vis1 = _inputs(1, visual_input, torch)

    import inspect

    wants_m = not ours and "M" in inspect.signature(model.forward).parameters

    def call(mix, vis, **kw):  # the reference's dprnn/seanet take the batch size as M
        return model(mix, vis, M=mix.shape[0]) if wants_m else model(mix, vis, **kw)

    def train_step():
        model.train()
        with autocast():
            out = call(mix2, vis2, return_intermediate=True) if ours else call(mix2, vis2)
            loss = _outputs_sum(out, torch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad(), autocast():
            return call(mix1, vis1)

    train_s = _timeit(train_step, repeats)
    infer_s = _timeit(infer, repeats)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"params_m": params / 1e6, "train_step_s": train_s, "infer_s": infer_s,
              "rtf": infer_s / SECONDS, "peak_rss_mb": rss_mb}
    if ours and dtype is not None:
        from avse.metrics import si_sdr

        model.eval()
        with torch.no_grad():
            full = call(mix1, vis1)
            with autocast():
                low = call(mix1, vis1)
        result["vs_fp32_db"] = float(si_sdr(low.estimate.float(), full.estimate.float()).mean())
    return result


def _child(args):
    """Run one measurement in this process and print it as json."""
    if args.child_kind == "ours":
        from hyperpyyaml import load_hyperpyyaml

        with open(args.child_target) as f:
            hp = load_hyperpyyaml(f, {"data_folder": "unused"})
        model = hp["model"]
        result = measure(lambda: model, model.visual_input, args.repeats, ours=True,
                         precision=args.precision, threads=args.threads)
        latency = getattr(model, "latency_ms", None)
        result["latency_ms"] = latency() if callable(latency) else None  # None: non-causal
    else:
        path, _, factory = args.child_target.rpartition(":")
        spec = importlib.util.spec_from_file_location("reference_model", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, os.path.dirname(path))
        spec.loader.exec_module(module)
        result = measure(getattr(module, factory), "emb", args.repeats, ours=False,
                         precision=args.precision, threads=args.threads)
    print("RESULT " + json.dumps(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", nargs="*", help="yaml names under egs/voxceleb2/hparams (default all)")
    p.add_argument("--yaml", action="append", default=[],
                   help="another experiment yaml to measure (e.g. egs/synthetic/hparams/"
                        "demo_causal.yaml); its name is the file name")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: torch.autocast on CPU for both implementations")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--reference", action="append", default=[],
                   help="ARCH=/path/to/module.py:factory of a reference implementation")
    p.add_argument("--child_kind", help=argparse.SUPPRESS)
    p.add_argument("--child_target", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_kind:
        return _child(args)
    yamls = sorted(glob.glob(os.path.join(REPO, "egs", "voxceleb2", "hparams", "*.yaml")))
    names = {os.path.basename(y)[:-5]: y for y in yamls}
    extra = {os.path.basename(y)[:-5]: os.path.abspath(y) for y in args.yaml}
    names.update(extra)
    archs = (args.archs or ([] if extra else sorted(set(names) - set(extra)))) + [
        a for a in extra if a not in (args.archs or [])]
    refs = dict(r.split("=", 1) for r in args.reference)
    rows = []
    for arch in archs:
        if arch not in names:
            sys.exit(f"unknown arch {arch!r}; known: {sorted(names)}")
        jobs = [("ours", names[arch])] + ([("reference", refs[arch])] if arch in refs else [])
        for kind, target in jobs:
            proc = subprocess.run([sys.executable, __file__, "--child_kind", kind, "--child_target",
                                   target, "--repeats", str(args.repeats), "--precision",
                                   args.precision, "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{arch} ({kind}) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append((arch, kind, json.loads(line[0][7:])))
    print(f"{'arch':<14}{'impl':<11}{'params M':>9}{'latency ms':>12}{'train step s':>14}"
          f"{'infer s':>9}{'RTF':>7}{'peak MB':>9}"
          + (f"{'vs fp32 dB':>12}" if args.precision != "fp32" else ""))
    for arch, kind, r in rows:
        dev = f"{r['vs_fp32_db']:>12.1f}" if "vs_fp32_db" in r else ""
        lat = r.get("latency_ms")
        lat = "utterance" if lat is None else f"{lat:.1f}"  # non-causal: the whole utterance
        print(f"{arch:<14}{kind:<11}{r['params_m']:>9.2f}{lat:>12}{r['train_step_s']:>14.2f}"
              f"{r['infer_s']:>9.2f}{r['rtf']:>7.2f}{r['peak_rss_mb']:>9.0f}{dev}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
