#!/usr/bin/env bash
# GPU check of the harness (issue 13): one script, one call, on a machine with a CUDA build of torch.
#
#   [PYTHON=python-with-cuda-torch] [WHEELS=dir] bash benchmarks/gpu_check.sh [LOG]   # from the repository root
#
# What it does, all output into one log (default: $OUT/gpu_check.log when $OUT is set, else
# ./gpu_check.log), continuing after a failed step and printing a summary of every step's exit code:
#   1. records the machine (nvidia-smi, torch / CUDA versions, GPU name);
#   2. installs this project into a virtual environment that sees the machine's own torch
#      (--system-site-packages) with `pip install --no-deps`, so pip never replaces that torch; the
#      dependencies the machine lacks are installed from wheels carried beside the repository
#      (`$WHEELS`, default ./wheels or ./shared/wheels), offline (--no-index); see "wheels" below;
#   3. runs the test suite with the GPU visible (tests use the CPU unless they ask for a device);
#   4. `benchmarks/abs_inference.py --device cuda` (fp32, then --precision bf16);
#   5. `benchmarks/abs_training.py --device cuda` (new step vs the pre-issue-13 step, max-diff;
#      its info line times the other execution path: on a GPU the packed (grouped) modules are the
#      default, the line shows the copy-by-copy path, so the log says which one wins there);
#   6. a short `bench run --device cuda` on E-ABS (Fashion-MNIST, 20 samples, PGD + FGM of the quick
#      suite) into a scratch results directory (the committed results/ are not touched).
# With SWEEP=<plan> it runs only steps 1-2 and then that sweep with benchmarks/gpu_sweep.sh, e.g.
#   SWEEP=plans/fmnist-eabs-paper.toml SWEEP_LIMIT=480 bash benchmarks/gpu_check.sh
#
# Wheels: on a machine with this project's environment, collect the dependencies except torch:
#   pip download --no-deps -d wheels -c constraints.txt numpy scipy foolbox==3.3.4 eagerpy==0.30.0 \
#       pyautoattack==0.2.0 statsmodels pandas tabulate safetensors tqdm matplotlib platformdirs \
#       neat-python==2.0.0 pytest pytest-xdist          (plus their own dependencies if missing there)
# Only the modules the GPU machine cannot import are installed from them.
#
# Time budget: about 10 minutes on one GPU (tests ~4 min with -n auto, benchmarks ~2 min, run ~2 min);
# every step has its own timeout so that the log always comes back.
set -u
cd "$(dirname "$0")/.."
LOG="${1:-${OUT:-.}/gpu_check.log}"
mkdir -p "$(dirname "$LOG")"
exec > >(tee -a "$LOG") 2>&1
SUMMARY=()
step() {  # step NAME TIMEOUT CMD...
    local name="$1" limit="$2"; shift 2
    echo; echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "=== $name: rc=$rc, $((SECONDS - t0)) s"
    SUMMARY+=("$name rc=$rc $((SECONDS - t0))s")
    return 0
}

echo "gpu_check.sh $(date -u) on $(hostname); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
PY="${PYTHON:-python3}"
step machine 60 bash -c "nvidia-smi || true; $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")'"
if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to $PY: nothing to check"; exit 1
fi

VENV="${VENV:-/tmp/bench-gpu-venv}"
WHEELS="${WHEELS:-}"
for d in wheels shared/wheels; do [ -z "$WHEELS" ] && [ -d "$d" ] && WHEELS="$d"; done
install() {
    "$PY" -m venv --system-site-packages "$VENV" || return 1
    local vpy="$VENV/bin/python" missing=()
    for mod in numpy:numpy scipy:scipy foolbox:foolbox eagerpy:eagerpy pyautoattack:pyautoattack statsmodels:statsmodels \
               pandas:pandas tabulate:tabulate safetensors:safetensors tqdm:tqdm matplotlib:matplotlib platformdirs:platformdirs \
               neat:neat-python pytest:pytest xdist:pytest-xdist; do
        "$vpy" -c "import ${mod%%:*}" 2>/dev/null || missing+=("${mod##*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing on this machine: ${missing[*]}"
        if [ -z "$WHEELS" ]; then echo "no wheels directory (set WHEELS=...)"; return 1; fi
        "$vpy" -m pip install --no-index --find-links "$WHEELS" --no-deps "${missing[@]}" || return 1
    fi
    "$vpy" -m pip install --no-deps --no-build-isolation --no-index -e . || return 1
    "$vpy" -c 'import torch, harness, defenses; print("installed; torch", torch.__version__, "from", torch.__file__)'
}
step install 300 install
PYV="$VENV/bin/python"
[ -x "$PYV" ] || PYV="$PY"
# the repository root on the path too: everything below runs even if the editable install failed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
XDIST=""
"$PYV" -c "import xdist" 2>/dev/null && XDIST="-n 4"

if [ -n "${SWEEP:-}" ]; then
    # SWEEP=plans/fmnist-eabs-paper.toml [SWEEP_LIMIT=480] [PROCS=10]: only the sweep (issue 14), by
    # benchmarks/gpu_sweep.sh (several sweep processes share the GPU; the shard files they write come
    # back packed in $OUT/gpu_sweep.tar.gz: $OUT returns files at most two folders down)
    echo; echo "=== summary"; printf '%s\n' "${SUMMARY[@]}"
    PLAN="$SWEEP" LIMIT="${SWEEP_LIMIT:-480}" PYTHON="$PYV" exec bash benchmarks/gpu_sweep.sh
fi
step tests 900 "$PYV" -m pytest -q $XDIST tests
step abs-inference-fp32 300 "$PYV" benchmarks/abs_inference.py --device cuda --repeats 2
step abs-inference-bf16 300 "$PYV" benchmarks/abs_inference.py --device cuda --repeats 2 --precision bf16
step abs-training 300 "$PYV" benchmarks/abs_training.py --device cuda --repeats 5
RES="$(mktemp -d)"
step bench-run-eabs 600 "$PYV" -m harness.cli run --defense eabs --dataset fmnist --norm linf --n 20 --attacks pgd,fgm \
    --device cuda --no-train --quiet --results-dir "$RES"
[ -n "${OUT:-}" ] && cp -r "$RES" "$OUT/gpu_check_results" 2>/dev/null

echo; echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
