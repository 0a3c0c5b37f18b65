"""onnxruntime against PyTorch on CPU, one thread, per architecture: compute time per second
of audio (batch 1, 4 s input, median of ``--repeats``), side by side, and the largest
difference between the two outputs (with the output's peak |x| for scale). Each model is exported with ``avse-export``'s code
(:func:`avse.export.export_model`, traced at 2 s, so 4 s also checks the dynamic axes);
an architecture that does not export is listed with the reason.

    python benchmarks/export.py                       # every architecture below
    python benchmarks/export.py --archs demo convtasnet --repeats 5

Sizes: ``demo`` is egs/synthetic/hparams/demo.yaml's model (conv 64 / cnn / TCN 6x2, with its
activity head), the others egs/models/*.yaml at their published sizes, except that
every visual encoder reads 512-d embeddings, and MuSE is given ``visual_upsample: 32`` (what
its default, ``round(L / Tv)``, computes at 16 kHz / hop 20 / 25 fps; the default's
``round`` does not export with a dynamic length). Untrained weights (timing does not depend on
them). Prints numbers; asserts nothing.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SECONDS = 4.0
CONV = {"type": "conv", "out_channels": 256, "kernel_size": 40}
EMB = {"type": "embedding"}
LINEAR = {"type": "concat", "align": "linear"}
ARCHS = {
    "demo": ({"type": "conv", "out_channels": 64, "kernel_size": 32},
             {"type": "cnn", "out_dim": 64},
             {"type": "tcn", "bottleneck": 64, "hidden": 128, "num_blocks": 6, "num_repeats": 2},
             "concat", {"activity_head": {"hidden": 64}}),
    "convtasnet": (CONV, EMB, {"type": "tcn", "bottleneck": 256, "hidden": 512, "kernel_size": 3,
                               "num_blocks": 8, "num_repeats": 4}, "concat", {}),
    "dprnn": (CONV, EMB, {"type": "dprnn", "bottleneck": 64, "hidden": 128, "chunk_size": 100,
                          "num_layers": 6}, LINEAR, {}),
    "seanet": (CONV, EMB, {"type": "seanet", "bottleneck": 64, "hidden": 128, "chunk_size": 100,
                           "num_layers": 6, "num_heads": 4}, LINEAR, {}),
    "muse": (CONV, {"type": "embedding", "out_dim": 512, "hidden": None, "norm": "bn"},
             {"type": "muse", "bottleneck": 256, "hidden": 512, "num_blocks": 8, "num_repeats": 4,
              "num_speakers": 800, "visual_upsample": 32}, "concat", {}),
    "avsep": ({"type": "conv", "out_channels": 256, "kernel_size": 16},
              {"type": "embedding", "out_dim": 512, "hidden": None, "num_blocks": 5, "norm": "bn"},
              {"type": "avsep", "d_model": 256, "num_heads": 8, "d_ffn": 1024, "intra_layers": 5,
               "inter_layers": 6, "num_blocks": 2, "chunk_size": 160}, None, {}),
    "tfgridnet": ({"type": "stft", "n_fft": 256, "hop": 128, "win": 256}, EMB,
                  {"type": "tfgridnet", "emb_dim": 48, "hidden": 192, "num_blocks": 4,
                   "kernel": 4, "stride": 4, "num_heads": 4, "qk_dim": 512}, "film", {}),
}


def _median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name, repeats, folder):
    import torch

    from avse import export as E
    from avse.models import AVSEModel

    audio, visual, sep, fusion, extra = ARCHS[name]
    torch.manual_seed(0)
    model = AVSEModel(audio, visual, sep, fusion=fusion, **extra).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    path = os.path.join(folder, f"{name}.onnx")
    start = time.perf_counter()
    try:
        E.export_model(model, "onnx", path, seconds=2.0)
    except E.ExportError as err:
        return {"name": name, "params": params, "error": str(err)}
    export_s = time.perf_counter() - start
    mixture, vis = E.example_inputs(model, SECONDS, batch=1, seed=1)
    session = E.onnx_session(path, threads=1)
    with torch.no_grad():
        ref = model(mixture, vis).estimate
        t_torch = _median_time(lambda: model(mixture, vis), repeats)
    got = E.run_onnx(session, mixture, vis)
    t_ort = _median_time(lambda: E.run_onnx(session, mixture, vis), repeats)
    return {"name": name, "params": params, "export_s": export_s,
            "torch_ms": 1000 * t_torch / SECONDS, "ort_ms": 1000 * t_ort / SECONDS,
            "diff": (got - ref).abs().max().item(), "peak": ref.abs().max().item()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.archs:
            row = bench(name, args.repeats, folder)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    print(f"\nCPU, 1 thread, batch 1 x {SECONDS:g} s; ms of compute per second of audio")
    print(f"{'arch':<11} {'params M':>8} {'torch':>8} {'onnxrt':>8} {'ort/torch':>9} "
          f"{'max |diff|':>10} {'peak':>7}  export")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<11} {r['params']:8.2f} {'-':>8} {'-':>8} {'-':>9} {'-':>10} {'-':>7}  "
                  f"no: {r['error'][:150]}")
        else:
            print(f"{r['name']:<11} {r['params']:8.2f} {r['torch_ms']:8.1f} {r['ort_ms']:8.1f} "
                  f"{r['ort_ms'] / r['torch_ms']:9.2f} {r['diff']:10.1e} {r['peak']:7.2f}  onnx ({r['export_s']:.0f} s)")


if __name__ == "__main__":
    main()
