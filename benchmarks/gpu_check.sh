#!/usr/bin/env bash
# One-shot GPU check of megatron-gatednorm on one CUDA GPU (written for the lent H200: Python 3.12,
# torch 2.11, Triton 3.6, ncu; no network, no megatron-core). Run from the repository root:
#
#   bash benchmarks/gpu_check.sh
#
# Steps, each under `timeout` and all under one deadline (GPU_CHECK_BUDGET_S, default 460 s); a
# step that fails records its rc and the check goes on; a step that cannot run records why:
#   env            the machine: GPU, torch/Triton/CUDA versions, SMs, ncu, TE absent
#   install_mcore  megatron-core 0.19.2 from the carried .whl/ into /tmp/site (pip, no network)
#   kernel_tests   python3 -m pytest tests/test_fused_ops.py, compiled kernels (TRITON_INTERPRET unset)
#   kernel_extras  >2^31 elements, CUDA graph, torch.compile graph breaks, registers/spills, determinism
#   gpt_tiny       tiny Megatron GPTModel per variant in bf16: fused vs eager, recompute, Megatron DDP
#   hybrid_tiny    tiny HybridModel (GE*E) per variant in bf16: fused vs eager, 8 training steps (fla);
#                  its figures go into summary.json (the 8 files below are the device tool's limit)
#   ncu            DRAM bytes / time / registers per kernel at 16384x4096 bf16
#   bench          python3 benchmarks/norms.py --json (the roofline benchmark), with the time left
# Results in $OUT (default ./gpu_check_out), 8 files at most: gpu_check.log (everything printed),
# summary.json (date, commit, command, each step's status/rc/seconds, key figures), env.json,
# kernel_tests.json, kernel_extras.json, gpt_tiny.json, bench.json, ncu.csv.
# Settings (environment): GPU_CHECK_BUDGET_S, GPU_CHECK_SKIP (comma-separated step names),
# GPU_CHECK_WHEELS (default ./.whl), GPU_CHECK_SITE (default /tmp/site), GPU_CHECK_COMMIT (the
# commit to record when the tree has no .git), GPU_CHECK_BENCH_ARGS (default --quick).
# benchmarks/README.md says more, and how results are kept.
set -uo pipefail

if [[ -z ${EPOCHREALTIME:-} ]]; then
  echo "gpu_check.sh: needs bash 5 or newer (EPOCHREALTIME); this is bash $BASH_VERSION" >&2
  exit 2
fi
ROOT=$(pwd)
H=$ROOT/benchmarks/gpu_check
if [[ ! -f $ROOT/megatron_gatednorm/__init__.py || ! -f $H/report.py ]]; then
  echo "gpu_check.sh: run it from the repository root: bash benchmarks/gpu_check.sh" >&2
  exit 2
fi
BUDGET=${GPU_CHECK_BUDGET_S:-460}
if [[ ! $BUDGET =~ ^[0-9]+$ ]]; then
  echo "gpu_check.sh: GPU_CHECK_BUDGET_S must be a whole number of seconds, not '$BUDGET'" >&2
  exit 2
fi
OUT=${OUT:-$ROOT/gpu_check_out}
SKIP=",${GPU_CHECK_SKIP:-},"
WHEELS=${GPU_CHECK_WHEELS:-$ROOT/.whl}
SITE=${GPU_CHECK_SITE:-/tmp/site}
MIN_STEP_S=15   # a step with less time than this left is skipped
RESERVE_S=5     # kept back from every step for the final summary
COMMAND="bash benchmarks/gpu_check.sh$(env | grep -E '^(GPU_CHECK_[A-Z_]+|OUT)=' | sort | sed 's/^/ /' | tr -d '\n')"

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
for f in gpu_check.log summary.json env.json kernel_tests.json kernel_extras.json gpt_tiny.json bench.json ncu.csv; do
  rm -f "$OUT/$f"
done
LOG=$OUT/gpu_check.log
: > "$LOG"
T0=$EPOCHSECONDS
DEADLINE=$((T0 + BUDGET))

