#!/usr/bin/env python3
"""Lip-reading pretraining on LRS2 shards, then test and front-end export (see avse/lipreading.py).

    python egs/lrs2/train_lipreading.py egs/lrs2/hparams/lipreading.yaml --data_folder data/lrs2
    torchrun --standalone --nproc_per_node=2 egs/lrs2/train_lipreading.py \
        egs/lrs2/hparams/lipreading.yaml --data_folder DIR --device=cpu --distributed_backend=gloo
"""
import sys

from avse.lipreading import main

if __name__ == "__main__":
    main(sys.argv[1:])
