#!/usr/bin/env bash
# The AVSE demo on the built-in synthetic talking-face corpus:
#   1. synthetic corpus in the VoxCeleb2 layout  2. VoxCeleb2 recipe -> shards + VoxMix lists
set -euo pipefail
data_dir=data/synthetic exp_dir=exp/demo speakers=40 clips=8 nj=2 seed=1234
while [ $# -gt 0 ]; do
  case "$1" in
    --data_dir|--exp_dir|--speakers|--clips|--nj|--seed) printf -v "${1#--}" '%s' "$2"; shift 2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
python "$here/../../tools/make_synthetic_corpus.py" --out "$data_dir/corpus" \
  --speakers "$speakers" --clips "$clips" --seed "$seed" --nj "$nj"
bash "$here/../../recipes/VoxCeleb2/run.sh" --corpus_dir "$data_dir/corpus" \
  --out_dir "$data_dir/prepared" --nj "$nj" --shard_size 64 --shard_multiple 2 \
  --mixtures train:2000,val:200,test:200 --seed "$seed"
mkdir -p "$exp_dir"
python -m avse.data.shards "$data_dir/prepared/shards/train" --verify | tail -n 1
echo "demo: shards in $data_dir/prepared/shards, lists in $data_dir/prepared/lists"