unset TRITON_INTERPRET MGN_NORM_IMPL   # compiled kernels; each helper picks its own path
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TRITON_CACHE_DIR=$WORK/triton TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

report() { python3 "$H/report.py" "$@"; }
say() { echo "$*" | tee -a "$LOG"; }
time_left() { echo $((DEADLINE - EPOCHSECONDS - RESERVE_S)); }
# the limit a step asking for $1 seconds gets
limit_for() { local left; left=$(time_left); echo $(( $1 < left ? $1 : left )); }

skip() {  # skip NAME REASON
  say "=== [$1] skipped: $2"
  report step --work "$WORK" --out "$OUT" --name "$1" --skipped "$2" >> "$LOG" 2>&1
}

# step NAME LIMIT_S CMD...: CMD under timeout (LIMIT_S, or less near the deadline), output to the
# log; a line "NOTE: ..." in its output becomes the step's note. Sets RC.
step() {
  local name=$1 limit first t0 secs status note
  limit=$(limit_for "$2"); shift 2
  RC=
  if [[ $SKIP == *",$name,"* ]]; then skip "$name" "listed in GPU_CHECK_SKIP"; return; fi
  if (( limit < MIN_STEP_S )); then
    skip "$name" "deadline: $(time_left) s left of the ${BUDGET} s budget"
    return
  fi
  say "=== [$name] start at +$((EPOCHSECONDS - T0)) s, limit ${limit} s"
  echo "\$ $*" >> "$LOG"
  first=$(( $(wc -l < "$LOG") + 1 ))
  t0=$EPOCHREALTIME
  timeout -k 5 "$limit" "$@" >> "$LOG" 2>&1
  RC=$?
  secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  note=$(tail -n +"$first" "$LOG" | grep -a '^NOTE: ' | tail -n 1 | cut -c7-)
  case $RC in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  if [[ $status != ok ]]; then tail -n +"$first" "$LOG" | tail -n 25 | sed 's/^/    /'; fi
  say "=== [$name] $status (rc $RC) after ${secs} s${note:+: $note}"
  report step --work "$WORK" --out "$OUT" --name "$name" --rc "$RC" --seconds "$secs" --limit "$limit" \
    --cmd "$*" --note "$note" >> "$LOG" 2>&1
}

report init --work "$WORK" --command "$COMMAND" --budget "$BUDGET" | tee -a "$LOG"

# 1. environment -----------------------------------------------------------------------------------
step env 60 python3 "$H/env.py" --out "$OUT/env.json"
HAVE_CUDA=$(report get "$OUT/env.json" cuda.available 2>/dev/null) ||
  HAVE_CUDA=$(python3 -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null) || HAVE_CUDA=0
NO_CUDA="needs CUDA: $(report get "$OUT/env.json" cuda.reason 2>/dev/null || echo 'torch.cuda.is_available() is False')"

