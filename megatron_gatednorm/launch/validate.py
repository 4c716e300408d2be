"""Check a recipe against a node count before anything is submitted, and derive the numbers.

:func:`make_plan` turns a :class:`~.recipes.Recipe` (layout already merged) into a
:class:`Plan`: the final Megatron flag values (parallel sizes, ``train_iters`` from the token
budget, the parity FFN width), the plugin's :class:`NormConfig`, the model's
:class:`ModelShape`, parameter counts and a per-GPU memory estimate. In order:

1. launcher settings (:func:`check_launch`), the HybridModel form and its layer pattern
   (:func:`plan_hybrid`, :func:`check_hybrid`) and the model the flags describe
   (:func:`check_model`: sequence, recompute modules, shape, vocabulary);
2. the parallel layout (:func:`check_layout`: TP/PP/CP/EP against heads, layers, experts, nodes);
3. parameter parity (:func:`apply_parity`: the variant's FFN width for the baseline's count);
4. batch and token budget (:func:`check_batch`, :func:`train_iters_for_budget`) and the
   parameter counts;
5. memory per GPU (:mod:`.memory` has the model; :func:`check_memory` the check and what would fit);
6. runtime and chained jobs (:func:`plan_runtime`), run directory and the flags that follow from
   it (:func:`plan_run_dir`), warnings (:func:`plan_warnings`).

Every problem raises ``ValueError("<field>=<value> <problem>; valid: <what would fit>")``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from megatron_gatednorm.norm_flags import check_fused_norm_flags, check_recompute_modules, dest, norm_config_from_values
from megatron_gatednorm.norm_config import NormConfig, NormConfigError
from megatron_gatednorm.device import parse_device
from megatron_gatednorm.launch.memory import memory_estimate
from megatron_gatednorm.launch.recipes import Recipe
from megatron_gatednorm import hybrid_pattern
from megatron_gatednorm.model_shape import ModelShape, flag_value, hybrid_form, missing_required, shape_from_flags
from megatron_gatednorm.parity import count_params, padded_vocab, parity_ffn


def _fmt(values) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def shape_from_megatron(m: Dict[str, Any], vocab_size: Optional[int] = None) -> ModelShape:
    """The :class:`ModelShape` that Megatron-LM would build from a recipe's ``megatron:`` values
    (:func:`~megatron_gatednorm.model_shape.shape_from_flags`: Megatron-LM's defaults for absent flags)."""
    missing = missing_required(m)
    if missing:
        raise ValueError(f"invalid megatron.{missing[0]}=None: required")
    return shape_from_flags(m, vocab_size)


def norm_config_from_recipe(recipe: Recipe) -> NormConfig:
    """The plugin config of the recipe's ``gatednorm:`` section (NormConfig defaults elsewhere)."""
    return norm_config_from_values(recipe.gatednorm, name=lambda flag: f"gatednorm.{dest(flag)}")


def parse_slurm_time(value: str) -> float:
    """Hours of an sbatch ``--time`` (``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``)."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"invalid slurm.time={value!r}: expected MM, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is None and b is None:  # plain minutes
        return int(a) / 60
    hours = int(a) + (int(b or 0)) / 60 + (int(c or 0)) / 3600
    return hours + 24 * int(days or 0)


@dataclass
class Plan:
    """Everything the launcher derived: the final flags plus the numbers it reports."""

    recipe: Recipe
    nodes: int
    megatron: Dict[str, Any]
    norm_config: NormConfig
    shape: ModelShape
    derived: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


def _tp_choices(heads: int, groups: int, world: int, gpus_per_node: int) -> List[int]:
    g = math.gcd(heads, groups)
    return [d for d in divisors(g) if world % d == 0 and d <= gpus_per_node]


def check_layout(m: Dict[str, Any], shape: ModelShape, nodes: int, gpus_per_node: int) -> Dict[str, int]:
    """Validate the parallel layout; return world, dp and expert-dp sizes."""
    if nodes < 1:
        raise ValueError(f"invalid nodes={nodes}: must be >= 1")
    world = nodes * gpus_per_node
    tp = int(m.get("tensor_model_parallel_size", 1))
    pp = int(m.get("pipeline_model_parallel_size", 1))
    cp = int(m.get("context_parallel_size", 1))
    ep = int(m.get("expert_model_parallel_size", 1))
    etp = int(m.get("expert_tensor_parallel_size") or tp)
    heads, groups = shape.num_attention_heads, shape.query_groups
    tp_ok = _tp_choices(heads, groups, world, gpus_per_node)
    if heads % tp:
        raise ValueError(f"tensor_model_parallel_size={tp} does not divide num_attention_heads={heads}; valid: {_fmt(tp_ok)}")
    if groups % tp:
        raise ValueError(f"tensor_model_parallel_size={tp} does not divide num_query_groups={groups}; valid: {_fmt(tp_ok)}")
    if tp > gpus_per_node:
        raise ValueError(
            f"tensor_model_parallel_size={tp} exceeds gpus_per_node={gpus_per_node} (tensor parallelism "
            f"must stay inside a node); valid: {_fmt(tp_ok)}")
    if shape.gated_delta_net:
        for key, n in (("linear_num_key_heads", shape.linear_num_key_heads), ("linear_num_value_heads", shape.linear_num_value_heads)):
            if n % tp:
                raise ValueError(f"tensor_model_parallel_size={tp} does not divide {key}={n}; valid: "
                                 f"{_fmt([d for d in tp_ok if n % d == 0])}")
    layers = shape.num_layers
    piped = shape.hybrid_layer_pattern and hybrid_pattern.PIPE in shape.hybrid_layer_pattern
    if layers % pp and not piped:  # a pattern's | segments are checked by check_hybrid
        pp_ok = [d for d in divisors(layers) if world % (tp * d) == 0]
        raise ValueError(f"pipeline_model_parallel_size={pp} does not divide num_layers={layers}; valid: {_fmt(pp_ok)}")
    vp = m.get("num_layers_per_virtual_pipeline_stage")
    if vp and (layers // pp) % int(vp):
        raise ValueError(
            f"num_layers_per_virtual_pipeline_stage={vp} does not divide the {layers // pp} layers of a "
            f"pipeline stage; valid: {_fmt(divisors(layers // pp))}")
    if world % (tp * pp * cp):
        fits = [n for n in range(1, 4 * nodes + 1) if (n * gpus_per_node) % (tp * pp * cp) == 0][:4]
        raise ValueError(
            f"nodes={nodes}: world size {world} (nodes × gpus_per_node={gpus_per_node}) is not divisible by "
            f"tensor×pipeline×context parallel = {tp}×{pp}×{cp} = {tp * pp * cp}; valid nodes: {_fmt(fits)}")
    dp = world // (tp * pp * cp)
    seq = int(m.get("seq_length", 0))
    if cp > 1 and seq % (2 * cp):
        raise ValueError(f"context_parallel_size={cp} needs seq_length divisible by 2×cp={2 * cp}; "
                         f"seq_length={seq}; valid context_parallel_size: {_fmt([d for d in divisors(seq // 2) if d <= 16])}")
    edp = 1
    if shape.num_experts:
        experts = shape.num_experts
        if experts % ep:
            raise ValueError(f"expert_model_parallel_size={ep} does not divide num_experts={experts}; valid: "
                             f"{_fmt([d for d in divisors(experts) if world % (d * etp * pp) == 0])}")
        if world % (ep * etp * pp):
            raise ValueError(
                f"expert_model_parallel_size={ep}: world size {world} is not divisible by expert×expert-tensor×"
                f"pipeline parallel = {ep}×{etp}×{pp}; valid: "
                f"{_fmt([d for d in divisors(experts) if world % (d * etp * pp) == 0])}")
        edp = world // (ep * etp * pp)
    elif ep > 1:
        raise ValueError(f"expert_model_parallel_size={ep} but the model has no experts (num_experts unset); valid: 1")
    if m.get("sequence_parallel") and tp > 1 and seq % tp:
        raise ValueError(f"sequence_parallel needs seq_length divisible by tensor_model_parallel_size={tp}; "
                         f"seq_length={seq}")
    return dict(world_size=world, data_parallel_size=dp, expert_data_parallel_size=edp)


# Megatron-LM 0.19's validate_args refuses these with --hybrid-layer-pattern (the | segments set the
# pipeline stages); the second group only where the pattern has | segments.
_NOT_WITH_PATTERN = ("num_layers_per_virtual_pipeline_stage", "num_virtual_stages_per_pipeline_rank",
                     "pipeline_model_parallel_layout", "account_for_embedding_in_pipeline_split",
                     "account_for_loss_in_pipeline_split")
_NOT_WITH_PIPES = ("decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers")


def plan_hybrid(m: Dict[str, Any], model: str) -> None:
    """``launch.model``: with ``hybrid`` and no ``megatron.hybrid_layer_pattern``, the pattern of
    the GPT layout (:func:`~megatron_gatednorm.model_shape.hybrid_form`: one ``|`` segment per
    pipeline stage, or per virtual stage of ``num_layers_per_virtual_pipeline_stage`` GPT layers)
    replaces ``num_layers`` and the GPT layout flags in ``m``; then :func:`check_hybrid`."""
    pattern = m.get("hybrid_layer_pattern")
    if model != "hybrid":
        if pattern is not None:
            raise ValueError(f"invalid megatron.hybrid_layer_pattern={pattern!r} with launch.model={model!r}: a "
                             "layer pattern builds megatron-core's HybridModel; valid: launch.model=hybrid")
        return
    if pattern is None:
        gpt = shape_from_megatron(m)
        pp = int(m.get("pipeline_model_parallel_size", 1))
        vp = m.pop("num_layers_per_virtual_pipeline_stage", None)
        if vp and gpt.num_layers % (int(vp) * pp):
            raise ValueError(f"invalid megatron.num_layers_per_virtual_pipeline_stage={vp}: it must divide the "
                             f"{gpt.num_layers // pp} GPT layers of a pipeline stage; valid: "
                             f"{_fmt(divisors(gpt.num_layers // pp))}")
        segments = gpt.num_layers // int(vp) if vp else pp
        shape = hybrid_form(gpt, segments)
        m.update(hybrid_layer_pattern=shape.hybrid_layer_pattern, num_layers=shape.num_layers)
        for key in hybrid_pattern.GPT_LAYOUT_FLAGS:
            m.pop(key, None)
    check_hybrid(m)


def check_hybrid(m: Dict[str, Any]) -> None:
    """A ``megatron.hybrid_layer_pattern`` against the other flags, as megatron.training 0.19
    and the plugin's hybrid specs would take them: symbols (:func:`~megatron_gatednorm.
    hybrid_pattern.check_hybrid_pattern`), no GPT layout flags, ``num_layers`` (if given) the
    pattern's, ``E`` layers with experts (and experts only with ``E`` layers), ``|`` segments a
    multiple of the pipeline size and none of the pipeline-split flags Megatron refuses with them."""
    pattern = m["hybrid_layer_pattern"]
    what = f"with megatron.hybrid_layer_pattern={pattern!r}"
    if not isinstance(pattern, str):
        raise ValueError(f"invalid megatron.hybrid_layer_pattern={pattern!r}: expected a string of "
                         f"{', '.join(hybrid_pattern.SYMBOLS)} and |")
    hybrid_pattern.check_hybrid_pattern(pattern)
    for key, why in hybrid_pattern.GPT_ONLY_FLAGS.items():
        if hybrid_pattern.gpt_only_value_set(key, m.get(key)):
            raise ValueError(f"invalid megatron.{key}={m[key]!r} {what}: {why}; valid: unset")
    counts = hybrid_pattern.layer_counts(pattern)
    layers = sum(counts.values())
    if m.get("num_layers") is not None and int(m["num_layers"]) != layers:
        raise ValueError(f"invalid megatron.num_layers={m['num_layers']!r} {what}: the pattern has {layers} layers "
                         f"(Megatron takes the pattern's); valid: {layers} or unset")
    if counts["E"] and not m.get("num_experts"):
        raise ValueError(f"invalid megatron.num_experts={m.get('num_experts')!r} {what}: its {counts['E']} E (MoE) "
                         "layers need experts; valid: an integer >= 1 (or - layers instead of E)")
    if m.get("num_experts") and not counts["E"]:
        raise ValueError(f"invalid megatron.num_experts={m['num_experts']!r} {what}: the pattern has no E (MoE) "
                         "layer; valid: unset, or E layers in the pattern")
    for key in _NOT_WITH_PATTERN:
        if m.get(key) not in (None, False):
            raise ValueError(f"invalid megatron.{key}={m[key]!r} {what}: megatron.training refuses it with a "
                             "pattern; valid: unset (| segments of the pattern set pipeline and virtual stages)")
    segments = len(hybrid_pattern.segments(pattern))
    pp = int(m.get("pipeline_model_parallel_size", 1))
    if segments > 1:
        for key in _NOT_WITH_PIPES:
            if m.get(key) is not None:
                raise ValueError(f"invalid megatron.{key}={m[key]!r} {what}: the | segments set the pipeline "
                                 "stages; valid: unset (or a pattern without |)")
        valid = [d for d in divisors(segments) if d > 1]
        if pp == 1 or segments % pp:
            raise ValueError(f"invalid pipeline_model_parallel_size={pp} {what}: its {segments} | segments must be "
                             f"a multiple of it (> 1; each rank takes one or more virtual stages); valid: "
                             f"{_fmt(valid)} (or a pattern without |)")


def check_batch(m: Dict[str, Any], dp: int) -> int:
    mbs, gbs = int(m.get("micro_batch_size", 1)), m.get("global_batch_size")
    if mbs < 1:
        raise ValueError(f"micro_batch_size={mbs}: must be >= 1")
    if gbs is None:
        raise ValueError(f"global_batch_size=None: required; valid: a multiple of micro_batch_size×data_parallel_size={mbs * dp}")
    step = mbs * dp
    if gbs % step:
        lower, upper = (gbs // step) * step, (gbs // step + 1) * step
        raise ValueError(
            f"global_batch_size={gbs} is not divisible by micro_batch_size×data_parallel_size={mbs}×{dp}={step}; "
            f"valid: {_fmt([v for v in (lower, upper) if v > 0])}")
    return gbs // step


def check_sequence(m: Dict[str, Any]) -> None:
    seq = m.get("seq_length")
    if not seq or int(seq) < 1:
        raise ValueError(f"seq_length={seq}: required, >= 1")
    mpe = m.get("max_position_embeddings")
    if mpe is not None and int(mpe) < int(seq):
        raise ValueError(f"seq_length={seq} exceeds max_position_embeddings={mpe}; valid: seq_length <= {mpe} "
                         f"or max_position_embeddings={seq}")


def check_memory(plan: Plan, gpu_memory_gb: float) -> None:
    mem = plan.derived["memory_gib"]
    if mem["total"] <= gpu_memory_gb:
        return
    fits = []
    m, s, nc = plan.megatron, plan.shape, plan.norm_config
    world, nmb = plan.derived["world_size"], plan.derived["num_microbatches"]
    factor = plan.derived["activation_memory_factor"]
    candidates = []
    if m.get("recompute_granularity") != "full":
        candidates.append(dict(recompute_granularity="full"))
    if m.get("micro_batch_size", 1) > 1:
        candidates.append(dict(micro_batch_size=max(1, m["micro_batch_size"] // 2)))
    if not m.get("use_distributed_optimizer"):
        candidates.append(dict(use_distributed_optimizer=True))
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size"):
        candidates.append({key: int(m.get(key, 1)) * 2})
    for cand in candidates:
        trial = {**m, **cand}
        try:
            check_layout(trial, s, plan.nodes, plan.recipe.launch["gpus_per_node"])
        except ValueError:
            continue
        if memory_estimate(trial, s, nc, world, nmb, factor)["total"] <= gpu_memory_gb:
            fits.append(", ".join(f"{k}={v}" for k, v in cand.items()))
    breakdown = ", ".join(f"{k} {v:.1f}" for k, v in mem.items() if k != "total")
    raise ValueError(
        f"gpu_memory_gb={gpu_memory_gb:g}: estimated {mem['total']:.1f} GiB per GPU ({breakdown} GiB) does not fit; "
        f"valid: {'; '.join(fits) if fits else 'none of recompute/micro-batch/parallelism changes alone; use more nodes'}")


def check_launch(launch: Dict[str, Any]) -> int:
    """The launcher, device and ranks per node of the ``launch:`` section; returns ``gpus_per_node``."""
    if launch["launcher"] not in ("srun", "torchrun"):
        raise ValueError(f"invalid launch.launcher={launch['launcher']!r}; valid: srun, torchrun")
    parse_device(launch["device"], "launch.device")
    gpn = int(launch["gpus_per_node"])
    if gpn < 1:
        raise ValueError(f"invalid launch.gpus_per_node={gpn}: must be >= 1")
    return gpn


def check_model(m: Dict[str, Any]) -> ModelShape:
    """Sequence length, recompute modules and the model shape of the Megatron flags ``m`` (the
    vocabulary is required: it enters the parameter count)."""
    check_sequence(m)
    te_layers = (m.get("transformer_impl") or "transformer_engine") == "transformer_engine"  # Megatron's default
    check_recompute_modules(m.get("recompute_granularity"), m.get("recompute_modules"), te_layers,
                            name="megatron.recompute_modules")
    shape = shape_from_megatron(m)
    if not shape.vocab_size:
        raise ValueError("invalid megatron.vocab_size=None: required for the parameter count (the padded "
                         "tokenizer vocabulary, e.g. 151936)")
    return shape


def apply_parity(m: Dict[str, Any], base_shape: ModelShape, nc: NormConfig, derived: Dict[str, Any]) -> ModelShape:
    """With ``launch.parameter_parity``: the shape whose FFN width gives the variant the baseline's
    parameter count; sets that width in ``m`` and reports it in ``derived["parity"]``."""
    report = parity_ffn(base_shape, nc)
    m[report.field] = report.width
    derived["parity"] = dict(field=report.field, baseline_width=report.baseline_width, width=report.width,
                             baseline_params=report.baseline_params,
                             params_before_parity=report.variant_params_before, params=report.params)
    return base_shape.replace(**{report.field: report.width})


def train_iters_for_budget(m: Dict[str, Any], launch: Dict[str, Any], tokens_per_step: int) -> int:
    """``megatron.train_iters``, or ``ceil(launch.train_tokens / tokens_per_step)`` (set in ``m``)."""
    if m.get("train_iters") is None:
        tokens = launch.get("train_tokens")
        if tokens is None:
            raise ValueError("launch.train_tokens=None and megatron.train_iters=None: set one "
                             "(e.g. train_tokens=120000000000)")
        try:
            tokens = float(tokens)
        except (TypeError, ValueError):
            raise ValueError(f"invalid launch.train_tokens={tokens!r}: expected a number of tokens") from None
        m["train_iters"] = int(math.ceil(tokens / tokens_per_step))
    return int(m["train_iters"])


def plan_memory(plan: Plan, gpu_memory_gb: Optional[float]) -> None:
    """The memory estimate (:mod:`.memory`) into ``plan.derived``; on CUDA, checked against the GPU."""
    launch, derived = plan.recipe.launch, plan.derived
    # launch keys always carry recipes.LaunchSection's defaults (load_recipe merges them): index, don't re-default
    factor = derived["activation_memory_factor"] = float(launch["activation_memory_factor"])
    derived["memory_gib"] = memory_estimate(plan.megatron, plan.shape, plan.norm_config, derived["world_size"],
                                            derived["num_microbatches"], factor)
    gpu_mem = float(gpu_memory_gb if gpu_memory_gb is not None else launch["gpu_memory_gb"])
    derived["gpu_memory_gb"] = gpu_mem
    if launch["device"] == "cuda":
        check_memory(plan, gpu_mem)


def plan_runtime(plan: Plan) -> None:
    """Estimated hours (``6 × active params × tokens`` at ``launch.tflops_per_gpu``) and the number
    of chained jobs (``auto``: hours / ``slurm.time``); the time-limit signal must come before the limit."""
    recipe, launch, derived = plan.recipe, plan.recipe.launch, plan.derived
    flops = 6 * derived["params_active"] * derived["train_tokens"]
    hours = flops / (derived["world_size"] * float(launch["tflops_per_gpu"]) * 1e12) / 3600
    limit = parse_slurm_time(recipe.slurm["time"])
    derived["estimated_hours"] = hours
    chain = launch["chain_jobs"]
    if isinstance(chain, str) and chain.strip().isdigit():
        chain = int(chain)
    if chain == "auto":
        chain = max(1, math.ceil(hours / limit)) if limit > 0 else 1
    elif not isinstance(chain, int) or chain < 1:
        raise ValueError(f"invalid launch.chain_jobs={chain!r}; valid: auto or an integer >= 1")
    derived["chain_jobs"] = int(chain)
    if int(launch["signal_lead_s"]) >= limit * 3600:
        raise ValueError(f"launch.signal_lead_s={launch['signal_lead_s']} is not shorter than slurm.time="
                         f"{recipe.slurm['time']}; valid: < {int(limit * 3600)}")


def plan_run_dir(plan: Plan) -> None:
    """The absolute run directory, and the flags under it unless the recipe sets them: checkpoints
    (``--save`` = ``--load``: a requeued job resumes), TensorBoard, the exit-signal handler, W&B."""
    recipe, launch, m = plan.recipe, plan.recipe.launch, plan.megatron
    run_dir = os.path.abspath(str(launch["run_dir"]).format(name=recipe.name))
    plan.derived["run_dir"] = run_dir
    m.setdefault("save", f"{run_dir}/checkpoints")
    m.setdefault("load", m["save"])  # resume from our own checkpoints after a requeue
    m.setdefault("tensorboard_dir", f"{run_dir}/tensorboard")
    m.setdefault("exit_signal_handler", True)  # SIGTERM → save → exit (the sbatch trap sends it)
    if launch.get("wandb_project"):
        m["wandb_project"] = launch["wandb_project"]
        m["wandb_exp_name"] = launch.get("wandb_exp_name") or recipe.name
        m.setdefault("wandb_save_dir", f"{run_dir}/wandb")


def plan_warnings(plan: Plan) -> List[str]:
    """What the dry run warns about (the job may still be rendered)."""
    m = plan.megatron
    warnings = []
    if m.get("no_check_for_nan_in_loss_and_grad"):
        warnings.append("megatron.no_check_for_nan_in_loss_and_grad=true: Megatron's NaN/Inf check is off, so "
                        "non-finite losses will no longer stop training")
    if not m.get("mock_data") and not m.get("data_path"):
        warnings.append("megatron.data_path is unset and mock_data is off: set data_path=<prefix> "
                        "(required by --submit)")
    return warnings


def make_plan(recipe: Recipe, nodes: int, gpu_memory_gb: Optional[float] = None) -> Plan:
    """Validate ``recipe`` (layout merged by ``load_recipe(..., nodes=...)``) and derive numbers
    (the steps are listed in the module doc)."""
    launch = recipe.launch
    gpn = check_launch(launch)
    m = dict(recipe.megatron)
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
                "expert_model_parallel_size"):
        m.setdefault(key, 1)
    plan_hybrid(m, launch["model"])
    nc = norm_config_from_recipe(recipe)
    check_fused_norm_flags(nc, m.get, prefix="megatron.")
    base_shape = check_model(m)

    layout = check_layout(m, base_shape, nodes, gpn)
    try:
        nc.check_hidden_size(base_shape.hidden_size)
    except NormConfigError as e:
        raise ValueError(f"invalid gatednorm.gatednorm_rank={e.value!r}: {e.reason}") from None
    derived: Dict[str, Any] = dict(nodes=nodes, gpus_per_node=gpn, **layout)
    shape = apply_parity(m, base_shape, nc, derived) if launch.get("parameter_parity") else base_shape

    num_microbatches = check_batch(m, layout["data_parallel_size"])
    tokens_per_step = int(m["seq_length"]) * int(m["global_batch_size"])
    train_iters = train_iters_for_budget(m, launch, tokens_per_step)
    vocab = padded_vocab(shape.vocab_size, flag_value(m, "make_vocab_size_divisible_by"),
                         int(m["tensor_model_parallel_size"]))
    counted = shape.replace(vocab_size=vocab)
    params = count_params(counted, nc)
    active = count_params(counted, nc, active=True)["total"]
    derived.update(
        num_microbatches=num_microbatches,
        tokens_per_step=tokens_per_step,
        train_iters=train_iters,
        train_tokens=train_iters * tokens_per_step,
        padded_vocab_size=vocab,
        params_total=params["total"],
        params_active=active,
        params_breakdown={k: v for k, v in params.items() if k != "total"},
    )
    plan = Plan(recipe=recipe, nodes=nodes, megatron=m, norm_config=nc, shape=counted, derived=derived)

    plan_memory(plan, gpu_memory_gb)
    plan_runtime(plan)
    plan_run_dir(plan)
    plan.warnings.extend(plan_warnings(plan))
    return plan


def check_submittable(plan: Plan) -> None:
    """Checks that only matter when a job is really submitted."""
    m = plan.megatron
    if not m.get("mock_data") and not m.get("data_path"):
        raise ValueError("megatron.data_path=None: required for --submit; valid: data_path=<Megatron data "
                         "prefix> (or mock_data=true for a throughput test)")
