#!/usr/bin/env bash
# LRS2-BBC -> WebDataset shards (transcripts, token ids) + VoxMix lists.
# Stages: 1 manifest, 2 extract, 3 tokens, 4 shards, 5 lists, 6 embed (with --frontend).
# Usage: run.sh --corpus_dir DIR --out_dir DIR [--stage N] [--stop_stage M] [--nj J]
#          [--retry_rejected true]   # re-probe what an earlier run rejected
#          [--splits pretrain,train,val,test] [--vocab_size 500] [--shard_size N] [--shard_multiple N]
#          [--mixtures train:20000,val:5000,test:3000] [--num_speakers 2,3] [--seed S]
#          [--frontend FILE [--preset NAME] [--device cpu]]   # lip embeddings -> OUT/shards_emb
set -euo pipefail
retry_rejected=false  # true: probe again the files an earlier run rejected
stage=1 stop_stage=6 nj=4 corpus_dir= out_dir= splits=pretrain,train,val,test vocab_size=500
shard_size=1000 shard_multiple=8 mixtures=train:20000,val:5000,test:3000 num_speakers=2,3 seed=0
frontend= preset= device=cpu
known=" retry_rejected frontend preset device stage stop_stage nj corpus_dir out_dir splits vocab_size shard_size shard_multiple mixtures num_speakers seed "
. "$(dirname "$0")/../parse_options.sh" "$@"
retry=(); [ "$retry_rejected" = true ] && retry=(--retry_rejected)
prep="${PYTHON:-python} -m avse.recipes.lrs2"
if run 1; then $prep manifest --corpus_dir "$corpus_dir" --out_dir "$out_dir" --nj "$nj" --splits "$splits" "${retry[@]}"; fi
if run 2; then $prep extract --out_dir "$out_dir" --nj "$nj" "${retry[@]}"; fi
if run 3; then $prep tokens --out_dir "$out_dir" --vocab_size "$vocab_size"; fi
if run 4; then
  $prep shards --out_dir "$out_dir" --shard_size "$shard_size" --shard_multiple "$shard_multiple" --seed "$seed"
fi
if run 5; then
  $prep lists --out_dir "$out_dir" --seed "$seed" --mixtures "$mixtures" --num_speakers ${num_speakers//,/ }
fi
if [ -n "$frontend" ] && run 6; then
  ${PYTHON:-python} -m avse.recipes.embed --out_dir "$out_dir" --frontend "$frontend" --nj "$nj" \
    --device "$device" ${preset:+--preset "$preset"}
fi
