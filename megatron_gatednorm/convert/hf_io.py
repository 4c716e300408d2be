"""Hugging Face folders: config.json ⇄ :class:`Arch`, and sharded safetensors read/write.

Target classes (transformers >= 5.24, see pyproject's ``hf`` extra):

* RMSNorm baselines that stock transformers can express go to stock classes (no remote code):
  dense with QK-norm → ``Qwen3ForCausalLM``, dense without → ``LlamaForCausalLM``, MoE with
  QK-norm and no shared expert → ``Qwen3MoeForCausalLM``; hybrid Gated DeltaNet models with
  Qwen3-Next's choices (zero-centred gamma, QK-norm, attention output gate, gated shared expert
  in MoE layers) → ``Qwen3NextForCausalLM``;
* everything else (GatedNorm / PreAffine / DyT variants, attention output gate, zero-centred
  gamma, partial RoPE, residual clip, shared experts, MoE without QK-norm, hybrids that are not
  Qwen3-Next) → the exported ``GatedNormForCausalLM`` (``model_type="gatednorm"``) with its code
  copied into the folder.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.checkpoint import Arch, CheckpointError, Tensors
from megatron_gatednorm.checkpoint.errors import capped_listing
from megatron_gatednorm.model_shape import ModelShape

HF_CODE_DIR = Path(__file__).resolve().parent.parent / "hf"
HF_CODE_FILES = ("configuration_gatednorm.py", "modeling_gatednorm.py")
_CLASS_OF_MODEL_TYPE = {
    "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen3_next": "Qwen3NextForCausalLM", "gatednorm": "GatedNormForCausalLM",
}
SUPPORTED_MODEL_TYPES = tuple(_CLASS_OF_MODEL_TYPE)
# Gated DeltaNet sizes: the same names in Megatron, Qwen3-Next and the exported architecture
_LINEAR_FIELDS = ("linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
                  "linear_num_key_heads", "linear_num_value_heads")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_class_of(cfg: dict) -> str:
    """The HF class name of a config.json dict of a supported architecture."""
    return _CLASS_OF_MODEL_TYPE[cfg["model_type"]]


def _is_hybrid(shape: ModelShape) -> bool:
    return any(shape.linear_attention_pattern())


def _layer_types(shape: ModelShape) -> list:
    return ["linear_attention" if x else "full_attention" for x in shape.linear_attention_pattern()]


def stock_class(arch: Arch) -> Optional[str]:
    """The stock transformers class that computes exactly this model, or None."""
    s, nc = arch.shape, arch.norm_config
    if nc.variant != "rmsnorm" or nc.residual_clip is not None:
        return None
    if _is_hybrid(s):
        qwen3_next = (
            arch.zero_centered_gamma and s.qk_layernorm and s.attention_output_gate
            and (not s.num_experts or (bool(s.moe_shared_expert_intermediate_size) and s.moe_shared_expert_gate))
        )
        return "Qwen3NextForCausalLM" if qwen3_next else None
    if s.attention_output_gate or arch.zero_centered_gamma or arch.rotary_percent != 1.0:
        return None
    if not s.num_experts:
        return "Qwen3ForCausalLM" if s.qk_layernorm else "LlamaForCausalLM"
    if s.qk_layernorm and not s.moe_shared_expert_intermediate_size:
        return "Qwen3MoeForCausalLM"
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def hf_config(arch: Arch, dtype: torch.dtype, force_gatednorm: bool = False):
    """``(config, architecture name)`` for ``arch``; remote-code config for our architecture."""
    s, nc = arch.shape, arch.norm_config
    common = dict(
        vocab_size=s.vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.ffn_hidden_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.query_groups,
        head_dim=s.head_dim,
        hidden_act="silu",
        max_position_embeddings=s.max_position_embeddings,
        rms_norm_eps=arch.norm_epsilon,
        tie_word_embeddings=not s.untie_embeddings_and_output_weights,
    )
    moe = dict(
        num_experts=s.num_experts or 0,
        num_experts_per_tok=s.moe_router_topk,
        moe_intermediate_size=s.moe_ffn_hidden_size or s.ffn_hidden_size,
        norm_topk_prob=not arch.moe_router_pre_softmax,
    )
    linear = {k: getattr(s, k) for k in _LINEAR_FIELDS}
    dense_layers = [i for i, m in enumerate(s.moe_pattern()) if not m]
    name = None if force_gatednorm else stock_class(arch)
    rope = {"rope_type": "default", "rope_theta": arch.rotary_base}
    if name == "Qwen3ForCausalLM":
        from transformers import Qwen3Config

        config = Qwen3Config(**common, rope_parameters=rope, attention_bias=False)
    elif name == "LlamaForCausalLM":
        from transformers import LlamaConfig

        config = LlamaConfig(**common, rope_parameters=rope, attention_bias=False, mlp_bias=False)
    elif name == "Qwen3MoeForCausalLM":
        from transformers import Qwen3MoeConfig

        config = Qwen3MoeConfig(
            **common, **moe, rope_parameters=rope, attention_bias=False, decoder_sparse_step=1,
            mlp_only_layers=dense_layers,
        )
    elif name == "Qwen3NextForCausalLM":
        from transformers import Qwen3NextConfig

        config = Qwen3NextConfig(
            **common, **moe, **linear, attention_bias=False, decoder_sparse_step=1,
            rope_parameters=dict(rope, partial_rotary_factor=arch.rotary_percent),
            mlp_only_layers=dense_layers if s.num_experts else [],
            shared_expert_intermediate_size=s.moe_shared_expert_intermediate_size or 0,
            layer_types=_layer_types(s),
        )
    else:
        from megatron_gatednorm.hf.configuration_gatednorm import GatedNormConfig

        name = "GatedNormForCausalLM"
        config = GatedNormConfig(
            **common, **(moe if s.num_experts else {}),
            moe_layer_pattern=s.moe_pattern() if s.num_experts else None,
            shared_expert_intermediate_size=s.moe_shared_expert_intermediate_size or 0,
            shared_expert_gate=bool(s.moe_shared_expert_gate),
            rotary_base=arch.rotary_base,
            rotary_percent=arch.rotary_percent,
            qk_norm=s.qk_layernorm,
            attention_output_gate=s.attention_output_gate,
            norm_variant=nc.variant,
            norm_placement=list(nc.placement),
            gatednorm_rank=nc.rank,
            gate_activation=nc.gate_activation,
            gate_granularity=nc.granularity,
            zero_centered_gamma=arch.zero_centered_gamma,
            residual_clip=nc.residual_clip,
            layer_types=_layer_types(s) if _is_hybrid(s) else None,
            **(linear if _is_hybrid(s) else {}),
        )
        config.auto_map = {
            "AutoConfig": "configuration_gatednorm.GatedNormConfig",
            "AutoModel": "modeling_gatednorm.GatedNormModel",
            "AutoModelForCausalLM": "modeling_gatednorm.GatedNormForCausalLM",
        }
    config.architectures = [name]
    config.dtype = _dtype_name(dtype)
    return config, name


def _get(cfg: dict, key: str, default=None):
    value = cfg.get(key, default)
    return default if value is None else value


def arch_from_hf_config(cfg: dict, where: str = "config.json") -> Arch:
    """Rebuild :class:`Arch` from a config.json dict of a supported architecture."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{where}: unsupported architecture model_type={model_type!r} "
            f"(architectures={cfg.get('architectures')}); supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if model_type == "gatednorm":  # the exported config class holds its defaults and checks
        from megatron_gatednorm.hf.configuration_gatednorm import GatedNormConfig

        try:
            cfg = GatedNormConfig(**cfg).to_dict()
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from None
    for key, ok in (
        ("attention_bias", False), ("mlp_bias", False), ("use_sliding_window", False),
    ):
        if cfg.get(key, ok) not in (ok, None):
            raise CheckpointError(f"{where}: unsupported {key}={cfg[key]!r}; expected {ok}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: unsupported hidden_act={cfg['hidden_act']!r}; expected 'silu'")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"{where}: unsupported RoPE scaling {rope!r}; expected rope_type 'default'")
    rotary_base = float(rope.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_base", 10000.0))))
    next_ = model_type == "qwen3_next"
    rotary_percent = float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25))) if next_ \
        else float(cfg.get("rotary_percent", 1.0))
    heads = cfg["num_attention_heads"]
    try:
        experts = cfg.get("num_experts") or cfg.get("num_local_experts") or None
        layers = cfg["num_hidden_layers"]
        linear = _linear_attention_pattern(cfg, layers, where)
        pattern = None
        if experts:
            if model_type in ("qwen3_moe", "qwen3_next"):
                step = cfg.get("decoder_sparse_step", 1) or 1
                dense = set(cfg.get("mlp_only_layers") or [])
                pattern = [int(i not in dense and (i + 1) % step == 0) for i in range(layers)]
            else:
                pattern = list(cfg.get("moe_layer_pattern") or [1] * layers)
        shape = ModelShape(
            num_layers=layers,
            hidden_size=cfg["hidden_size"],
            num_attention_heads=heads,
            num_query_groups=_get(cfg, "num_key_value_heads", heads),
            kv_channels=_get(cfg, "head_dim", cfg["hidden_size"] // heads),
            ffn_hidden_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            untie_embeddings_and_output_weights=not cfg.get("tie_word_embeddings", True),
            qk_layernorm=model_type in ("qwen3", "qwen3_moe", "qwen3_next") or bool(cfg.get("qk_norm")),
            attention_output_gate=next_ or bool(cfg.get("attention_output_gate", False)),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            num_experts=experts,
            moe_ffn_hidden_size=cfg.get("moe_intermediate_size") if experts else None,
            moe_router_topk=cfg.get("num_experts_per_tok", 2),
            moe_layer_freq=(1 if all(pattern) else pattern) if experts else 1,
            moe_shared_expert_intermediate_size=cfg.get("shared_expert_intermediate_size") or None,
            moe_shared_expert_gate=bool(experts and next_) or bool(cfg.get("shared_expert_gate", False)),
            **_linear_attention_fields(cfg, linear),
        )
        nc = NormConfig(
            variant=cfg.get("norm_variant", "rmsnorm"),
            rank=cfg.get("gatednorm_rank", 16),
            gate_activation=cfg.get("gate_activation", "sigmoid"),
            granularity=cfg.get("gate_granularity", "elementwise"),
            placement=tuple(cfg.get("norm_placement") or ("attn", "mlp", "final")),
            residual_clip=cfg.get("residual_clip"),
        )
    except KeyError as e:
        raise CheckpointError(f"{where}: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    dtype = _DTYPES.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"), torch.float32)
    return Arch(
        shape=shape, norm_config=nc, norm_epsilon=float(cfg.get("rms_norm_eps", 1e-5)),
        zero_centered_gamma=next_ or bool(cfg.get("zero_centered_gamma", False)),
        rotary_base=rotary_base, rotary_percent=rotary_percent,
        moe_router_pre_softmax=experts is not None and not cfg.get("norm_topk_prob", False), dtype=dtype,
    )


