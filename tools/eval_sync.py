#!/usr/bin/env python
"""Evaluate a model with the lips shifted by -5..+5 video frames (AV synchronisation sweep).

Usage::

    python tools/eval_sync.py --model exp/demo/train                 # the experiment's test list
    python tools/eval_sync.py --model MODEL_DIR --shards DIR/shards/test \\
        --list DIR/lists/voxmix_2mix.csv --offsets -5:5 --max_mixtures 200

Positive offset = video lags audio. The same as ``python -m avse.evaluation.sync_sweep`` and
``avse-eval-sync``; see :mod:`avse.evaluation.sync_sweep` for the outputs and options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avse.evaluation.sync_sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
