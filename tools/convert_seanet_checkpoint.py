#!/usr/bin/env python
"""Convert a TaoRuijie/SEANet trainer checkpoint into an AVSE model folder.

Usage::

    python tools/convert_seanet_checkpoint.py --arch {seanet,dprnn,muse,avsep} \
        --checkpoint FILE --out DIR

Then ``avse.models.load_model(DIR)`` or ``AVSEExtractor.from_hparams(source=DIR)``. See
:mod:`avse.models.reference.cli`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avse.models.reference.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
