"""onnxruntime against PyTorch on CPU, one thread, per architecture: compute time per second
of audio (batch 1, 4 s input, median of ``--repeats``), side by side, and the largest
difference between the two outputs (with the output's peak |x| for scale). Each model is
exported with ``avse-export``'s code (:func:`avse.export.export_model`, traced at 2 s, so 4 s
also checks the dynamic axes); an architecture that does not export is listed with the reason.
Then the streaming step of the causal models (``avse-export --stream_block 160``,
:func:`avse.export_stream.export_stream`): ms of compute per 10 ms block, the PyTorch
:class:`~avse.streaming.step.StreamStep` against its ONNX graph in onnxruntime (and the
visual step per video frame), and the largest difference of the streamed outputs.

    python benchmarks/export.py                       # every architecture and stream below
    python benchmarks/export.py --archs demo convtasnet --streams demo_causal --repeats 5
    python benchmarks/export.py --archs --streams demo_causal   # the stream step only

Sizes: ``demo`` is egs/synthetic/hparams/demo.yaml's model (conv 64 / cnn / TCN 6x2, with its
activity head), the others egs/models/*.yaml at their published sizes, except that
every visual encoder reads 512-d embeddings. ``demo_causal`` is
egs/synthetic/hparams/demo_causal.yaml's model, ``convtasnet_causal`` and ``dprnn_causal``
egs/models/*_causal.yaml's.
Untrained weights (timing does not depend on them). Prints numbers; asserts nothing.
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

CLN = {"norm": "cln"}
STREAMS = {
    "demo_causal": ({"type": "conv", "out_channels": 64, "kernel_size": 32},
                    {"type": "cnn", "out_dim": 64, **CLN},
                    {"type": "tcn", "bottleneck": 64, "hidden": 128, "num_blocks": 6,
                     "num_repeats": 2, **CLN}, "concat"),
    "convtasnet_causal": (CONV, {"type": "embedding", **CLN},
                          {"type": "tcn", "bottleneck": 256, "hidden": 512, "kernel_size": 3,
                           "num_blocks": 8, "num_repeats": 4, **CLN}, "concat"),
    "dprnn_causal": (CONV, {"type": "embedding", **CLN},
                     {"type": "dprnn", "bottleneck": 64, "hidden": 128, "chunk_size": 100,
                      "num_layers": 6, "padding": "reference"}, LINEAR),
}
BLOCK = 160  # 10 ms
STREAM_SECONDS = 2.0


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


def bench_stream(name, folder):
    import torch

    from avse.export_stream import OnnxStream, export_stream
    from avse.models import AVSEModel
    from avse.streaming import StreamStep, VisualStep

    audio, visual, sep, fusion = STREAMS[name]
    torch.manual_seed(0)
    model = AVSEModel(audio, visual, sep, fusion=fusion, causal=True).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    path = os.path.join(folder, f"{name}.onnx")
    start = time.perf_counter()
    info = export_stream(model, path, BLOCK)
    export_s = time.perf_counter() - start
    spf = info["samples_per_video_frame"]
    length = int(STREAM_SECONDS * 16000)
    gen = torch.Generator().manual_seed(1)
    mixture = torch.randn(1, length, generator=gen)
    frames = (torch.randn(1, length // spf, 512, generator=gen) if model.visual_input == "emb"
              else torch.randint(0, 256, (1, length // spf, 88, 88), generator=gen,
                                 dtype=torch.uint8))
    audio_step, visual_step = StreamStep(model, BLOCK), VisualStep(model)
    blocks = length // BLOCK
    per_frame = spf // BLOCK

    def frame_of(b):
        return frames[:, b // per_frame:b // per_frame + 1]

    with torch.no_grad():
        for run in range(2):  # the first: warm-up
            v_states, a_states = visual_step.initial_states(1), audio_step.initial_states(1)
            t_torch_vis, t_torch, outs = [], [], []
            for b in range(blocks):
                if b % per_frame == 0:
                    start = time.perf_counter()
                    vfeat, *v_states = visual_step(frame_of(b), *v_states)
                    t_torch_vis.append(time.perf_counter() - start)
                start = time.perf_counter()
                out, *a_states = audio_step(mixture[:, b * BLOCK:(b + 1) * BLOCK], vfeat,
                                            *a_states)
                t_torch.append(time.perf_counter() - start)
                outs.append(out)
        ref = torch.cat(outs, -1)
    stream = OnnxStream(path, batch=1, threads=1)
    stream.push(mixture[:, :BLOCK], frame_of(0))  # warm-up
    stream.reset()
    onnx_out, t_ort, t_ort_vis = [], [], []
    for b in range(blocks):
        if b % per_frame == 0:
            start = time.perf_counter()
            stream.see(frame_of(b))
            t_ort_vis.append(time.perf_counter() - start)
        start = time.perf_counter()
        onnx_out.append(stream.push(mixture[:, b * BLOCK:(b + 1) * BLOCK]))
        t_ort.append(time.perf_counter() - start)
    got = torch.cat(onnx_out, -1)
    ms = statistics.median
    return {"name": name, "params": params, "export_s": export_s,
            "torch_ms": 1000 * ms(t_torch), "ort_ms": 1000 * ms(t_ort),
            "torch_p95": 1000 * sorted(t_torch)[int(0.95 * len(t_torch))],
            "ort_p95": 1000 * sorted(t_ort)[int(0.95 * len(t_ort))],
            "torch_vis_ms": 1000 * ms(t_torch_vis), "ort_vis_ms": 1000 * ms(t_ort_vis),
            "latency_ms": info["latency_ms"], "states": len(info["step"]["states"]),
            "diff": (got - ref).abs().max().item(), "peak": ref.abs().max().item()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="*", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--streams", nargs="*", default=list(STREAMS), choices=list(STREAMS))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows, streams = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.archs:
            row = bench(name, args.repeats, folder)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
        for name in args.streams:
            row = bench_stream(name, folder)
            streams.append(row)
            print(row, file=sys.stderr, flush=True)
    if streams:
        print(f"\nStreaming step, CPU, 1 thread, batch 1, {BLOCK}-sample (10 ms) blocks over "
              f"{STREAM_SECONDS:g} s; ms of compute per block (median, p95; the visual step per video frame apart)")
        print(f"{'model':<18} {'params M':>8} {'latency':>8} {'torch':>7} {'onnxrt':>7} "
              f"{'p95 t':>6} {'p95 o':>6} {'vis t':>6} {'vis o':>6} {'max |diff|':>10} "
              f"{'peak':>6}")
        for r in streams:
            print(f"{r['name']:<18} {r['params']:8.2f} {r['latency_ms']:6.1f}ms "
                  f"{r['torch_ms']:7.2f} {r['ort_ms']:7.2f} {r['torch_p95']:6.2f} "
                  f"{r['ort_p95']:6.2f} {r['torch_vis_ms']:6.2f} {r['ort_vis_ms']:6.2f} "
                  f"{r['diff']:10.1e} {r['peak']:6.2f}")
    if not rows:
        return
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
