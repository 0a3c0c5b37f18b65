#!/usr/bin/env bash
# The AVSE demo on the built-in synthetic talking-face corpus (CPU, about 20 minutes):
#   1. synthetic corpus (VoxCeleb2 layout)  2. VoxCeleb2 recipe -> shards + VoxMix lists
#   3. train a small audio-visual TCN (30 % of its examples with a silent target) + activity head
#   4. synthetic MUSAN -> noise shards; the seven named conditions (absent and sparse: the target
#      silent) in one table; evaluate with true and mismatched lips, report; AV-sync sweep
#   5. avse-extract --gate on a two-face video made from a real photo: one wav + one mp4 per face,
#      each face's speaking time in faces.json
set -euo pipefail
data_dir=data/synthetic exp_dir=exp/demo speakers=100 clips=8 nj=2 seed=1234
while [ $# -gt 0 ]; do
  case "$1" in
    --data_dir|--exp_dir|--speakers|--clips|--nj|--seed) printf -v "${1#--}" '%s' "$2"; shift 2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$data_dir/corpus/speakers.json" ] || python "$here/../../tools/make_synthetic_corpus.py" \
  --out "$data_dir/corpus" --speakers "$speakers" --clips "$clips" --seed "$seed" --nj "$nj"
bash "$here/../../recipes/VoxCeleb2/run.sh" --corpus_dir "$data_dir/corpus" \
  --out_dir "$data_dir/prepared" --nj "$nj" --shard_size 64 --shard_multiple 2 \
  --mixtures train:2000,val:100,test:150 --seed "$seed"
python "$here/train.py" "$here/hparams/demo.yaml" --data_folder "$data_dir/prepared" \
  --output_folder "$exp_dir/train" --device cpu
[ -f "$data_dir/musan_corpus/.complete" ] || { python "$here/../../tools/make_synthetic_corpus.py" \
  --layout musan --out "$data_dir/musan_corpus" --clips 24 --seed "$seed" --nj "$nj" &&
  touch "$data_dir/musan_corpus/.complete"; }
bash "$here/../../recipes/MUSAN/run.sh" --corpus_dir "$data_dir/musan_corpus" --out_dir "$data_dir/musan" \
  --nj "$nj" --val_fraction 0.2 --test_fraction 0.4 --seed "$seed"
python -m avse.evaluation.conditions lists --shards "$data_dir/prepared/shards/test" \
  --num 150 --seed "$seed" --noise_shards "$data_dir/musan/shards/test" --out_dir "$data_dir/prepared/lists"
python -m avse.evaluation.conditions evaluate --model "$exp_dir/train" \
  --shards "$data_dir/prepared/shards/test" --noise_shards "$data_dir/musan/shards/test" \
  --lists_dir "$data_dir/prepared/lists" --metrics si_sdr,si_sdri,sdr,sdri --out_dir "$exp_dir/conditions"
python "$here/report.py" --exp_dir "$exp_dir/train" --data_folder "$data_dir/prepared" --out_dir "$exp_dir"
python "$here/../../tools/eval_sync.py" --model "$exp_dir/train" --out_dir "$exp_dir/sync" --noprogressbar
python "$here/../../tools/make_scene_video.py" --out "$exp_dir/video/two_faces.mp4" --truth_dir "$exp_dir/video/truth"
avse-extract --model "$exp_dir/train" --video "$exp_dir/video/two_faces.mp4" --out_dir "$exp_dir/video/out" \
  --gate --noprogressbar
