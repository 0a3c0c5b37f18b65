# Sourced by recipes/<Corpus>/run.sh after its defaults and `known=" name ... "`:
#   . "$(dirname "$0")/../parse_options.sh" "$@"
# sets every `--name value` pair (unknown names exit 2), checks --corpus_dir/--out_dir and
# the whole-number options, and defines `run N` (true when stage N is in stage..stop_stage).
while [ $# -gt 0 ]; do
  name=${1#--}
  [[ "$1" == --* && "$known" == *" $name "* && $# -ge 2 ]] || { echo "$0: bad option '$1' (see the usage line)" >&2; exit 2; }
  printf -v "$name" '%s' "$2"; shift 2
done
[ -n "$corpus_dir" ] && [ -n "$out_dir" ] || { echo "$0: --corpus_dir and --out_dir are required" >&2; exit 2; }
[[ "$stage.$stop_stage.$nj" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "$0: --stage, --stop_stage and --nj take whole numbers" >&2; exit 2; }
run() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