def _linear_attention_pattern(cfg: dict, layers: int, where: str) -> Optional[list]:
    """1 per Gated DeltaNet layer, 0 per softmax-attention layer; None if not hybrid."""
    types = cfg.get("layer_types")
    if types is None and cfg.get("model_type") == "qwen3_next":
        interval = cfg.get("full_attention_interval", 4)
        return [int((i + 1) % interval != 0) for i in range(layers)]
    if types is None:
        return None
    bad = sorted(set(types) - {"linear_attention", "full_attention"})
    if bad or len(types) != layers:
        raise CheckpointError(
            f"{where}: unsupported layer_types {bad or types}; expected {layers} entries of "
            "'linear_attention' / 'full_attention'"
        )
    pattern = [int(t == "linear_attention") for t in types]
    return pattern if any(pattern) else None


def _linear_attention_fields(cfg: dict, pattern: Optional[list]) -> dict:
    """ModelShape's hybrid fields (Megatron's ``linear_attention_freq``: N if every N-th layer
    is softmax attention, else the per-layer list)."""
    if pattern is None:
        return {}
    n = len(pattern)
    freq = next((k for k in range(1, n + 1) if pattern == [int((i + 1) % k != 0) for i in range(n)]), None)
    return dict(
        experimental_attention_variant="gated_delta_net",
        linear_attention_freq=freq if freq is not None else list(pattern),
        **{k: cfg[k] for k in _LINEAR_FIELDS if cfg.get(k) is not None},
    )


