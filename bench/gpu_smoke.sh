#!/usr/bin/env bash
# The first command a lent GPU runs: the 1-GPU recipe's code paths end to end, and the MFU bench, in
# <= 10 minutes on one GPU (~16 cores), each step timed, then one markdown page with the numbers.
#
#   bash bench/gpu_smoke.sh [--out DIR] [key=value ...]        # one NVIDIA GPU; report in docs/results/
#   bash bench/gpu_smoke.sh --cpu [--out DIR] [key=value ...]  # the same steps, tiny, on CPU (a test runs this)
#
# Steps (configs/embedded-1gpu.yaml, through the CLI verbs):
#   ingest     align ingest on a reduced corpus (corpus.num_scenes=20000: ~1-1.5 min on 16 cores)
#   train      align train, 200 bf16 steps, validation and a checkpoint every 100
#   resume     align train --run-id <run> train.steps=300: resumes from step 200's checkpoint, 100 more
#   evaluate   align evaluate --run-id <run> (eval.device auto: the GPU)
#   mfu_bench  bench/gpu_train_throughput.py on the B7 recipe: batch 256 (--bench-batch), 10 timed steps,
#              gradient checkpointing (retried once at half the batch on out-of-memory)
# then writes <out>/gpu-smoke-<YYYY-MM-DD>.md (card, date, torch, each step's exit status and wall time,
# training numbers from MLflow, evaluation metrics, the bench's JSON) and prints its path on stdout.
# --cpu: tiny corpus and towers, 4 steps resumed to 6, `--smoke` bench; its report goes to --out (default:
# the state folder), never to docs/.
#
# Options: --out DIR (report folder), --state DIR (state folder; default a new one under $TMPDIR; kept
# afterwards), --budget S (whole-script deadline; default 570 on GPU, none with --cpu: each step gets what
# is left, so a hung step cannot eat the lending window), --bench-batch N. Every key=value goes to every
# align verb, after the smoke's own settings, e.g. storage.home=/data/align-smoke or ray.address=host:6379
# (not train.steps: the smoke sets it, first for the run, then higher for the resume).
# State never goes to the caller's ./.align or $ALIGN_HOME: ALIGN_HOME is set to the state folder.
# A local Ray head this script started is stopped at the end (align down); one already running is left.
# Exit status: 0 when every step passed, 1 otherwise (the report says which); 1 without a usable GPU
# (and without --cpu); 2 on a bad argument. On a lent device, `--out "$OUT"` brings the page back.
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=configs/embedded-1gpu.yaml
PY=.venv/bin/python
ALIGN=.venv/bin/align
mode=gpu out="" state="" budget="" bench_batch=256
overrides=()
command_line="bash bench/gpu_smoke.sh $*"

usage() { sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --cpu) mode=cpu ;;
    --out) out=${2:?--out needs a folder}; shift ;;
    --out=*) out=${1#*=} ;;
    --state) state=${2:?--state needs a folder}; shift ;;
    --state=*) state=${1#*=} ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    --budget=*) budget=${1#*=} ;;
    --bench-batch) bench_batch=${2:?--bench-batch needs a number}; shift ;;
    --bench-batch=*) bench_batch=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "gpu_smoke: unknown option $1 (see --help)" >&2; exit 2 ;;
    *=*) overrides+=("$1") ;;
    *) echo "gpu_smoke: $1 is neither an option nor a key=value override (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $budget =~ ^[0-9]*$ && $bench_batch =~ ^[1-9][0-9]*$ ]] || { echo "gpu_smoke: --budget and --bench-batch take whole numbers" >&2; exit 2; }

say() { echo "gpu_smoke: $*" >&2; }
if [[ -n $out ]]; then
  out=$(realpath -m "$out")
  if [[ $mode == cpu && $out/ == "$PWD/docs/"* ]]; then
    say "a --cpu run does not write into docs/ (its numbers say nothing about a GPU); give --out another folder"
    exit 2
  fi
