#!/usr/bin/env bash
# Runs the benchmarks at accelerator sizes (CIFAR-10 shapes, ResNet-18, batch 256-1024); the per-benchmark
# limits add up to 14 min
# and appends their tables to one file.
#
#   benchmarks/gpu.sh [OUT_FILE]          # default benchmarks/gpu_results.txt
#   TINY=1 benchmarks/gpu.sh /tmp/x.txt   # tiny shapes: checks the script runs (CPU, seconds)
#   PYTHON=/path/to/python benchmarks/gpu.sh
#
# Each benchmark runs under `timeout` so one slow peer cannot eat the whole budget; a benchmark script
# that does not exist yet is skipped with a note.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/gpu_results.txt}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
TINY="${TINY:-0}"
: > "$OUT"
{
  echo "# unlearn_jax accelerator benchmarks  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# host $(hostname); $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
} >> "$OUT"

run() {  # run LIMIT_S TITLE CMD...
  local limit="$1"; shift
  local title="$1"; shift
  echo "" >> "$OUT"; echo "## $title" >> "$OUT"; echo "\$ $*" >> "$OUT"
  if [ ! -f "$2" ]; then echo "(skipped: $2 not found)" | tee -a "$OUT"; return; fi
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT" | tail -n 40
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "(exit status $rc; 124 = hit the ${limit}s limit)" >> "$OUT"
}

if [ "$TINY" = 1 ]; then
  run 120 "1. per-example norms (tiny)" "$PY" benchmarks/bench_norms.py --tiny --models mlp,cnn32,resnet18
  run 120 "3. SGLD step (tiny)" "$PY" benchmarks/bench_sgld_step.py --tiny
  run 120 "2. ledger update (tiny)" "$PY" benchmarks/bench_ledger.py --n 2000 --dp-subset 2 --repeats 2 --skip-training
  run 120 "4. demo end to end (tiny)" "$PY" benchmarks/bench_demo.py --tiny
  run 120 "6. minibatch steps (tiny)" "$PY" benchmarks/bench_minibatch.py --models mlp --n 2000 --steps 2 --rounds 1
  run 120 "7b. one epoch, once-per-epoch ledger (tiny)" "$PY" benchmarks/bench_minibatch.py --epoch --models mlp --n 1024 --rounds 1
  run 120 "8. peak memory (tiny)" "$PY" benchmarks/bench_memory.py --widths 4,4,4,4 --n 256 512 --steps 1
else
  run 120 "1a. per-example norms: MLP and CIFAR-shaped CNN, n=256,1024" \
      "$PY" benchmarks/bench_norms.py --models mlp,cnn32 --batch-sizes 256,1024 --repeats 10
  run 90 "1b. per-example norms: ResNet-18 on 32x32x3, n=256,1024 (vmap at 256 only)" \
      "$PY" benchmarks/bench_norms.py --models resnet18 --resnet-batch-sizes 256 --repeats 5
  run 60 "1c. ResNet-18 ghost only at n=1024" \
      "$PY" benchmarks/bench_norms.py --models resnet18 --resnet-batch-sizes 1024 --repeats 5 --no-vmap --no-opacus
  run 45 "3. SGLD step" "$PY" benchmarks/bench_sgld_step.py --batch-size 1024
  run 60 "2. ledger update" "$PY" benchmarks/bench_ledger.py
  run 60 "4. demo end to end" "$PY" benchmarks/bench_demo.py
  run 120 "6. paper-sized training: ResNet-18, CIFAR shapes, B = 256, n = 50,000 (minibatch steps with the ledger vs optax)" \
      "$PY" benchmarks/bench_minibatch.py --models resnet18 --n 50000 --batch-size 256 --steps 5 --rounds 3
  run 45 "7. minibatch steps, MLP and small CNN, n = 10,000 and 100,000" \
      "$PY" benchmarks/bench_minibatch.py --models mlp,cnn --n 10000 100000 --rounds 3
  run 45 "7b. one epoch with the once-per-epoch ledger vs an optax epoch, MLP and small CNN, n = 20,000" \
      "$PY" benchmarks/bench_minibatch.py --epoch --models mlp,cnn --n 20000 --rounds 3
  run 60 "8. peak device memory of the all-n passes, ResNet-18, n = 8,192 and 32,768" \
      "$PY" benchmarks/bench_memory.py --widths 64,128,256,512 --n 8192 32768
fi
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$TINY" = 1 ]; then
  run 120 "5. sharded step scaling (tiny, CPU host devices)" "$PY" benchmarks/bench_scaling.py \
      --devices 1 2 --n 256 --hidden 32 --steps 2 --repeats 2 --rounds 1
elif [ "${NGPU:-0}" -gt 1 ]; then
  DEVS="1"; d=2; while [ "$d" -le "$NGPU" ]; do DEVS="$DEVS $d"; d=$((d*2)); done
  run 45 "5. sharded SGLD step with ledger over $DEVS GPUs" "$PY" benchmarks/bench_scaling.py \
      --platform gpu --devices $DEVS --n 65536 --features 3072 --hidden 1024 --steps 10 --repeats 5 --rounds 1
else
  echo "" >> "$OUT"; echo "## 5. sharded path skipped: ${NGPU:-0} GPU visible (needs > 1)" >> "$OUT"
fi
echo "wrote $OUT"
