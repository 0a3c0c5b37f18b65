#!/usr/bin/env python3
"""Train and evaluate an AVSE model on shards (see avse/experiment.py).

    python egs/voxceleb2/train.py egs/voxceleb2/hparams/dprnn.yaml --data_folder data/vox2
    torchrun --standalone --nproc_per_node=2 egs/voxceleb2/train.py egs/voxceleb2/hparams/dprnn.yaml \
        --data_folder data/vox2 --device=cpu --distributed_backend=gloo
"""
import sys

from avse.experiment import main

if __name__ == "__main__":
    main(sys.argv[1:])
