#!/usr/bin/env python
"""Write a synthetic talking-face corpus (VoxCeleb2 / LRS2 layout) or MUSAN-like noise.

Usage::

    python tools/make_synthetic_corpus.py --out data/synth_vox2 --speakers 100 --clips 10 --nj 2
    python tools/make_synthetic_corpus.py --out data/synth_lrs2 --layout lrs2 --speakers 20 --clips 5
    python tools/make_synthetic_corpus.py --out data/synth_musan --layout musan --clips 10

See :mod:`avse.data.synthetic` for the layouts and options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avse.data.synthetic import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