# 2. megatron-core 0.19.2 from the carried wheels ----------------------------------------------------
PYTAG=$(python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
shopt -s nullglob
all_wheels=("$WHEELS"/*.whl)
wheels=("$WHEELS"/*-"$PYTAG"-*.whl "$WHEELS"/*-py3-none-*.whl "$WHEELS"/*-py2.py3-none-*.whl)
shopt -u nullglob
if (( ${#all_wheels[@]} == 0 )); then
  skip install_mcore "no wheels in $WHEELS (run benchmarks/fetch_wheels.sh where PyPI is reachable, carry .whl)"
elif (( ${#wheels[@]} != ${#all_wheels[@]} )); then
  skip install_mcore "the wheels in $WHEELS are not all for this python3 ($PYTAG): $(cd "$WHEELS" && ls ./*.whl | tr '\n' ' ')"
else
  step install_mcore 60 bash -c 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$0" "${@:2}" && PYTHONPATH="$0" python3 "$1/env.py" --requirements megatron-core' \
      "$SITE" "$H" "${wheels[@]}"
  [[ -n $RC && -d $SITE/megatron ]] && export PYTHONPATH="$SITE:$PYTHONPATH"
fi
if python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("megatron.core") is None)' 2>/dev/null; then
  NO_MCORE=
else
  NO_MCORE="needs megatron-core, which is not importable (install_mcore did not install it)"
fi

# 3. the project's kernel tests, compiled ------------------------------------------------------------
if [[ $HAVE_CUDA != 1 ]]; then
  skip kernel_tests "$NO_CUDA"
else
  step kernel_tests 150 bash -c 'set -o pipefail; python3 -m pytest -v -rA -p no:cacheprovider \
      tests/test_fused_ops.py --junitxml="$0/junit.xml" 2>&1 | tee "$0/pytest.txt"' "$WORK"
  [[ -n $RC ]] && report junit --xml "$WORK/junit.xml" --text "$WORK/pytest.txt" --out "$OUT/kernel_tests.json" >> "$LOG" 2>&1
fi

# 4. GPU-only kernel checks --------------------------------------------------------------------------
if [[ $HAVE_CUDA != 1 ]]; then
  skip kernel_extras "$NO_CUDA"
else
  lim=$(limit_for 110)
  step kernel_extras "$lim" python3 "$H/kernel_extras.py" --out "$OUT/kernel_extras.json" --budget-s $((lim > 50 ? lim - 25 : lim / 2))
fi

# 5. tiny Megatron GPTModel per variant --------------------------------------------------------------
if [[ $HAVE_CUDA != 1 ]]; then
  skip gpt_tiny "$NO_CUDA"
elif [[ -n $NO_MCORE ]]; then
  skip gpt_tiny "$NO_MCORE"
else
  lim=$(limit_for 110)
  step gpt_tiny "$lim" python3 "$H/gpt_tiny.py" --out "$OUT/gpt_tiny.json" --budget-s $((lim > 50 ? lim - 25 : lim / 2))
fi

# 5b. tiny HybridModel per variant (megatron-core >= 0.18, fla from the carried wheels) ----------------
if [[ $HAVE_CUDA != 1 ]]; then
  skip hybrid_tiny "$NO_CUDA"
elif [[ -n $NO_MCORE ]]; then
  skip hybrid_tiny "$NO_MCORE"
else
  lim=$(limit_for 70)
  step hybrid_tiny "$lim" python3 "$H/hybrid_tiny.py" --out "$WORK/hybrid_tiny.json" --budget-s $((lim > 40 ? lim - 15 : lim / 2))
fi

# 6. DRAM bytes per kernel (ncu reads counters on Firecracker machines, not on gVisor) ----------------
if [[ $HAVE_CUDA != 1 ]]; then
  skip ncu "$NO_CUDA"
elif ! command -v ncu > /dev/null; then
  skip ncu "ncu is not on PATH"
else
  step ncu 90 bash -c 'ncu --target-processes all --profile-from-start off --clock-control none \
      --print-units base --csv --page raw --metrics "$1" python3 "$2/ncu_target.py" > "$0/ncu.out" 2>&1' \
      "$WORK" "$(report ncu-metrics)" "$H"
  [[ -n $RC ]] && report ncu --raw "$WORK/ncu.out" --csv "$OUT/ncu.csv" --work "$WORK" >> "$LOG" 2>&1
fi

# 7. the benchmark, with the time that is left ---------------------------------------------------------
if [[ $HAVE_CUDA != 1 ]]; then
  skip bench "$NO_CUDA"
else
  read -r -a bench_args <<< "${GPU_CHECK_BENCH_ARGS:---quick}"
  (( $(time_left) < 240 )) && bench_args+=(--no-compile)
  (( $(time_left) < 120 )) && bench_args+=(--no-layer)
  step bench 600 python3 benchmarks/norms.py --json "$OUT/bench.json" "${bench_args[@]}"
fi

say "=== done in $((EPOCHSECONDS - T0)) s; results in $OUT"
report finish --work "$WORK" --out "$OUT" 2>&1 | tee -a "$LOG"   # rc 1 if a step failed or timed out
RC=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$RC"