# -- safetensors ----------------------------------------------------------------------------

def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def parse_size(size) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", str(size), re.I)
    if not m:
        raise ValueError(f"invalid --max-shard-size={size!r}; expected e.g. 5GB, 500MB or a byte count")
    return int(float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2).upper()])


def write_safetensors(tensors: Tensors, out: Path, max_shard_size="5GB", progress: bool = True) -> None:
    """``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards, current, size = [], {}, 0
    for key in sorted(tensors, key=_natural):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensors[key]
        size += nbytes
    if current:
        shards.append(current)
    weight_map, total = {}, 0
    bar = _progress(len(shards), "writing safetensors shards", progress)
    for k, shard in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: t.contiguous() for n, t in shard.items()}, str(out / name), metadata={"format": "pt"})
        for n, t in shard.items():
            weight_map[n] = name
            total += t.numel() * t.element_size()
        bar.update(1)
    bar.close()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def read_safetensors(folder: Path) -> Tensors:
    """All tensors of an HF folder (index + shards, or a single model.safetensors)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: cannot be read ({e})") from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{folder}: no model.safetensors(.index.json); expected a safetensors HF folder")
    tensors: Tensors = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: shard listed in the index is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - truncated or corrupt files raise assorted errors
            raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    return tensors


def unfuse_experts(tensors: Tensors) -> Tensors:
    """transformers-5 fused expert tensors (``mlp.experts.gate_up_proj [E, 2f, h]``,
    ``mlp.experts.down_proj [E, h, f]``) → per-expert ``gate_proj``/``up_proj``/``down_proj``."""
    out: Tensors = {}
    for key, t in tensors.items():
        m = re.match(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$", key)
        if not m:
            out[key] = t
            continue
        for e in range(t.shape[0]):
            if m.group(2) == "gate_up_proj":
                gate, up = t[e].chunk(2, dim=0)
                out[f"{m.group(1)}.{e}.gate_proj.weight"] = gate
                out[f"{m.group(1)}.{e}.up_proj.weight"] = up
            else:
                out[f"{m.group(1)}.{e}.down_proj.weight"] = t[e]
    return out


def copy_code(out: Path) -> None:
    for name in HF_CODE_FILES:
        shutil.copyfile(HF_CODE_DIR / name, out / name)


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not enabled, unit="shard")
    except ImportError:  # pragma: no cover
        class _Null:
            def update(self, n=1):
                pass

            def close(self):
                pass

        return _Null()


