"""Golden argv (recipe + overrides → exact Megatron command) and every validation error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_gatednorm.launch.plan import build
from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.paper import PAPER_MODELS
from megatron_gatednorm.parity import parity_ffn
from megatron_gatednorm.launch.argv import megatron_argv
from megatron_gatednorm.launch.recipes import load_recipe
from megatron_gatednorm.launch.validate import check_submittable, make_plan, parse_slurm_time

ROOT = Path(__file__).resolve().parents[1]

TINY_ARGV = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--group-query-attention",
    "--num-query-groups", "2", "--kv-channels", "16", "--ffn-hidden-size", "128", "--attention-output-gate",
    "--swiglu", "--disable-bias-linear", "--normalization", "RMSNorm", "--position-embedding-type", "rope",
    "--max-position-embeddings", "128", "--vocab-size", "256", "--make-vocab-size-divisible-by", "128",
    "--attention-dropout", "0.0", "--hidden-dropout", "0.0", "--seq-length", "64", "--tokenizer-type",
    "NullTokenizer", "--mock-data", "--micro-batch-size", "1", "--global-batch-size", "16", "--train-iters", "10",
    "--lr", "0.001", "--lr-decay-style", "constant", "--bf16", "--transformer-impl", "local", "--save-interval", "5",
    "--ckpt-format", "torch_dist", "--log-interval", "1", "--eval-interval", "5", "--eval-iters", "2",
    "--seed", "1234",
    "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1", "--context-parallel-size", "1",
    "--expert-model-parallel-size", "1", "--save", "/runs/tiny/checkpoints", "--load", "/runs/tiny/checkpoints",
    "--tensorboard-dir", "/runs/tiny/tensorboard", "--exit-signal-handler",
    "--norm-variant", "gatednorm", "--gatednorm-rank", "4",
]

DENSE2B_GATEDNORM_CLIP100_ARGV = [
    "--num-layers", "28", "--hidden-size", "2048", "--num-attention-heads", "8", "--group-query-attention",
    "--num-query-groups", "2", "--kv-channels", "256", "--ffn-hidden-size", "6122", "--attention-output-gate",
    "--swiglu", "--disable-bias-linear", "--qk-layernorm", "--normalization", "RMSNorm", "--norm-epsilon", "1e-06",
    "--position-embedding-type", "rope", "--rotary-base", "1000000", "--max-position-embeddings", "4096",
    "--vocab-size", "151936", "--make-vocab-size-divisible-by", "128", "--attention-dropout", "0.0",
    "--hidden-dropout", "0.0", "--init-method-std", "0.02", "--seq-length", "4096", "--tokenizer-type",
    "HuggingFaceTokenizer", "--tokenizer-model", "Qwen/Qwen3-1.7B", "--data-path", "/data/web_text_document",
    "--split", "99,1,0", "--micro-batch-size", "4", "--global-batch-size", "512", "--lr", "0.001", "--min-lr",
    "0.00043", "--lr-decay-style", "cosine", "--lr-warmup-fraction", "0.01", "--weight-decay", "0.1",
    "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--adam-eps", "1e-08", "--clip-grad", "1.0", "--bf16",
    "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather", "--transformer-impl",
    "transformer_engine", "--save-interval", "1000", "--ckpt-format", "torch_dist", "--log-interval", "10",
    "--log-throughput", "--eval-interval", "2000", "--eval-iters", "10", "--distributed-timeout-minutes", "30",
    "--seed", "1234", "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
    "--context-parallel-size", "1", "--expert-model-parallel-size", "1", "--train-iters", "57221",
    "--save", "/ckpt/g/checkpoints", "--load", "/ckpt/g/checkpoints", "--tensorboard-dir", "/ckpt/g/tensorboard",
    "--exit-signal-handler", "--wandb-project", "gatednorm", "--wandb-exp-name", "dense2b_gatednorm+clip100",
    "--wandb-save-dir", "/ckpt/g/wandb", "--norm-variant", "gatednorm", "--residual-clip", "100.0",
]


def argv_of(spec, overrides=(), nodes=1, gpu_memory_gb=None):
    plan, _ = build(spec, list(overrides), nodes, gpu_memory_gb)
    return megatron_argv(plan)


def test_golden_tiny():
    assert argv_of("tiny", ["launch.run_dir=/runs/tiny"]) == TINY_ARGV


def test_golden_dense2b_gatednorm_clip100_4_nodes():
    argv = argv_of("dense2b_gatednorm+clip100", [
        "launch.run_dir=/ckpt/g", "data_path=/data/web_text_document", "lr=1e-3", "micro_batch_size=4",
        "launch.wandb_project=gatednorm"], nodes=4)
    assert argv == DENSE2B_GATEDNORM_CLIP100_ARGV


def test_golden_moe_layout_and_plugin_flags():
    argv = argv_of("moe24b_a3b_preaffine+gate_tanh", ["launch.run_dir=/r"], nodes=1)
    joined = " ".join(argv)
    for piece in ("--num-experts 256", "--moe-router-topk 8", "--expert-model-parallel-size 4",
                  "--pipeline-model-parallel-size 2", "--experimental-attention-variant gated_delta_net",
                  "--linear-attention-freq 4", "--untie-embeddings-and-output-weights", "--recompute-granularity full",
                  "--norm-variant preaffine --gatednorm-gate-activation tanh", "--train-iters 119210"):
        assert piece in joined, piece
    width = parity_ffn(PAPER_MODELS["moe-24b-a3b"], NormConfig(variant="preaffine")).width
    assert argv[argv.index("--moe-shared-expert-intermediate-size") + 1] == str(width) == "511"


def test_glu_and_train_iters_from_tokens():
    argv = argv_of("dense2b+glu", ["launch.train_tokens=2.1e9", "launch.run_dir=/r"])
    assert argv[-2:] == ["--ffn-activation", "glu"]
    assert argv[argv.index("--train-iters") + 1] == "1002"  # ceil(2.1e9 / (512 × 4096))


def err(spec, overrides=(), nodes=1, gpu_memory_gb=None):
    with pytest.raises(ValueError) as e:
        build(spec, list(overrides), nodes, gpu_memory_gb)
    return str(e.value)


@pytest.mark.parametrize("spec, overrides, nodes, expected", [
    ("dense2b", ["tensor_model_parallel_size=4"], 1,
     "tensor_model_parallel_size=4 does not divide num_query_groups=2; valid: 1, 2"),
    ("dense2b", ["tensor_model_parallel_size=3"], 3,
     "tensor_model_parallel_size=3 does not divide num_attention_heads=8; valid: 1, 2"),
    ("tiny", ["launch.gpus_per_node=1", "num_query_groups=4", "tensor_model_parallel_size=4"], 4,
     "tensor_model_parallel_size=4 exceeds gpus_per_node=1 (tensor parallelism must stay inside a node); valid: 1"),
    ("moe24b_a3b", ["tensor_model_parallel_size=2", "linear_num_key_heads=15", "pipeline_model_parallel_size=1",
                    "expert_model_parallel_size=4"], 1,
     "tensor_model_parallel_size=2 does not divide linear_num_key_heads=15; valid: 1"),
    ("dense2b", ["pipeline_model_parallel_size=3"], 1,
     "pipeline_model_parallel_size=3 does not divide num_layers=28; valid: 1, 2, 4"),
    ("dense2b", ["pipeline_model_parallel_size=2", "megatron.num_layers_per_virtual_pipeline_stage=4"], 1,
     "num_layers_per_virtual_pipeline_stage=4 does not divide the 14 layers of a pipeline stage; valid: 1, 2, 7, 14"),
    ("dense2b", ["launch.gpus_per_node=6", "tensor_model_parallel_size=2", "pipeline_model_parallel_size=4"], 1,
     "nodes=1: world size 6 (nodes × gpus_per_node=6) is not divisible by tensor×pipeline×context parallel = "
     "2×4×1 = 8; valid nodes: 4"),
    ("dense2b", ["megatron.context_parallel_size=2", "seq_length=4098", "max_position_embeddings=8192"], 1,
     "context_parallel_size=2 needs seq_length divisible by 2×cp=4; seq_length=4098"),
    ("moe7b_a2b", ["expert_model_parallel_size=3"], 1,
     "expert_model_parallel_size=3 does not divide num_experts=128; valid: 1, 2, 4, 8"),
    ("moe7b_a2b", ["num_experts=96", "expert_model_parallel_size=32"], 1,
     "expert_model_parallel_size=32: world size 8 is not divisible by expert×expert-tensor×pipeline parallel = "
     "32×1×1; valid: 1, 2, 4, 8"),
    ("dense2b", ["megatron.expert_model_parallel_size=2"], 1,
     "expert_model_parallel_size=2 but the model has no experts (num_experts unset); valid: 1"),
    ("dense2b", ["tensor_model_parallel_size=2", "megatron.sequence_parallel=true", "seq_length=4095"], 1,
     "sequence_parallel needs seq_length divisible by tensor_model_parallel_size=2; seq_length=4095"),
    ("dense2b", ["global_batch_size=500"], 1,
     "global_batch_size=500 is not divisible by micro_batch_size×data_parallel_size=2×8=16; valid: 496, 512"),
    ("dense2b", ["micro_batch_size=0"], 1, "micro_batch_size=0: must be >= 1"),
    ("dense2b", ["seq_length=8192"], 1,
     "seq_length=8192 exceeds max_position_embeddings=4096; valid: seq_length <= 4096 or max_position_embeddings=8192"),
    ("dense2b", ["launch.train_tokens=null"], 1, "launch.train_tokens=None and megatron.train_iters=None: set one"),
    ("dense2b", ["launch.train_tokens=lots"], 1, "invalid launch.train_tokens='lots': expected int like the recipe's value 120000000000"),
    ("dense2b", ["vocab_size=null"], 1, "invalid megatron.vocab_size=None: required"),
    ("dense2b", ["num_layers=null"], 1, "invalid megatron.num_layers=None: required"),
    ("dense2b", [], 0, "nodes=0: recipe dense2b has layouts for 1, 4, 16, 64 nodes; valid: nodes >= 1"),
    ("dense2b", ["launch.launcher=mpirun"], 1, "invalid launch.launcher='mpirun'; valid: srun, torchrun"),
    ("dense2b", ["launch.device=tpu"], 1, "invalid launch.device='tpu'; valid: cuda, cpu"),
    ("dense2b", ["launch.gpus_per_node=0"], 1, "invalid launch.gpus_per_node=0: must be >= 1"),
    ("dense2b", ["gatednorm.norm_variant=layernorm"], 1,
     "invalid gatednorm.norm_variant='layernorm': valid choices: rmsnorm, gatednorm"),
    ("dense2b_gatednorm", ["gatednorm.gatednorm_rank=4096"], 1,
     "invalid gatednorm.gatednorm_rank=4096: it must satisfy 1 <= rank < hidden size (2048)"),
    ("dense2b", ["slurm.time=forever"], 1, "invalid slurm.time='forever': expected MM, HH:MM:SS or D-HH:MM:SS"),
    ("dense2b", ["slurm.time=00:05:00", "launch.signal_lead_s=600"], 1,
     "launch.signal_lead_s=600 is not shorter than slurm.time=00:05:00; valid: < 300"),
    ("dense2b", ["launch.chain_jobs=0"], 1, "invalid launch.chain_jobs=0; valid: auto or an integer >= 1"),
    ("moe7b_a2b", ["megatron.moe_layer_freq=[1]*47"], 1,
     "invalid moe_layer_freq='[1]*47': the pattern must have num_layers=48 entries"),
    ("moe7b_a2b", ["megatron.moe_layer_freq=__import__('os')"], 1,
     "invalid moe_layer_freq=\"__import__('os')\": expected an int or a list expression"),
    ("dense2b_gatednorm", ["megatron.fused_residual_rmsnorm=true"], 1,
     "invalid megatron.fused_residual_rmsnorm=True with norm variant 'gatednorm': Transformer Engine's fused residual "
     "RMSNorm"),
    ("tiny", ["megatron.recompute_granularity=selective", "megatron.recompute_modules=[core_attn,layernorm]"], 1,
     "invalid megatron.recompute_modules=['core_attn', 'layernorm'] with recompute_granularity='selective' and the "
     "local (non-Transformer-Engine) layers: megatron-core recomputes 'layernorm' through CheckpointWithoutOutput"),
    # HybridModel layer patterns (launch.model=hybrid; megatron.training 0.19 asserts on the pipeline ones)
    ("tiny", ["megatron.hybrid_layer_pattern=*-*-"], 1,
     "invalid megatron.hybrid_layer_pattern='*-*-' with launch.model='gpt': a layer pattern builds megatron-core's "
     "HybridModel; valid: launch.model=hybrid"),
    ("tiny_hybrid", ["megatron.hybrid_layer_pattern=GM*-"], 1, "invalid layer symbol 'M' (Mamba) in hybrid_layer_pattern"),
    ("tiny_hybrid", ["megatron.hybrid_layer_pattern=GE||*-"], 1, "an empty pipeline segment"),
    ("tiny_hybrid", ["megatron.experimental_attention_variant=gated_delta_net"], 1,
     "invalid megatron.experimental_attention_variant='gated_delta_net' with megatron.hybrid_layer_pattern='GE*-': "
     "the pattern sets every layer's kind"),
    ("tiny_hybrid", ["megatron.moe_layer_freq=2"], 1, "invalid megatron.moe_layer_freq=2 with"),
    ("tiny_hybrid", ["megatron.use_rope_scaling=true"], 1,
     "invalid megatron.use_rope_scaling=True with megatron.hybrid_layer_pattern='GE*-': HybridModel has no Llama 3.1 "
     "RoPE scaling; valid: unset"),
    ("tiny_hybrid", ["num_layers=2"], 1,
     "invalid megatron.num_layers=2 with megatron.hybrid_layer_pattern='GE*-': the pattern has 4 layers (Megatron "
     "takes the pattern's); valid: 4 or unset"),
    ("tiny_hybrid", ["num_experts=null"], 1, "invalid megatron.num_experts=None with megatron.hybrid_layer_pattern="
     "'GE*-': its 1 E (MoE) layers need experts"),
    ("tiny_hybrid", ["megatron.hybrid_layer_pattern=G*--"], 1, "invalid megatron.num_experts=4 with megatron."
     "hybrid_layer_pattern='G*--': the pattern has no E (MoE) layer; valid: unset, or E layers in the pattern"),
    ("tiny_hybrid", ["launch.gpus_per_node=3", "megatron.expert_model_parallel_size=3"], 1,
     "expert_model_parallel_size=3 does not divide num_experts=4"),
    ("tiny_hybrid", ["launch.gpus_per_node=2", "megatron.hybrid_layer_pattern=G|E*|-", "pipeline_model_parallel_size=2"],
     1, "invalid pipeline_model_parallel_size=2 with megatron.hybrid_layer_pattern='G|E*|-': its 3 | segments must "
        "be a multiple of it (> 1; each rank takes one or more virtual stages); valid: 3 (or a pattern without |)"),
    ("tiny_hybrid", ["megatron.hybrid_layer_pattern=GE|*-"], 1, "invalid pipeline_model_parallel_size=1 with"),
    ("tiny_hybrid", ["launch.gpus_per_node=2", "megatron.hybrid_layer_pattern=GE|*-", "pipeline_model_parallel_size=2",
                     "megatron.decoder_first_pipeline_num_layers=1"], 1,
     "invalid megatron.decoder_first_pipeline_num_layers=1 with megatron.hybrid_layer_pattern='GE|*-': the | "
     "segments set the pipeline stages; valid: unset (or a pattern without |)"),
    ("tiny_hybrid", ["megatron.num_layers_per_virtual_pipeline_stage=1"], 1,
     "invalid megatron.num_layers_per_virtual_pipeline_stage=1 with megatron.hybrid_layer_pattern='GE*-': "
     "megatron.training refuses it with a pattern; valid: unset (| segments"),
    ("tiny_hybrid", ["megatron.pipeline_model_parallel_layout=Et|tL"], 1,
     "invalid megatron.pipeline_model_parallel_layout='Et|tL' with"),
    ("tiny_hybrid", ["launch.gpus_per_node=3", "pipeline_model_parallel_size=3"], 1,
     "pipeline_model_parallel_size=3 does not divide num_layers=4; valid: 1"),
    ("moe7b_a2b+hybrid", ["megatron.pipeline_model_parallel_size=2", "megatron.num_layers_per_virtual_pipeline_stage=5"], 1,
     "invalid megatron.num_layers_per_virtual_pipeline_stage=5: it must divide the 24 GPT layers of a pipeline stage"),
    ("moe7b_a2b+hybrid", ["tensor_model_parallel_size=2", "num_query_groups=2", "linear_num_key_heads=3"], 1,
     "tensor_model_parallel_size=2 does not divide linear_num_key_heads=3"),
])
def test_validation_errors(spec, overrides, nodes, expected):
    assert expected in err(spec, overrides, nodes)


def test_layernorm_recompute_needs_transformer_engine():
    """Refused for local layers (launch validation, before anything is submitted); fine with TE
    layers (dense2b, and Megatron's default transformer_impl) or without selective recompute."""
    from megatron_gatednorm.norm_flags import check_recompute_modules

    fix = "valid: --transformer-impl transformer_engine, or drop layernorm from --recompute-modules"
    message = err("tiny", ["megatron.recompute_granularity=selective", "megatron.recompute_modules=layernorm"])
    assert message.endswith(fix)
    selective = ["megatron.recompute_granularity=selective", "megatron.recompute_modules=[layernorm,mlp]"]
    assert "--recompute-modules layernorm mlp" in " ".join(argv_of("dense2b", ["data_path=/d"] + selective))
    argv_of("dense2b", ["data_path=/d", "megatron.transformer_impl=null"] + selective)  # Megatron's default: TE
    argv_of("tiny", ["megatron.recompute_granularity=full", "megatron.recompute_modules=[layernorm]"])
    with pytest.raises(ValueError, match="^invalid --recompute-modules=\\['layernorm', 'mlp'\\] with recompute_gran"):
        check_recompute_modules("selective", "layernorm,mlp", transformer_engine=False, name="--recompute-modules")
    check_recompute_modules("selective", ["core_attn", "mlp"], transformer_engine=False)
    check_recompute_modules(None, ["layernorm"], transformer_engine=False)


def test_fused_residual_rmsnorm_only_where_megatron_keeps_its_norms():
    """The baseline keeps Megatron's (TE) norms, so TE's fused residual RMSNorm passes through."""
    assert "--fused-residual-rmsnorm" in argv_of("dense2b", ["data_path=/d", "megatron.fused_residual_rmsnorm=true"])


def test_memory_error_names_what_fits():
    message = err("dense2b", [], 1, gpu_memory_gb=30)
    assert message.startswith("gpu_memory_gb=30: estimated 41.")
    assert "valid: recompute_granularity=full; micro_batch_size=1" in message
    message = err("dense2b", ["launch.gpus_per_node=1"], 1, gpu_memory_gb=8)
    assert "valid: none of recompute/micro-batch/parallelism changes alone; use more nodes" in message


def test_memory_grows_with_micro_batch_and_shrinks_with_recompute():
    def total(*overrides):
        return make_plan(load_recipe("dense2b", list(overrides), nodes=1), 1).derived["memory_gib"]["total"]

    assert total("micro_batch_size=4") > total() > total("megatron.recompute_granularity=full")


def test_submit_needs_data():
    plan = make_plan(load_recipe("dense2b", nodes=1), 1)
    assert any("data_path is unset" in w for w in plan.warnings)
    assert not any("megatron_lm_path" in w for w in plan.warnings)  # mgn train has its own forward step
    with pytest.raises(ValueError, match="megatron.data_path=None: required for --submit"):
        check_submittable(plan)
    check_submittable(make_plan(load_recipe("dense2b", ["data_path=/d"], nodes=1), 1))


@pytest.mark.parametrize("text, hours", [("30", 0.5), ("04:00:00", 4.0), ("1-12:00:00", 36.0), ("2-0", 48.0)])
def test_parse_slurm_time(text, hours):
    assert parse_slurm_time(text) == pytest.approx(hours)


def test_cli_prints_value_errors_as_one_line_and_exits_2():
    out = subprocess.run(
        [sys.executable, "-m", "megatron_gatednorm.cli", "launch", "dense2b", "--nodes", "1",
         "tensor_model_parallel_size=3"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "mgn launch: error: tensor_model_parallel_size=3 does not divide num_attention_heads=8; valid: 1, 2"]


def test_nan_check_off_is_a_warning():
    quiet = make_plan(load_recipe("tiny", nodes=1), 1)
    assert not any("NaN" in w for w in quiet.warnings)
    plan = make_plan(load_recipe("tiny", ["megatron.no_check_for_nan_in_loss_and_grad=true"], nodes=1), 1)
    assert any(w.startswith("megatron.no_check_for_nan_in_loss_and_grad=true: ") and
               "non-finite losses will no longer stop training" in w for w in plan.warnings), plan.warnings
    assert "--no-check-for-nan-in-loss-and-grad" in megatron_argv(plan)


def test_hybrid_pattern_with_pipes_and_virtual_stages():
    """An explicit pattern's | segments: PP 2 with 4 segments (2 virtual stages), memory from each stage's
    own layers; the GPT layout's virtual stages become segments of whole GPT layers."""
    plan, _ = build("tiny_hybrid", ["launch.gpus_per_node=2", "global_batch_size=4",
                                    "megatron.hybrid_layer_pattern=G|E|*|-", "pipeline_model_parallel_size=2"], 1)
    assert "--hybrid-layer-pattern" in megatron_argv(plan) and plan.derived["params_total"] == build(
        "tiny_hybrid", [], 1)[0].derived["params_total"]
    derived, _ = build("dense2b+hybrid", ["pipeline_model_parallel_size=2",
                                          "megatron.num_layers_per_virtual_pipeline_stage=7"], 1)
    assert derived.megatron["hybrid_layer_pattern"] == "|".join(["*-" * 7] * 4)
    assert "num_layers_per_virtual_pipeline_stage" not in derived.megatron
