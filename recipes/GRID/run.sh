#!/usr/bin/env bash
# GRID (evaluation corpus) -> WebDataset test shards with word timings + 2-mix/3-mix test lists.
# Stages: 1 manifest, 2 extract (face tracked), 3 shards, 4 lists.
# Usage: run.sh --corpus_dir DIR --out_dir DIR [--stage N] [--stop_stage M] [--nj J]
#          [--retry_rejected true]   # re-probe what an earlier run rejected
#          [--crop face|landmarks|lipread] [--shard_size N] [--shard_multiple N]
#          [--detector_device cpu|cuda|cuda:N]   # the face detector's device (stage 2)
#          [--mixtures test:3000] [--num_speakers 2,3] [--seed S]
set -euo pipefail
retry_rejected=false
stage=1 stop_stage=4 nj=4 corpus_dir= out_dir= crop=face detector_device=cpu
shard_size=1000 shard_multiple=8 mixtures=test:3000 num_speakers=2,3 seed=0
known=" retry_rejected detector_device crop stage stop_stage nj corpus_dir out_dir shard_size shard_multiple mixtures num_speakers seed "
. "$(dirname "$0")/../parse_options.sh" "$@"
retry=(); [ "$retry_rejected" = true ] && retry=(--retry_rejected)
prep="${PYTHON:-python} -m avse.recipes.grid"
if run 1; then $prep manifest --corpus_dir "$corpus_dir" --out_dir "$out_dir" --nj "$nj" "${retry[@]}"; fi
if run 2; then $prep extract --out_dir "$out_dir" --nj "$nj" --crop "$crop" --detector_device "$detector_device" "${retry[@]}"; fi
if run 3; then
  $prep shards --out_dir "$out_dir" --shard_size "$shard_size" --shard_multiple "$shard_multiple" --seed "$seed"
fi
if run 4; then
  $prep lists --out_dir "$out_dir" --seed "$seed" --mixtures "$mixtures" --num_speakers ${num_speakers//,/ }
fi
