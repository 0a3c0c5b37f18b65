"""Throughput of the embedding stage (python -m avse.recipes.embed) on a synthetic
VoxCeleb2-layout corpus: clips/s and frames/s per front-end, preset and ``--nj``.

The ``voxceleb2`` preset reads the shards' 88x88 mouth crops; ``lipread`` (central 112x112 of
the face frame, the published front-end's input) decodes the source videos again. Random
weights; prints numbers, asserts nothing.

    python benchmarks/embed.py --clips 24 --frontends cnn dlr --nj 1 2 [--device cuda]
    python benchmarks/embed.py --frontend visual_frontend.pt --presets lipread
"""
import argparse
import os
import sys
import tempfile
import time


def prepare(work: str, clips: int, nj: int) -> str:
    """A prepared folder (manifest, shards) of about ``clips`` synthetic clips of ~4.5 s."""
    from avse.data.synthetic import make_voxceleb2_corpus
    from avse.recipes import stages, voxceleb2

    out = os.path.join(work, "prep")
    if not os.path.isdir(os.path.join(out, "shards")):
        speakers = max(2, clips // 4)
        make_voxceleb2_corpus(os.path.join(work, "corpus"), n_speakers=speakers,
                              n_clips=max(1, clips // speakers), seed=1, splits=("dev",),
                              nj=nj, progress=False)
        voxceleb2.stage_manifest(os.path.join(work, "corpus"), out, val_fraction=0.0, nj=nj)
        stages.stage_extract(out, nj=nj)
        stages.stage_shards(out, shard_size=8, shard_multiple=1)
    return out


def frontend_file(work: str, name: str) -> str:
    import torch

    from avse.models.frontends import build_frontend, save_frontend

    torch.manual_seed(0)
    kwargs = {"hidden": 512} if name == "cnn" else {}
    return save_frontend(build_frontend(name, **kwargs), os.path.join(work, f"{name}.pt"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--frontends", nargs="+", default=["cnn", "dlr"],
                   help="built-in front-ends with random weights")
    p.add_argument("--frontend", help="a front-end file instead (ours or visual_frontend.pt)")
    p.add_argument("--presets", nargs="+", default=["voxceleb2", "lipread"])
    p.add_argument("--nj", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch_frames", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work_dir", help="default: a temporary folder")
    args = p.parse_args(argv)
    import torch

    from avse.embed import load
    from avse.recipes.embed import stage_embed

    work = args.work_dir or tempfile.mkdtemp(prefix="avse-bench-embed-")
    out = prepare(work, args.clips, max(args.nj))
    files = [args.frontend] if args.frontend else [frontend_file(work, n) for n in args.frontends]
    print(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
          f"device {args.device}", file=sys.stderr)
    print(f"{'frontend':<10} {'preset':<10} {'nj':>3} {'clips':>6} {'clips/s':>8} {'frames/s':>9}")
    for path in files:
        fe = load(path)
        name = fe.registry_name
        for preset in args.presets:
            if getattr(fe, "exact_size", False) and preset != "lipread":
                continue  # dlr reads 112x112 only
            for nj in args.nj:
                emb_dir = f"emb_{name}_{preset}_{nj}"
                t0 = time.perf_counter()
                metas = stage_embed(out, path, preset, batch_frames=args.batch_frames,
                                    device=args.device, nj=nj, emb_dir=emb_dir)
                elapsed = time.perf_counter() - t0
                clips = sum(m["count"] for m in metas.values())
                frames = sum(m["hours"] * 3600 * 25 for m in metas.values())
                print(f"{name:<10} {preset:<10} {nj:>3} {clips:>6} {clips / elapsed:>8.1f} "
                      f"{frames / elapsed:>9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
