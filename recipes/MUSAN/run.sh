#!/usr/bin/env bash
# MUSAN -> noise shards (pieces <= 10 s; train/val/test disjoint by source file).
# Stages: 1 manifest, 2 pieces, 3 shards.
# Usage: run.sh --corpus_dir DIR --out_dir DIR [--stage N] [--stop_stage M] [--nj J]
#          [--retry_rejected true]   # re-probe what an earlier run rejected
#          [--max_seconds 10] [--min_seconds 1] [--val_fraction 0.1] [--test_fraction 0.1]
#          [--shard_size N] [--shard_multiple N] [--seed S]
set -euo pipefail
retry_rejected=false  # true: probe again the files an earlier run rejected
stage=1 stop_stage=3 nj=4 corpus_dir= out_dir= max_seconds=10 min_seconds=1 val_fraction=0.1
test_fraction=0.1 shard_size=1000 shard_multiple=1 seed=0
known=" retry_rejected stage stop_stage nj corpus_dir out_dir max_seconds min_seconds val_fraction test_fraction shard_size shard_multiple seed "
. "$(dirname "$0")/../parse_options.sh" "$@"
retry=(); [ "$retry_rejected" = true ] && retry=(--retry_rejected)
prep="${PYTHON:-python} -m avse.recipes.musan"
cut=(--max_seconds "$max_seconds" --min_seconds "$min_seconds")
if run 1; then
  $prep manifest --corpus_dir "$corpus_dir" --out_dir "$out_dir" --nj "$nj" --seed "$seed" "${retry[@]}" \
    --val_fraction "$val_fraction" --test_fraction "$test_fraction"
fi
if run 2; then $prep pieces --out_dir "$out_dir" --nj "$nj" "${retry[@]}" "${cut[@]}"; fi
if run 3; then
  $prep shards --out_dir "$out_dir" --seed "$seed" "${cut[@]}" --shard_size "$shard_size" \
    --shard_multiple "$shard_multiple"
fi
