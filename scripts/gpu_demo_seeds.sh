#!/usr/bin/env bash
# The passkey demo's CoMeT model trained and evaluated for several seeds at once on one GPU:
# a recipe sweep that takes a CPU afternoon fits in one lease (one H200, 2026-12-04: two seeds
# side by side trained in 4.6 min, 2000 steps, and evaluated at 1x-32x in 50 s).
#   SEEDS="0 1 2 3" OUT=DIR bash scripts/gpu_demo_seeds.sh [section.key=value ...]
# (LENGTHS, HELD, SAMPLES, TRAIN_LIMIT: the evaluation and the time limit of one training;
# CONFIG: the training config, default configs/demo_passkey.yaml, e.g. a recipe's
# docs/demo/<run>/config.yaml whose curriculum stages differ.)
# The overrides go to every seed's training (as `comet-demo --set` would). Float32 with full
# matmul precision, as on the CPU; the numbers still differ from a CPU run's (other reduction
# orders), so a GPU sweep ranks recipes, the CPU runs are the demo's record.
# The device image may lack grain: then it is installed from wheels in .devwheels/ (ignored by
# git, carried with the run), fetched on the host with
#   pip download grain array-record cloudpickle etils portpicker --no-deps --only-binary=:all: \
#     --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .devwheels
# Writes OUT/summary.txt (one line per seed) and OUT/seeds.tar.gz (logs and results.json).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_demo_seeds}
SEEDS=${SEEDS:-"0 1 2 3"}
TRAIN_LIMIT=${TRAIN_LIMIT:-420}
LENGTHS=${LENGTHS:-512,2048,8192,16384}  # the demo's 1x-32x
HELD=${HELD:-512,2048,16384}             # the held-out prompt's 1x, 4x, 32x
SAMPLES=${SAMPLES:-50}
CONFIG=${CONFIG:-configs/demo_passkey.yaml}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest
mkdir -p "$OUT/seeds"
if ! $PY -c "import grain" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps .devwheels/*.whl 2>&1 | grep -v "as the 'root' user"
fi
$PY -c "import grain, orbax.checkpoint, jax; print('devices', jax.devices())" || exit 1
n=$(wc -w <<<"$SEEDS"); cores=$(nproc); per=$(( cores / n > 0 ? cores / n : 1 ))
one() {  # one SEED FIRST_CORE: train, then evaluate on the training and the held-out prompt
    local s=$1 w="$OUT/seeds/s$1" pin="$2-$(( $2 + per - 1 ))"
    mkdir -p "$w"
    taskset -c "$pin" timeout "$TRAIN_LIMIT" $PY -m comet_jax.train.cli --config "$CONFIG" \
        run.dir="$w/run" run.name="gpu_s$s" run.seed="$s" "${@:3}" >"$w/train.log" 2>&1 \
        || { echo "seed $s: training failed or ran past ${TRAIN_LIMIT}s (rc $?)"; return; }
    echo "seed $s: trained at ${SECONDS}s"
    for v in train held_out; do
        local at=$LENGTHS; [ $v = held_out ] && at=$HELD
        taskset -c "$pin" timeout 300 $PY -m comet_jax.evals.passkey --checkpoint "$w/run/model" --lengths $at \
            --depths 0,0.25,0.5,0.75,1 --samples "$SAMPLES" --batch-size $(( SAMPLES < 25 ? SAMPLES : 25 )) --mode comet --prompt-variant $v \
            --out "$w/eval_$v" >"$w/eval_$v.log" 2>&1 || echo "seed $s: $v evaluation failed (rc $?)"
    done
    rm -rf "$w/run/checkpoints"
}
i=0
for s in $SEEDS; do one "$s" $(( i * per )) "$@" & i=$(( i + 1 )); done
wait
$PY - "$OUT" $SEEDS >"$OUT/summary.txt" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for s in sys.argv[2:]:
    line = [f"seed {s}:"]
    for v in ("train", "held_out"):
        f = out / "seeds" / f"s{s}" / f"eval_{v}" / "results.json"
        if not f.exists():
            line.append(f"{v} missing")
            continue
        r = json.loads(f.read_text())
        by = " / ".join(f"{x:.2f}" for x in r["exact_by_length"].values())
        line.append(f"{v} {by} (min cell {min(c['exact'] for c in r['cells']):.2f})")
    print("  ".join(line))
EOF
cat "$OUT/summary.txt"
tar -czf "$OUT/seeds.tar.gz" -C "$OUT" seeds && rm -rf "$OUT/seeds"
