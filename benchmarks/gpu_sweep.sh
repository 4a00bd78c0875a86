#!/usr/bin/env bash
# A sweep plan on one lent GPU machine, several sweep processes sharing the GPU (issue 14).
#
#   [PLAN=plans/fmnist-eabs-paper.toml] [PROCS=10] [LIMIT=460] [ONLY=attack,...] [PYTHON=python3] \
#       [CHECK_BLOCK=N] bash benchmarks/gpu_sweep.sh                   # from the repository root
#
# CHECK_BLOCK=N passes --check-block N: blocks of N samples in the plan's budget check, so a restart of
# the check is one block where the GPU's time per block hardly grows with its samples (stop 48, one
# H100: E-ABS C&W-200 restarts 3-5 of 28 samples each, CHECK_BLOCK=20, 204 s for all three).
#
# Why several processes: an inference-time-optimising defense (E-ABS: 50 Adam steps per prediction)
# issues many small kernels, so one process leaves the GPU mostly idle; PROCS processes each claim
# their own job (harness/orchestration/claims.py) and their kernels interleave. Each job reuses the
# clean pass its shard already recorded (sweep.shared_clean_pass), so shards computed here merge
# with the CPU shards of a randomized defense although a CUDA generator draws other numbers.
#
# Dependencies: the machine's own torch; the other packages this project needs and the machine
# lacks are unpacked beside the repository in .whl/site (wheels unzipped, their example data left
# out to stay under the 64 MiB the working tree may take; see the README "GPU sweeps").
#
# It works on a copy of results/ and stops every sweep at LIMIT seconds (SIGINT: a job running then
# is lost, finished jobs are kept), then packs every file the sweeps wrote into one archive,
# $OUT/gpu_sweep.tar.gz (paths relative to results/), plus this log, $OUT/gpu_sweep.log. Back here:
#   tar -xzf gpu_sweep.tar.gz -C results --skip-old-files    # new shard files only; then
#   bench sweep <plan> --results-dir results                  # merges them (and runs what is left)
set -u
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
gpu_env gpu_sweep
PLAN="${PLAN:-plans/fmnist-eabs-paper.toml}"
PROCS="${PROCS:-10}"
LIMIT="${LIMIT:-460}"
export OMP_NUM_THREADS=1

echo "gpu_sweep.sh $(date -u) on $(hostname); plan $PLAN, $PROCS processes, limit ${LIMIT}s${ONLY:+, only $ONLY}${CHECK_BLOCK:+, check blocks of $CHECK_BLOCK}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c 'import torch, harness, defenses, foolbox, pyautoattack, neat; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' || exit 1

RES="$(mktemp -d)/results"
cp -a results "$RES"
rm -f $(find "$RES" -name '*.lock')
MARK="$RES/.gpu_sweep_start"; touch "$MARK"; sleep 1
"$PY" -m harness.cli sweep "$PLAN" --results-dir "$RES" --dry-run | tail -n 12

LOGS="$(mktemp -d)"
pids=()
for i in $(seq 1 "$PROCS"); do
    timeout -s INT -k 20 "$LIMIT" "$PY" -m harness.cli sweep "$PLAN" --results-dir "$RES" ${ONLY:+--only "$ONLY"} ${CHECK_BLOCK:+--check-block "$CHECK_BLOCK"} --quiet > "$LOGS/p$i.log" 2>&1 &
    pids+=($!)
    sleep 2   # staggered: each claims its job before the next looks
done
t0=$SECONDS
while kill -0 "${pids[@]}" 2>/dev/null; do
    sleep 30
    echo "[$((SECONDS - t0)) s] running $(for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && echo; done | wc -l) of $PROCS; gpu $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null); new shard files: $(find "$RES/.shards" -newer "$MARK" -name '*.json' | wc -l)"
    kill -0 "${pids[@]}" 2>/dev/null || break
done
wait "${pids[@]}"
echo "=== finished after $((SECONDS - t0)) s; files written:"
(cd "$RES" && find . -newer "$MARK" -type f ! -name '*.lock' ! -name '.gpu_sweep_start' | sort | tee "$LOGS/written.txt")
for f in "$LOGS"/p*.log; do echo "--- $(basename "$f")"; tail -n 8 "$f"; done
cp "$LOGS"/p*.log "$LOGS/written.txt" "$RES/" 2>/dev/null
(cd "$RES" && tar -czf "$OUTDIR/gpu_sweep.tar.gz" $(cat written.txt) written.txt p*.log)
ls -la "$OUTDIR"
