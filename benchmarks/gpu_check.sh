#!/usr/bin/env bash
# One prepared accelerator check, every part with its own time limit and its own `key=value` line.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        # PYTHON=... to pick the interpreter (default: python)
#
# Needs jax (with CUDA on a GPU), torch and the project's packages (open_clip, diffusers, grain,
# ml_collections: wheels on a machine with no network); reaches nothing over the network. On a GPU
# (about 8 minutes on one H200):
#   1. train_step_b256, train_step_b1024: ViT-B/32 TripletCLIP step in bf16 against open_clip
#      eager (both) and torch.compiled (1024 only: its compile alone takes minutes), alternating
#      rounds (benchmarks/train_step.py);
#   2. demo_cold, demo_warm: `launch/main.py --config configs/demo.py`, first half of the run in a
#      fresh workdir (world generation, compile, checkpoints), then a restart that resumes from the
#      checkpoint through the persistent compilation cache and ends with the HF export; each prints
#      its start-up breakdown, the line compares time to the first step cold and warm;
#   3. negatives: benchmarks/negatives.py --arch: SDXL-Turbo at 512 px, Phi-3-mini and Mistral-7B
#      at 64 new tokens, their published architectures with random weights, naive against batched.
# Anywhere else (a CPU) the same parts run at smoke-test sizes, so the script is tested where it is
# written. Logs go to OUT_DIR/PART.log; the last line sums up.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-/tmp/gpu_check}
mkdir -p "$OUT"

BACKEND=$($PY -c "import jax; print(jax.default_backend())" 2>/dev/null || echo none)
if [ "$BACKEND" = gpu ]; then
  BATCHES="256 1024"; DTYPE=bfloat16; STEPS=10; ROUNDS=3; STEP_LIMIT=200
  DEMO_STEPS=400; DEMO_LIMIT=100; DEMO_SIZE=()
  NEG=(--arch sdxl-turbo,phi-3-mini,mistral-7b --device cuda --n 32 --naive_n 4 --image_size 512)
else
  BATCHES="4"; DTYPE=float32; STEPS=1; ROUNDS=1; STEP_LIMIT=600
  DEMO_STEPS=8; DEMO_LIMIT=300
  DEMO_SIZE=(--config.batch_size=16 --config.data.source.num_train=64 --config.data.source.num_eval=8)
  NEG=(--arch sdxl-turbo,phi-3-mini --device cpu --shrink 16 --n 4 --naive_n 2 --image_size 64
    --max_new_tokens 8 --batch_size 4)
fi
echo "backend=$BACKEND out=$OUT"

FAILED=0
# part NAME LIMIT_S COMMAND...: runs COMMAND under its limit, logs it, prints its last key=value line.
part() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && FAILED=$((FAILED + 1))
  local kv
  kv=$(grep -E '^[a-z][a-z0-9_]*=[^ ]+( [a-z][a-z0-9_]*=[^ ]*)*$' "$OUT/$name.log" | tail -1)
  echo "part=$name rc=$rc wall_s=$((SECONDS - t0)) limit_s=$limit $kv"
}

for B in $BATCHES; do
  COMPARE=open_clip
  [ "$B" = 1024 ] && COMPARE=open_clip,open_clip_compiled
  part "train_step_b$B" $STEP_LIMIT $PY benchmarks/train_step.py --preset vit_b32 --dtype $DTYPE \
    --batch_size "$B" --steps $STEPS --rounds $ROUNDS --compare $COMPARE
done

DEMO=(--config configs/demo.py --workdir "$OUT/demo" --config.total_steps=$DEMO_STEPS
  --config.checkpoint_every_steps=$((DEMO_STEPS / 4)) --config.progress_bar=false "${DEMO_SIZE[@]}")
rm -rf "$OUT/demo"
part demo_cold $DEMO_LIMIT $PY launch/main.py "${DEMO[@]}" --config.stop_after_steps=$((DEMO_STEPS / 2))
part demo_warm $DEMO_LIMIT $PY launch/main.py "${DEMO[@]}"
first_step() { grep -o 'Start-up: [0-9.]* s' "$OUT/$1.log" | grep -o '[0-9.]*' | head -1; }
COLD=$(first_step demo_cold) WARM=$(first_step demo_warm)
RATIO=none
[ -n "$COLD" ] && [ -n "$WARM" ] && RATIO=$(awk "BEGIN { printf \"%.3f\", $WARM / $COLD }")
echo "part=startup cold_s=${COLD:-none} warm_s=${WARM:-none} warm_over_cold=$RATIO" \
  "resumed=$(grep -c 'Resumed from step' "$OUT/demo_warm.log")" \
  "exported=$(grep -c 'Exported a transformers CLIPModel' "$OUT/demo_warm.log")"

part negatives 150 $PY benchmarks/negatives.py "${NEG[@]}"

echo "gpu_check backend=$BACKEND failed_parts=$FAILED wall_s=$SECONDS"
[ $FAILED -eq 0 ]