fi
cpu_hint="on a machine without one, the same steps run on CPU: bash bench/gpu_smoke.sh --cpu --out DIR"
if [[ $mode == gpu ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  say "no NVIDIA GPU visible (nvidia-smi -L failed); $cpu_hint"
  exit 1
fi

if [[ ! -x $ALIGN ]]; then
  say "no .venv here: make setup first (needs the package index; a few minutes)"
  make setup >&2 || { say "make setup failed"; exit 1; }
fi
if [[ $mode == gpu ]]; then
  if ! gpu_line=$("$PY" -c '
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device: a CPU-only build, "
             "CUDA_VISIBLE_DEVICES empty, or a driver too old for it")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")'); then
    say "no usable GPU; $cpu_hint"
    exit 1
  fi
  say "$gpu_line"
fi

stamp=$(date +%Y%m%d-%H%M%S)
today=$(date +%Y-%m-%d)
if [[ -z $state ]]; then
  state=$(mktemp -d "${TMPDIR:-/tmp}/align-gpu-smoke-$stamp-XXXX")
fi
mkdir -p "$state"
state=$(cd "$state" && pwd)
export ALIGN_HOME=$state # the verbs' state folder, unless a storage.home= override names another
work=$state/smoke-$stamp # each step's stdout (its JSON result) and console, steps.tsv, the bench's JSON
mkdir -p "$work"
: >"$work/steps.tsv"

if [[ -z $out ]]; then
  out=$([[ $mode == gpu ]] && echo "$PWD/docs/results" || echo "$work")
fi
mkdir -p "$out"
report=$out/gpu-smoke-$today.md
[[ -e $report ]] && report=$out/gpu-smoke-$today-${stamp#*-}.md

# Each step: NAME STATUS SECONDS COMMAND START END in steps.tsv. STATUS is the exit status, "skipped" (an
# earlier step it needs failed) or "no-time" (the deadline left under 20 s); START/END in epoch seconds.
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" "${6:-}" >>"$work/steps.tsv"; }
declare -A status_of=()

common=(orchestration.cache=false) # a fresh run each time, also in a reused state folder
if [[ $mode == gpu ]]; then
  # ~20k JPEG pairs, ~16k kept: ~16 steps of 1,024 per epoch, so 300 steps see every pair ~19 times.
  size=(corpus.num_scenes=20000 train.warmup_steps=50 train.checkpoint_every=100 train.val_every=100 train.log_every=50)
  first_steps=200 resume_steps=300
  bench_args=(--batch "$bench_batch" --steps 10 --warmup 3 --gradient-checkpointing)
  declare -A cap=([ingest]=180 [train]=240 [resume]=150 [evaluate]=150 [mfu_bench]=240 [mfu_bench_retry]=180)
  budget=${budget:-570}
else
  # tests/train_fixtures.py's TINY_LIFECYCLE and TINY_MODEL_OVERRIDES, on one CPU worker.
  size=(corpus.num_scenes=320 corpus.eval_scenes=40 corpus.classify_per_class=3 corpus.many_texts_per_image=12
    filter.max_texts_per_image=10 filter.vocab_top_n=400 filter.resize_short_side=40
    model.image_tower=tinynet_e "model.train_preprocess=resize_short(40)|random_crop(32)|flip_lr"
    "model.eval_preprocess=resize_short(40)|center_crop(32)" model.text.hidden_size=32 model.text.num_layers=1
    model.text.num_heads=2 model.text.intermediate_size=64 model.text.tokenizer_vocab_size=300
    train.use_gpu=false train.num_workers=1 train.cpus_per_worker=1 train.torch_threads_per_worker=1
    train.decode_threads=0 train.global_batch_size=32 train.warmup_steps=2 train.checkpoint_every=2
    train.val_every=2 train.log_every=2 train.val_images=40 eval.batch_size=64)
  first_steps=4 resume_steps=6
  bench_args=(--smoke)
  declare -A cap=([ingest]=600 [train]=600 [resume]=600 [evaluate]=600 [mfu_bench]=600)
  budget=${budget:-0}
fi
settings=("${common[@]}" "${size[@]}" "train.steps=$first_steps" "${overrides[@]}")
deadline=0
((budget > 0)) && deadline=$((budget - 30)) # in $SECONDS, from the script's start; 30 s kept for the report and align down

probe() { "$PY" bench/gpu_smoke_report.py probe --config "$RECIPE" "$@" "${settings[@]}"; }
home=$(probe --field home) || exit 2 # the recipe with these overrides does not load: said above
head_before=$(probe --field local_head_running)
say "$mode run: state folder $home, step outputs $work, report $report"

sampler=""
if [[ $mode == gpu ]]; then # utilisation and memory once a second, summarised per step in the report
  # Bounded by timeout too: a script killed outright (SIGKILL) must not leave it sampling forever.
  timeout $((budget > 0 ? budget + 60 : 7200)) nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total \
    --format=csv,noheader,nounits -l 1 >"$work/gpu-samples.csv" 2>/dev/null &
  sampler=$!
fi
report_written=""
write_report() {
  "$PY" bench/gpu_smoke_report.py write --work "$work" --out "$report" --mode "$mode" --config "$RECIPE" \
    --date "$today" --command-line "$command_line" "${settings[@]}" && report_written=yes
}
finish() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $sampler ]] && kill "$sampler" 2>/dev/null
  if [[ -z $report_written ]]; then
    write_report || say "could not write the report"
  fi
  if [[ $head_before == false && $(probe --field local_head_running 2>/dev/null || echo false) == true ]]; then
    say "stopping the local Ray head this run started (align down)"
    "$ALIGN" down --config "$RECIPE" "${settings[@]}" >&2 || true
  fi
  [[ -n $report_written ]] && echo "$report"
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# run_step NAME COMMAND...: timed, under its cap and what is left of the deadline; stdout to NAME.out
# (a verb's JSON result), the console story both to NAME.err and live to stderr.
run_step() {
  local name=$1 limit=${cap[$1]}
  shift
  if ((deadline > 0)); then
    local left=$((deadline - SECONDS))
    if ((left < 20)); then
      say "[$name] skipped: ${left}s left before the deadline"
      record "$name" no-time 0 "$*"
      status_of[$name]=no-time
      return 0
    fi
    ((left < limit)) && limit=$left
  fi
  say "[$name] $* (at most ${limit}s)"
  local t0 rc codes
  t0=$(date +%s.%N)
  set +e
  timeout --foreground -s INT -k 30 "$limit" "$@" 2>&1 >"$work/$name.out" | tee "$work/$name.err" >&2
  codes=("${PIPESTATUS[@]}")
  set -e
  rc=${codes[0]}
  local t1 seconds quoted
  t1=$(date +%s.%N)
  seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  printf -v quoted '%q ' "$@"
  record "$name" "$rc" "$seconds" "${quoted% }" "$t0" "$t1"
  status_of[$name]=$rc
  say "[$name] exit status $rc after ${seconds}s"
}
skip() { # NAME WHY
  say "[$1] skipped: $2"
  record "$1" skipped 0 "($2)"
  status_of[$1]=skipped
}

run_step ingest "$ALIGN" ingest --config "$RECIPE" "${settings[@]}"
run_id=""
if [[ ${status_of[ingest]} == 0 ]]; then
  run_step train "$ALIGN" train --config "$RECIPE" "${settings[@]}"
  [[ ${status_of[train]} == 0 ]] && run_id=$("$PY" bench/gpu_smoke_report.py run-id "$work/train.out" || true)
else
  skip train "ingest failed"
fi
if [[ -n $run_id ]]; then
  say "training run $run_id"
  run_step resume "$ALIGN" train --config "$RECIPE" --run-id "$run_id" "${common[@]}" "${size[@]}" \
    "train.steps=$resume_steps" "${overrides[@]}"
  run_step evaluate "$ALIGN" evaluate --config "$RECIPE" --run-id "$run_id" "${settings[@]}"
else
  skip resume "no training run"
  skip evaluate "no training run"
fi

bench_json=$work/gpu_train_throughput.json
run_step mfu_bench "$PY" bench/gpu_train_throughput.py "${bench_args[@]}" --out "$bench_json"
if [[ $mode == gpu && ${status_of[mfu_bench]} != 0 ]] && grep -qE "OutOfMemoryError|CUDA out of memory" "$work/mfu_bench.err" \
  && ((bench_batch > 1)); then
  bench_batch=$((bench_batch / 2))
  say "[mfu_bench] out of memory: once more at batch $bench_batch"
  run_step mfu_bench_retry "$PY" bench/gpu_train_throughput.py --batch "$bench_batch" --steps 10 --warmup 3 \
    --gradient-checkpointing --out "$bench_json"
  [[ ${status_of[mfu_bench_retry]} == 0 ]] && status_of[mfu_bench]=0 # the smaller batch's numbers count
fi

write_report
say "report: $report ($SECONDS s in all)"
for name in "${!status_of[@]}"; do
  [[ ${status_of[$name]} == 0 ]] || exit 1
done
exit 0
