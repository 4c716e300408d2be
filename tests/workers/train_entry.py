"""Run by tests/test_train_entry.py inside .venv-mcore019 (megatron-core 0.19.2 with its real
``megatron.training``): parses every recipe's argv with Megatron-LM's own parser plus the
plugin's ``extra_args_provider``, runs ``validate_args``, and builds the tiny model through
``megatron_gatednorm.training.pretrain.model_provider``. Prints one JSON object."""

import contextlib
import io
import json
import sys

from helpers.mcore019 import init_single_process, parse  # noqa: E402

from megatron_gatednorm.launch.plan import build  # noqa: E402
from megatron_gatednorm.launch.argv import megatron_argv  # noqa: E402

CASES = json.loads(sys.argv[1])
out = {"parsed": {}, "errors": {}}

from megatron_gatednorm.norm_flags import norm_config_from_args  # noqa: E402

for spec, overrides, nodes, validate in CASES:
    plan, _ = build(spec, overrides, nodes)
    argv = megatron_argv(plan)
    try:
        args = parse(argv, plan.derived["world_size"], validate)
    except Exception as e:  # noqa: BLE001
        out["errors"][spec] = f"{type(e).__name__}: {e}"
        continue
    m = plan.megatron
    out["parsed"][spec] = dict(
        norm_config_matches=norm_config_from_args(args) == plan.norm_config,
        num_layers=args.num_layers == m["num_layers"], ffn=args.ffn_hidden_size == m["ffn_hidden_size"],
        train_iters=args.train_iters == m["train_iters"], load_eq_save=args.load == args.save == m["save"],
        exit_signal_handler=bool(args.exit_signal_handler),
        data_parallel_size=getattr(args, "data_parallel_size", None), expected_dp=plan.derived["data_parallel_size"],
        ffn_activation=args.ffn_activation,
    )
    if m.get("hybrid_layer_pattern"):
        out["parsed"][spec].update(
            pattern_matches=args.hybrid_layer_pattern == m["hybrid_layer_pattern"],
            segments=len(args.hybrid_layer_pattern.split("|")), num_layers_value=args.num_layers,
            pipeline=args.pipeline_model_parallel_size, virtual_pipeline=args.virtual_pipeline_model_parallel_size)

# The launcher's memory estimate against Megatron-LM's own theoretical_memory_usage (0.19.2).
from megatron.training.theoretical_memory_usage import compute_weight_and_optimizer_memory  # noqa: E402

out["memory"] = {}
for spec, nodes in (("dense2b", 1), ("dense2b_gatednorm", 4), ("dense2b_preaffine", 64)):
    plan, _ = build(spec, ["data_path=/d"], nodes)
    args = parse(megatron_argv(plan), plan.derived["world_size"], True)
    args.padded_vocab_size = plan.derived["padded_vocab_size"]
    mem = plan.derived["memory_gib"]
    with contextlib.redirect_stdout(io.StringIO()):
        megatron_gib = compute_weight_and_optimizer_memory(args) / 2 ** 30
    out["memory"][f"{spec}@{nodes}"] = dict(megatron=megatron_gib, ours=mem["weights"] + mem["grads"] + mem["optimizer"])

# The model provider on the tiny recipe (1 process, gloo, CPU shim), GatedNorm and the GLU switch.
import torch  # noqa: E402
from megatron.training import pretrain  # noqa: E402
from megatron.training.global_vars import set_args  # noqa: E402

from megatron_gatednorm.training import pretrain as train  # noqa: E402
from megatron_gatednorm.parity import count_params  # noqa: E402

out["pretrain_call_style"] = train.pretrain_call_style(pretrain)
init_single_process()
models = {}
for name, recipe, extra in (("gatednorm", "tiny", []), ("glu", "tiny", ["gatednorm.ffn_activation=glu"]),
                            ("tiny_hybrid", "tiny_hybrid", [])):
    plan, _ = build(f"{recipe}+cpu", ["launch.gpus_per_node=1", "global_batch_size=4",
                                  "launch.run_dir=/tmp/mgn-train-entry"] + extra, 1)
    args = parse(megatron_argv(plan), 1, True)
    args.padded_vocab_size = plan.derived["padded_vocab_size"]
    set_args(args)
    model = train.model_provider(pre_process=True, post_process=True)
    norms = sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith(("input_layernorm",
                    "pre_mlp_layernorm", "final_layernorm", "final_norm"))})
    tokens = torch.randint(0, 256, (1, 16))
    position_ids = torch.arange(16).unsqueeze(0)
    logits = model(tokens, position_ids, None)
    models[name] = dict(type=type(model).__name__, params=sum(p.numel() for p in model.parameters()),
                        expected=count_params(plan.shape, plan.norm_config)["total"], norms=norms,
                        activation=getattr(model.config.activation_func, "__name__", str(model.config.activation_func)),
                        logits_shape=list(logits.shape), finite=bool(torch.isfinite(logits.float()).all()))
out["models"] = models

# The upstream path that patches/ enables: pretrain_gpt.py (0.19) parses with add_gatednorm_args
# and --spec megatron_gatednorm.specs gatednorm_block_spec_from_args; GPTModelBuilder calls the spec.
from megatron.core.process_groups_config import ProcessGroupCollection  # noqa: E402
from megatron.training.argument_utils import gpt_config_from_args  # noqa: E402

from megatron_gatednorm.norm_flags import add_gatednorm_args  # noqa: E402

plan, _ = build("tiny+cpu", ["launch.gpus_per_node=1", "global_batch_size=4",
                         "megatron.spec=[megatron_gatednorm.specs, gatednorm_block_spec_from_args]"], 1)
args = parse(megatron_argv(plan), 1, True, extra_args_provider=add_gatednorm_args)
args.padded_vocab_size = plan.derived["padded_vocab_size"]
set_args(args)
model_cfg = gpt_config_from_args(args)
model = model_cfg.get_builder_cls()(model_cfg).build_model(
    pg_collection=ProcessGroupCollection.use_mpu_process_groups(), pre_process=True, post_process=True)
out["upstream_spec"] = dict(
    params=sum(p.numel() for p in model.parameters()), expected=plan.derived["params_total"],
    norms=sorted({type(m).__name__ for n, m in model.named_modules()
                  if n.endswith(("input_layernorm", "pre_mlp_layernorm", "final_layernorm"))}))
print("RESULT " + json.dumps(out))
