#!/usr/bin/env bash
# LRS3 (evaluation corpus) -> WebDataset shards with transcripts + VoxMix 2-mix/3-mix test lists.
# Stages: 1 manifest, 2 extract, 3 shards, 4 lists, 5 embed (with --frontend).
# Usage: run.sh --corpus_dir DIR --out_dir DIR [--stage N] [--stop_stage M] [--nj J]
#          [--retry_rejected true]   # re-probe what an earlier run rejected
#          [--subsets test|trainval|pretrain,...] [--shard_size N] [--shard_multiple N]
#          [--mixtures test:3000] [--num_speakers 2,3] [--tokenizer spm.model] [--seed S]
#          [--frontend FILE [--preset NAME] [--device cpu]]   # lip embeddings -> OUT/shards_emb
set -euo pipefail
retry_rejected=false  # true: probe again the files an earlier run rejected
stage=1 stop_stage=5 nj=4 corpus_dir= out_dir= subsets=test tokenizer=
shard_size=1000 shard_multiple=8 mixtures=test:3000 num_speakers=2,3 seed=0
frontend= preset= device=cpu
known=" retry_rejected frontend preset device stage stop_stage nj corpus_dir out_dir subsets shard_size shard_multiple mixtures num_speakers tokenizer seed "
. "$(dirname "$0")/../parse_options.sh" "$@"
retry=(); [ "$retry_rejected" = true ] && retry=(--retry_rejected)
prep="${PYTHON:-python} -m avse.recipes.lrs3"
if run 1; then $prep manifest --corpus_dir "$corpus_dir" --out_dir "$out_dir" --nj "$nj" --subsets "$subsets" "${retry[@]}"; fi
if run 2; then $prep extract --out_dir "$out_dir" --nj "$nj" "${retry[@]}"; fi
if run 3; then
  $prep shards --out_dir "$out_dir" --shard_size "$shard_size" --shard_multiple "$shard_multiple" --seed "$seed" \
    ${tokenizer:+--tokenizer "$tokenizer"}
fi
if run 4; then
  $prep lists --out_dir "$out_dir" --seed "$seed" --mixtures "$mixtures" --num_speakers ${num_speakers//,/ }
fi
if [ -n "$frontend" ] && run 5; then
  ${PYTHON:-python} -m avse.recipes.embed --out_dir "$out_dir" --frontend "$frontend" --nj "$nj" \
    --device "$device" ${preset:+--preset "$preset"}
fi
