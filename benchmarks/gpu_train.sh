#!/usr/bin/env bash
# Continue a defense's training on one lent GPU machine in one call, then score it (issue 14).
#
#   [DEFENSE=eabs] [DATASET=fmnist] [FROM=checkpoints] [EPOCHS=40] [SET="lr_schedule=cosine anneal_epochs=20"] \
#   [LIMIT=420] [TEST=1] [TEST_N=1000] [DATA=.data] [DEVICE=cuda] [PYTHON=python3] bash benchmarks/gpu_train.sh
#
# FROM: the directory holding the checkpoint to continue (<defense>-<dataset>.safetensors, its card
# .json and, for ABS / E-ABS, its training state .state.safetensors). They are copied into a scratch
# directory and `bench train --resume --epochs EPOCHS --device cuda` continues them there (ABS / E-ABS
# bit for bit from the state; the training generator is a CPU one, so a state saved on a CPU resumes on
# a GPU). FROM="" trains from scratch (EPOCHS: the recipe's when empty). SET: `--set KEY=VALUE` items of
# the recipe for the added epochs, separated by spaces. Each epoch ends with checkpoint and state
# written atomically, so the run is stopped at LIMIT seconds (SIGINT) and loses at most the epoch in
# progress; a later call with FROM= the returned files goes on (without EPOCHS, `--resume` finishes
# the epochs the stopped run planned).
# TEST=1 then scores the result as issue 14 asks, with `bench calibrate --n TEST_N --test-n TEST_N`: the
# reject threshold, the full-inference validation accuracy and the clean accuracy on the first
# TEST_N test images (5 draws averaged, as `bench run` scores), all written into the card, for the
# checkpoint as saved (the last finished epoch), within CAL_LIMIT seconds (default 150).
#
# The training split is not shipped with the package: DATA names a directory holding
# DATA/<dataset>/train-images-idx3-ubyte.gz and the rest (for Fashion-MNIST, Debian's
# dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist: copy that folder to
# .data/fmnist, ignored by git through .git/info/exclude, and carry .data with the call).
# Dependencies as benchmarks/gpu_sweep.sh (.whl/site). The checkpoint files come back in $OUT (the
# state is about 9 MB for E-ABS); here, put them in a checkpoint directory of their own, e.g.
# checkpoints/training/eabs-gpu/, commit them, and score or ship them from there
# (BENCH_CHECKPOINTS=checkpoints/training/eabs-gpu bench calibrate ...).
set -u
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
gpu_env gpu_train
DEFENSE="${DEFENSE:-eabs}"
DATASET="${DATASET:-fmnist}"
FROM="${FROM-checkpoints}"
EPOCHS="${EPOCHS:-}"
SET="${SET:-}"
LIMIT="${LIMIT:-420}"
CAL_LIMIT="${CAL_LIMIT:-150}"
TEST="${TEST:-1}"
TEST_N="${TEST_N:-1000}"
DEVICE="${DEVICE:-cuda}"
[ -d "${DATA:-.data}" ] && export BENCH_DATA="$(cd "${DATA:-.data}" && pwd)"

echo "gpu_train.sh $(date -u) on $(hostname): $DEFENSE on $DATASET from ${FROM:-scratch}, ${EPOCHS:-recipe/planned} epochs, limit ${LIMIT}s${SET:+, --set $SET}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c 'import torch, harness, defenses; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' || exit 1

SCR="$(mktemp -d)"
stem="$DEFENSE-$DATASET"
if [ -n "$FROM" ]; then
    for f in "$FROM/$stem.safetensors" "$FROM/$stem.json"; do
        [ -f "$f" ] || { echo "gpu_train.sh: $f not found (FROM must hold the checkpoint to continue)"; exit 2; }
        cp "$f" "$SCR/"
    done
    [ -f "$FROM/$stem.state.safetensors" ] && cp "$FROM/$stem.state.safetensors" "$SCR/"
    RESUME=(--resume)
else
    RESUME=()
fi
SETS=()
for kv in $SET; do SETS+=(--set "$kv"); done
t0=$SECONDS
timeout -s INT -k 30 "$LIMIT" "$PY" -m harness.cli train --defense "$DEFENSE" --dataset "$DATASET" --out "$SCR" --device "$DEVICE" --quiet \
    "${RESUME[@]}" ${EPOCHS:+--epochs "$EPOCHS"} "${SETS[@]}"
rc=$?
echo "=== train rc=$rc after $((SECONDS - t0)) s (124/130: stopped at the limit; the last finished epoch is kept)"
"$PY" - "$SCR/$stem.json" <<'EOF'
import json, sys
card = json.load(open(sys.argv[1]))
hist = card.get("history") or []
print(f"card: {card.get('epochs')} epochs, wall time {card.get('wall_time_s')} s; last epochs:")
for h in hist[-5:]:
    print("  ", h)
EOF
if [ "$TEST" = 1 ]; then
    t1=$SECONDS
    BENCH_CHECKPOINTS="$SCR" timeout -s INT -k 20 "$CAL_LIMIT" "$PY" -m harness.cli calibrate --defense "$DEFENSE" --dataset "$DATASET" \
        --n "$TEST_N" --test-n "$TEST_N" --device "$DEVICE" --quiet
    echo "=== calibrate rc=$? after $((SECONDS - t1)) s"
fi
cp "$SCR/$stem".* "$OUTDIR/"
ls -la "$OUTDIR"
