#!/usr/bin/env python3
"""Train and evaluate an AVSE model on shards (see avse/experiment.py).

    python egs/synthetic/train.py egs/synthetic/hparams/demo.yaml --data_folder data/synthetic/prepared
    torchrun --standalone --nproc_per_node=2 egs/synthetic/train.py hparams/demo.yaml \
        --data_folder DIR --device=cpu --distributed_backend=gloo
"""
import sys

from avse.experiment import main

if __name__ == "__main__":
    main(sys.argv[1:])
