"""Visual front-ends on CPU: frames per second of each registered front-end (random weights,
eval mode, no gradients), one clip of ``--frames`` frames at the front-end's ROI size.

    python benchmarks/frontends.py                          # all front-ends, 25 frames
    python benchmarks/frontends.py --frontends cnn dlr --frames 50 --threads 2 --device cuda

``cnn`` is the demo's small CPU front-end (88x88), ``resnet18`` the 3-D stem + ResNet-18
trunk (88x88), ``dlr`` the published deep-lip-reading front-end (112x112, about 0.3 GFLOP
per frame). Real time is 25 frames/s. Prints numbers; asserts nothing.
"""
import argparse
import time


def bench(name, frames, repeats, device):
    import torch

    from avse.models.frontends import build_frontend

    torch.manual_seed(0)
    fe = build_frontend(name).eval().to(device)
    x = torch.randint(0, 256, (1, frames, fe.roi_size, fe.roi_size), dtype=torch.uint8,
                      device=device)
    with torch.inference_mode():
        fe(x)  # warm-up
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            fe(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    best = min(times)
    return {"frontend": name, "roi": fe.roi_size, "frame_dim": fe.frame_dim,
            "params_m": sum(p.numel() for p in fe.parameters()) / 1e6,
            "frames_per_s": frames / best, "ms_per_frame": 1e3 * best / frames}


def main(argv=None):
    import torch

    from avse.models.registry import known

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frontends", nargs="+", default=None,
                   help="front-end names (default: every registered one)")
    p.add_argument("--frames", type=int, default=25, help="frames per clip (default 25)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs, best kept (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.frontends or known("frontend")
    print(f"front-ends on {args.device} ({torch.get_num_threads()} threads), "
          f"{args.frames} frames per clip, best of {args.repeats}")
    print(f"{'frontend':<10} {'roi':>4} {'dim':>4} {'params':>8} {'frames/s':>9} {'ms/frame':>9}")
    for name in names:
        r = bench(name, args.frames, args.repeats, args.device)
        print(f"{r['frontend']:<10} {r['roi']:>4} {r['frame_dim']:>4} {r['params_m']:>7.2f}M "
              f"{r['frames_per_s']:>9.1f} {r['ms_per_frame']:>9.2f}")


if __name__ == "__main__":
    main()