def _meta_parameters(config, name: str) -> Tensors:
    """The parameters of the HF model ``name`` built from ``config`` on the meta device."""
    if name == "GatedNormForCausalLM":
        from megatron_gatednorm.hf.modeling_gatednorm import GatedNormForCausalLM as cls
    else:
        import transformers

        cls = getattr(transformers, name)
    with torch.device("meta"):
        model = cls(config)
    return dict(model.named_parameters())


def _fused_experts(config, name: str) -> bool:
    return name == "Qwen3MoeForCausalLM" or (name == "Qwen3NextForCausalLM" and bool(config.num_experts))


def expected_parameters(config, name: str) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Parameter names/shapes of the HF model (built on the meta device), or None for classes
    whose in-memory names differ from the checkpoint's (transformers-5 fused MoE experts)."""
    if _fused_experts(config, name):
        return None
    params = {n: tuple(p.shape) for n, p in _meta_parameters(config, name).items()}
    if config.tie_word_embeddings:
        params.pop("lm_head.weight", None)
    return params


def saved_parameters(config, name: str) -> Dict[str, Tuple[int, ...]]:
    """Names/shapes of the tensors an HF folder of class ``name`` with ``config`` holds, as
    :func:`read_safetensors` + :func:`unfuse_experts` return them (per-expert names also for
    the classes whose experts are fused in memory); ``lm_head.weight`` left out when tied."""
    params = _meta_parameters(config, name)
    if _fused_experts(config, name):
        params = unfuse_experts(params)
    params = {n: tuple(p.shape) for n, p in params.items()}
    if config.tie_word_embeddings:
        params.pop("lm_head.weight", None)
    return params


def config_from_dict(cfg: dict, where: str = "config.json"):
    """The transformers config object of a config.json dict of a supported architecture."""
    try:
        if cfg.get("model_type") == "gatednorm":
            from megatron_gatednorm.hf.configuration_gatednorm import GatedNormConfig

            return GatedNormConfig(**cfg)
        from transformers import AutoConfig

        return AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def shape_mismatch(got: Dict[str, Tuple[int, ...]], expected: Dict[str, Tuple[int, ...]], limit: int = 8) -> Optional[str]:
    """What differs between tensor names/shapes ``got`` and ``expected`` (missing, unexpected,
    wrong shape; each list capped at ``limit`` names), or None if they agree."""
    missing = sorted(set(expected) - set(got), key=_natural)
    unexpected = sorted(set(got) - set(expected), key=_natural)
    wrong = [f"{k} {list(got[k])} (expected {list(expected[k])})"
             for k in sorted(set(got) & set(expected), key=_natural) if tuple(got[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {capped_listing(missing, limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {capped_listing(unexpected, limit)}")
    if wrong:
        parts.append(f"{len(wrong)} of the wrong shape: {capped_listing(wrong, limit)}")
    return "; ".join(parts) or None
