"""``tools/stream_demo.py``: replay a face-centred clip through the streaming path as if it
were live (:func:`replay`), and write the output with the measured latency."""
from __future__ import annotations

import logging

import numpy as np
import torch

from avse.data.align import SAMPLE_RATE
from avse.stream_extract import RealTimePace, format_stats, run_blocks


def replay(extractor, video: str, out: str, mixture: str | None = None, block_ms: float = 10.0,
           realtime: bool = True, peak: float | None = None, mux: bool = True) -> dict:
    """Replay a face-centred clip (or ``.npy`` with ``mixture``) through the streaming path as
    if it were live (``realtime``: each block pushed when it would have been captured), and
    write ``out`` (wav), ``out`` with ``.json`` (the figures) and, for an mp4 with ``mux``,
    ``out`` with ``.mp4`` (the clip with the output as its sound). Returns the figures:
    :meth:`StreamSession.stats` plus the measured latency when ``realtime``."""
    import json
    import os

    import soundfile as sf

    from avse.safe_io import OutputStage

    wav, visual = extractor.load_inputs(mixture, video)
    session = extractor.stream(peak=peak)
    block = max(1, round(block_ms * SAMPLE_RATE / 1000))
    pace = RealTimePace(block) if realtime else None
    output = run_blocks(session, wav, visual, block=block, pace=pace)
    stats = session.stats()
    stats.update({"video": os.path.abspath(video), "seconds": len(wav) / SAMPLE_RATE,
                  "realtime": bool(realtime), "threads": torch.get_num_threads()})
    if pace is not None:
        stats.update(pace.summary())
    stem = os.path.splitext(out)[0]
    with OutputStage() as stage:
        sf.write(stage.file(out), np.clip(output, -1, 1), SAMPLE_RATE, subtype="PCM_16",
                 format="WAV")
        with open(stage.file(stem + ".json"), "w") as f:
            json.dump(stats, f, indent=1)
        stage.commit()
    if mux and str(video).endswith(".mp4"):
        from avse.video.frames import probe
        from avse.video.mux import mux_audio

        info = probe(video)
        origin = info.video_start if mixture else info.audio_start
        mux_audio(video, out, stem + ".mp4", origin=origin or 0.0, info=info)
        stats["mp4"] = stem + ".mp4"
    return stats


def replay_main(argv=None) -> int:
    """``tools/stream_demo.py``: see :func:`replay`."""
    import argparse
    import sys

    from avse.extract_args import EXIT_BAD_INPUT, error_line
    from avse.inference import ERRORS, AVSEExtractor

    p = argparse.ArgumentParser(prog="stream_demo", description=replay.__doc__)
    p.add_argument("--model", required=True, help="a causal model folder (experiment/export)")
    p.add_argument("--video", required=True, help="face-centred clip (mp4) or .npy")
    p.add_argument("--mixture", help="mixture audio (default: the clip's own sound)")
    p.add_argument("--out", required=True, help="output wav (+ .json, + .mp4)")
    p.add_argument("--block_ms", type=float, default=10.0)
    p.add_argument("--fast", action="store_true", help="as fast as possible, not paced")
    p.add_argument("--no_mux", action="store_true", help="no mp4 with the output sound")
    p.add_argument("--stream_peak", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trust_model_code", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))
    try:
        extractor = AVSEExtractor.from_hparams(args.model, trust_code=args.trust_model_code)
        stats = replay(extractor, args.video, args.out, mixture=args.mixture,
                       block_ms=args.block_ms, realtime=not args.fast, peak=args.stream_peak,
                       mux=not args.no_mux)
    except ERRORS as err:
        print(error_line(err).replace("avse-extract", "stream_demo"), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.out}" + (f", {stats['mp4']}" if "mp4" in stats else ""))
    print(format_stats(stats))
    if stats.get("measured_latency_mean_ms") is not None:
        print(f"measured latency (capture to output, compute included): mean "
              f"{stats['measured_latency_mean_ms']:.1f} ms, p95 "
              f"{stats['measured_latency_p95_ms']:.1f} ms, max "
              f"{stats['measured_latency_max_ms']:.1f} ms")
    return 0
