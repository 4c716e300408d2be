#!/usr/bin/env bash
# Example 3: a Slurm launch of the paper's 2B GatedNorm model on 16 nodes, as a dry run.
#
#   bash examples/03_slurm_launch_dry_run.sh [OUT_DIR]      # default OUT_DIR: ./slurm_dry_run
#
# `mgn launch` is for the login node: it imports neither torch nor Megatron, runs in < 1 s, and a
# dry run writes nothing (this script saves the printed output to OUT_DIR/dry_run.txt). Replace
# --dry-run by --submit to write <run_dir>/sbatch/*.sbatch and call sbatch.
#
# The command line, piece by piece:
#   dense2b_gatednorm              recipe megatron_gatednorm/recipes/dense2b_gatednorm.yaml (extends
#                                  dense2b.yaml); your own: --recipe-dir DIR or MGN_RECIPE_DIR;
#                                  overlays join with '+', e.g. dense2b_gatednorm+clip100
#   lr=2e-3                        override of a recipe key (coerced to the type it replaces)
#   data_path=...                  Megatron's --data-path (required by --submit; mock_data=true for smoke runs)
#   launch.megatron_lm_path=...    section.key for launcher settings: Megatron-LM checkout put on PYTHONPATH
#   launch.run_dir=...             where checkpoints, logs, TensorBoard and the rendered scripts go
#   --nodes 16                     picks the recipe's layout for 16 nodes and validates it for 16 x 8 GPUs
#   --gpu-memory-gb 80             memory per GPU that the estimate is checked against
set -euo pipefail

OUT="${1:-./slurm_dry_run}"
mkdir -p "$OUT"
RUN_DIR="$(cd "$OUT" && pwd)/runs/dense2b_gatednorm"

mgn launch dense2b_gatednorm lr=2e-3 \
    data_path=/lustre/corpus/my_corpus_text_document \
    launch.megatron_lm_path=/opt/Megatron-LM \
    launch.run_dir="$RUN_DIR" \
    --nodes 16 --gpu-memory-gb 80 --dry-run > "$OUT/dry_run.txt"

# The dry run prints four sections, each headed "# ---- <name> ----"; show them one at a time.
section() { awk -v want="# ---- $1 " '/^# ---- .* ----$/ {on = (index($0, want) == 1); next} on' "$OUT/dry_run.txt"; }

cat <<'EOF'
=== 1. derived: what the launcher computed from the recipe for 16 nodes ===
  layout       world size and TP/PP/CP/EP/DP (the recipe's "layouts:" entry for <= 16 nodes; all checked
               to divide heads, query groups, layers, experts, batch)
  batch/budget tokens per step and train_iters from launch.train_tokens (120B for the 2B model)
  norm         the plugin config passed as --norm-variant/--gatednorm-* flags
  parameters   total/active parameters (same formula as `mgn params`, checked against Megatron's build)
  parity       GatedNorm's extra 3.7M parameters paid for by a narrower FFN (6144 -> 6122)
  memory/GPU   weights + grads + Adam (distributed optimizer) + activations, against --gpu-memory-gb
  runtime      estimated hours and how many chained jobs of slurm.time that is (afterany dependencies)
  warning      anything --submit would refuse or you probably want to set
EOF
section derived
echo
echo "=== 2. choices: hyper-parameters the paper does not state, with the recipe's reasoning (override any) ==="
section choices | sed -n 1,4p
echo "   ... ($(section choices | wc -l) lines in all)"
echo
echo "=== 3. megatron command: what every rank runs (mgn train = Megatron-LM pretrain() + the plugin) ==="
section "megatron command" | tr ' ' '\n' | grep -E -A1 -- '^--(norm-variant|ffn-hidden-size|lr|train-iters|data-path|save)$' \
    | grep -v -- '^--$' | paste - - | sed 's/^/   /'
echo "   ... (full command in $OUT/dry_run.txt)"
echo
cat <<'EOF'
=== 4. sbatch script: the job --submit would queue ===
  #SBATCH lines   nodes, one task per GPU, time limit, --signal=B:USR1@600 (save before the limit), --requeue
  environment     MASTER_ADDR/PORT from the allocation, NCCL settings, MGN_DEVICE=cuda (never a silent CPU run)
  resume          --load = --save; a requeued job continues from latest_checkpointed_iteration.txt
  preflight       `mgn preflight` on every rank first: layout, GPUs, rendezvous, parameter count, fused-norm check
  training        srun python -m megatron_gatednorm.training.pretrain "${MEGATRON_ARGS[@]}"
  signal handling USR1 -> Megatron saves and exits -> scontrol requeue (a plain scancel saves, no requeue)
EOF
section "sbatch script" | grep -E '^#SBATCH|^export (PYTHONPATH|MGN_DEVICE)|preflight --recipe-json|megatron_gatednorm.training.pretrain ' \
    | sed 's/^/   /'
echo

# Mistakes fail before anything is queued: one line naming the field and what would fit, exit code 2.
echo "=== a layout that cannot work ==="
set +e
mgn launch dense2b_gatednorm --nodes 16 tensor_model_parallel_size=4 --dry-run > /dev/null 2> "$OUT/error.txt"
rc=$?
set -e
echo "   exit code $rc: $(cat "$OUT/error.txt")"
