#!/usr/bin/env bash
# TCD-TIMIT (evaluation corpus) -> WebDataset shards (face tracked) + 2-mix/3-mix test lists,
# volunteers and lipspeakers kept apart. Stages: 1 manifest, 2 extract, 3 shards, 4 lists.
# Usage: run.sh --corpus_dir DIR --out_dir DIR [--stage N] [--stop_stage M] [--nj J]
#          [--retry_rejected true]   # re-probe what an earlier run rejected
#          [--prompts TIMIT/DOC/PROMPTS.TXT]   # the clips' text in the shards' json
#          [--subsets volunteers,lipspeakers] [--crop face|landmarks|lipread]
#          [--detector_device cpu|cuda|cuda:N]   # the face detector's device (stage 2)
#          [--shard_size N] [--shard_multiple N]
#          [--mixtures volunteers:3000,lipspeakers:1000] [--num_speakers 2,3] [--seed S]
set -euo pipefail
retry_rejected=false prompts=
stage=1 stop_stage=4 nj=4 corpus_dir= out_dir= subsets=volunteers,lipspeakers crop=face detector_device=cpu
shard_size=1000 shard_multiple=8 mixtures=volunteers:3000,lipspeakers:1000 num_speakers=2,3 seed=0
known=" retry_rejected detector_device prompts stage stop_stage nj corpus_dir out_dir subsets crop shard_size shard_multiple mixtures num_speakers seed "
. "$(dirname "$0")/../parse_options.sh" "$@"
retry=(); [ "$retry_rejected" = true ] && retry=(--retry_rejected)
texts=(); [ -n "$prompts" ] && texts=(--prompts "$prompts")
prep="${PYTHON:-python} -m avse.recipes.tcdtimit"
if run 1; then $prep manifest --corpus_dir "$corpus_dir" --out_dir "$out_dir" --nj "$nj" --subsets "$subsets" "${retry[@]}" "${texts[@]}"; fi
if run 2; then $prep extract --out_dir "$out_dir" --nj "$nj" --crop "$crop" --detector_device "$detector_device" "${retry[@]}"; fi
if run 3; then
  $prep shards --out_dir "$out_dir" --shard_size "$shard_size" --shard_multiple "$shard_multiple" --seed "$seed"
fi
if run 4; then
  $prep lists --out_dir "$out_dir" --seed "$seed" --mixtures "$mixtures" --num_speakers ${num_speakers//,/ }
fi
