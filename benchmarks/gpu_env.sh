# Sourced by the scripts for a lent GPU machine (gpu_sweep.sh, gpu_train.sh) after `cd` to the
# repository root: `gpu_env NAME` sends all output to $OUT/NAME.log as well (./gpu-out without $OUT)
# and sets PY (PYTHON, default python3) and PYTHONPATH: the repository, and .whl/site, the project's
# dependencies that the machine lacks, unzipped from wheels (README "GPU sweeps").
gpu_env() {
    OUTDIR="${OUT:-./gpu-out}"
    mkdir -p "$OUTDIR"
    exec > >(tee -a "$OUTDIR/$1.log") 2>&1
    PY="${PYTHON:-python3}"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    [ -d .whl/site ] && export PYTHONPATH="$PWD/.whl/site:$PYTHONPATH"
    export PYTHONUNBUFFERED=1
}
