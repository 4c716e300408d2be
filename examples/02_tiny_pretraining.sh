#!/usr/bin/env bash
# Example 2: a tiny GatedNorm pretraining run, on CPU, in about 20 s.
#
#   bash examples/02_tiny_pretraining.sh [OUT_DIR]      # default OUT_DIR: ./tiny_pretraining
#
# Everything it writes (dataset index cache, checkpoint, log) goes under OUT_DIR.
#
# WHICH TRAINER RUNS HERE. Production training is `mgn train` (= python -m megatron_gatednorm.training.pretrain):
# Megatron-LM's own pretrain() loop with the plugin's flags (extra_args_provider) and a model
# provider that builds GPTModel from the plugin's specs. It imports forward_step and the dataset
# provider from Megatron-LM's pretrain_gpt.py, so it needs a Megatron-LM checkout (core_v* tag
# matching megatron-core) on PYTHONPATH, and it is a GPU loop. This machine has neither, so
# `mgn train` does NOT run in this example today. The command would be:
#
#   PYTHONPATH=/path/to/Megatron-LM torchrun --nproc-per-node 8 -m megatron_gatednorm.training.pretrain \
#       --num-layers 2 --hidden-size 64 --num-attention-heads 4 --group-query-attention \
#       --num-query-groups 2 --ffn-hidden-size 128 --swiglu --disable-bias-linear --qk-layernorm \
#       --attention-output-gate --normalization RMSNorm --seq-length 32 --max-position-embeddings 32 \
#       --micro-batch-size 4 --global-batch-size 32 --train-iters 10 --lr 3e-3 --lr-warmup-iters 2 \
#       --mock-data --tokenizer-type NullTokenizer --vocab-size 255 \
#       --save "$OUT/ckpt" --load "$OUT/ckpt" --ckpt-format torch_dist \
#       --norm-variant gatednorm --gatednorm-rank 8 --gatednorm-placement attn,mlp,final
#
# (`mgn train <same flags>` is the same thing; `mgn launch tiny --dry-run` renders a full Slurm job
# for it, see example 3.)
#
# What runs below is `mgn small-train`: the plugin's small deterministic trainer on megatron-core
# (CPU or one GPU; TP/SP/DP/EP via torchrun, no PP). It takes Megatron-LM's flag names, builds the
# same GPTModel from the same specs, reads data through Megatron's GPTDataset (here MockGPTDataset),
# and saves Megatron-LM torch_dist checkpoints that `mgn convert to-hf` and megatron.training read.
set -euo pipefail

OUT="${1:-./tiny_pretraining}"
mkdir -p "$OUT"
export MGN_DEVICE="${MGN_DEVICE:-cpu}"   # explicit device: a job asked for cuda never falls back to CPU
export PYTHONWARNINGS="ignore"          # megatron-core's "Apex/TE not installed" notices

MODEL=(                                  # Megatron-LM flag names, as in a recipe
  --num-layers 2 --hidden-size 64 --num-attention-heads 4 --group-query-attention --num-query-groups 2
  --ffn-hidden-size 128 --swiglu --disable-bias-linear --qk-layernorm
  --attention-output-gate                # gated attention: the paper's baseline
  --seq-length 32 --max-position-embeddings 32
)
PLUGIN=(                                 # the plugin's flags (add_gatednorm_args)
  --norm-variant gatednorm               # rmsnorm | gatednorm | preaffine | preaffine_gatednorm | dyt | gatedyt
  --gatednorm-rank 8                     # rank r of the gate: sigmoid(W_up silu(W_down y)) * y, W_down [r, d]
  --gatednorm-placement attn,mlp,final   # which residual-stream norms are replaced (add ",qk" for QK-norm)
)
TRAINING=(
  --micro-batch-size 4 --global-batch-size 8 --train-iters 10 --lr 3e-3 --lr-warmup-iters 2
  --mock-data --tokenizer-type NullTokenizer --vocab-size 255    # Megatron's MockGPTDataset, no files
  --data-cache-path "$OUT/cache"          # GPTDataset's index cache
  --save "$OUT/ckpt" --save-interval 10   # torch_dist checkpoint + $OUT/ckpt/train_log.jsonl
  --log-interval 5 --eval-interval 10 --eval-iters 2
  --outlier-log-interval 10               # per-layer peak |h| of the residual stream (the paper's outliers)
)

# One JSON line per event: start (layout, parameters), train (loss, lr, grad norm), eval, outliers, save, done.
mgn small-train "${MODEL[@]}" "${PLUGIN[@]}" "${TRAINING[@]}"

echo "checkpoint: $OUT/ckpt (latest iteration $(cat "$OUT/ckpt/latest_checkpointed_iteration.txt"))"
echo "next: mgn convert to-hf --load $OUT/ckpt --out $OUT/hf   (example 4 loads such a folder in transformers)"
