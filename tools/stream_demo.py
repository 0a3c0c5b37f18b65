#!/usr/bin/env python
"""Replay a face-centred clip in real time through the streaming path (no camera needed).

Usage::

    python tools/stream_demo.py --model exp/demo_causal/train --video clip.mp4 --out live.wav
        [--mixture mix.wav] [--block_ms 10] [--fast] [--threads 1]

Each 10 ms block is pushed when it would have been captured; writes ``live.wav``,
``live.json`` (per-block compute time, real-time factor, the model's and the stream's
latency, and the measured capture-to-output latency) and ``live.mp4`` (the clip with the
extracted voice). See :func:`avse.stream_demo.replay`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avse.stream_demo import replay_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(replay_main())
