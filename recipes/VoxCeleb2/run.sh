#!/usr/bin/env bash
# VoxCeleb2 -> WebDataset shards + VoxMix lists (+ lip-embedding shards).
# Stages: 1 manifest, 2 extract, 3 shards, 4 lists, 5 embed (with --frontend).
# Usage: run.sh --corpus_dir DIR --out_dir DIR [--stage N] [--stop_stage M] [--nj J]
#          [--retry_rejected true]   # re-probe what an earlier run rejected
#          [--visual_path DIR] [--audio_path DIR] [--lists FILE] [--shard_size N]
#          [--shard_multiple N] [--mixtures train:20000,val:5000,test:3000] [--val_fraction F] [--seed S]
#          [--frontend FILE [--preset NAME] [--device cpu]]   # lip embeddings -> OUT/shards_emb
set -euo pipefail
retry_rejected=false  # true: probe again the files an earlier run rejected
stage=1 stop_stage=5 nj=4 corpus_dir= out_dir= visual_path= audio_path= lists=
shard_size=1000 shard_multiple=8 mixtures=train:20000,val:5000,test:3000 seed=0 val_fraction=0.05
frontend= preset= device=cpu
known=" retry_rejected frontend preset device stage stop_stage nj corpus_dir out_dir visual_path audio_path lists shard_size shard_multiple mixtures seed val_fraction "
. "$(dirname "$0")/../parse_options.sh" "$@"
retry=(); [ "$retry_rejected" = true ] && retry=(--retry_rejected)
prep="${PYTHON:-python} -m avse.recipes.voxceleb2"
if run 1; then
  $prep manifest --corpus_dir "$corpus_dir" --out_dir "$out_dir" --nj "$nj" --seed "$seed" --val_fraction "$val_fraction" "${retry[@]}" \
    ${visual_path:+--visual_path "$visual_path"} ${audio_path:+--audio_path "$audio_path"} ${lists:+--lists "$lists"}
fi
if run 2; then $prep extract --out_dir "$out_dir" --nj "$nj" "${retry[@]}"; fi
if run 3; then
  $prep shards --out_dir "$out_dir" --shard_size "$shard_size" --shard_multiple "$shard_multiple" --seed "$seed"
fi
if run 4; then
  $prep lists --out_dir "$out_dir" --seed "$seed" --mixtures "$mixtures" ${lists:+--lists "$lists"}
fi
if [ -n "$frontend" ] && run 5; then
  ${PYTHON:-python} -m avse.recipes.embed --out_dir "$out_dir" --frontend "$frontend" --nj "$nj" \
    --device "$device" ${preset:+--preset "$preset"}
fi
