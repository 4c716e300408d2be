"""The Megatron flag table (megatron_gatednorm.model_shape): ModelShape ⇄ flags both ways,
Megatron-LM's defaults for absent flags (checked against Megatron-LM 0.19.2's own parser),
the plugin's refusals, and the consumers that read it (small trainer, launcher, converters)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from megatron_gatednorm.model_shape import (
    MEGATRON_FLAGS,
    ModelShape,
    check_supported,
    extras_from_flags,
    flags_from_shape,
    shape_from_flags,
    shape_to_argv,
    transformer_config_kwargs,
)
from megatron_gatednorm.paper import PAPER_MODELS

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = Path(os.environ.get("MGN_MCORE019_VENV", ROOT / ".venv-mcore019")) / "bin" / "python"

TINY = ModelShape(num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
                  vocab_size=256, qk_layernorm=True, attention_output_gate=True, max_position_embeddings=32)
SHAPES = {
    **PAPER_MODELS,
    "tiny": TINY,
    "mha-untied": TINY.replace(num_query_groups=None, kv_channels=24, untie_embeddings_and_output_weights=True),
    "moe-pattern": TINY.replace(num_experts=4, moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=48,
                                moe_shared_expert_gate=True, moe_router_topk=1, moe_layer_freq=[1, 0, 1, 1]),
    "hybrid": TINY.replace(experimental_attention_variant="gated_delta_net", linear_attention_freq=[1, 0, 1, 0],
                           linear_conv_kernel_dim=2, linear_key_head_dim=8, linear_value_head_dim=12,
                           linear_num_key_heads=2, linear_num_value_heads=4),
}
MINIMAL = dict(num_layers=2, hidden_size=96, num_attention_heads=4)


def test_every_shape_field_has_exactly_one_row():
    fields = [row.field for row in MEGATRON_FLAGS if row.field]
    assert sorted(fields) == sorted(set(fields))
    assert set(fields) == set(ModelShape.__dataclass_fields__) - {"vocab_size"}
    assert len({row.flag for row in MEGATRON_FLAGS}) == len({row.dest for row in MEGATRON_FLAGS}) == len(MEGATRON_FLAGS)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_flags_round_trip(name):
    shape = SHAPES[name]
    assert shape_from_flags(flags_from_shape(shape), vocab_size=shape.vocab_size) == shape


def test_absent_flags_take_megatron_lm_defaults():
    shape = shape_from_flags(MINIMAL)
    assert (shape.swiglu, shape.add_bias_linear, shape.position_embedding_type) == (False, True, "learned_absolute")
    assert shape.num_query_groups is None and shape.num_experts is None and shape.vocab_size == 0
    assert shape.ffn_hidden_size == 4 * 96
    assert shape_from_flags(dict(MINIMAL, swiglu=True)).ffn_hidden_size == 256  # int(4h·2/3 / 64)·64
    assert shape_from_flags(dict(MINIMAL, group_query_attention=True)).num_query_groups == 1
    assert shape_from_flags(dict(MINIMAL, num_query_groups=2)).num_query_groups is None  # ignored without GQA
    assert shape_from_flags(dict(MINIMAL, seq_length=64)).max_position_embeddings == 64
    # dense models ignore the expert widths; a recipe's inverted switch and an argparse dest agree
    assert shape_from_flags(dict(MINIMAL, moe_ffn_hidden_size=8)).moe_ffn_hidden_size is None
    assert not shape_from_flags(dict(MINIMAL, disable_bias_linear=True)).add_bias_linear
    assert not shape_from_flags(dict(MINIMAL, add_bias_linear=False)).add_bias_linear


def test_extras_read_the_names_of_megatron_lm_0_16_and_0_19():
    assert extras_from_flags({}) == dict(norm_epsilon=1e-5, zero_centered_gamma=False, rotary_base=10000,
                                         rotary_percent=1.0, moe_router_pre_softmax=False)
    old = extras_from_flags(dict(norm_epsilon=1e-6, apply_layernorm_1p=True))
    new = extras_from_flags(dict(layernorm_epsilon=1e-6, layernorm_zero_centered_gamma=True, norm_epsilon=1e-5))
    assert old == new and (new["norm_epsilon"], new["zero_centered_gamma"]) == (1e-6, True)


@pytest.mark.parametrize("values, message", [
    (dict(position_embedding_type="yarn"),
     "unsupported position_embedding_type='yarn' (--position-embedding-type): the converters and the Hugging Face "
     "model implement RoPE only; valid: 'rope'"),
    ({}, "unsupported swiglu=False (--swiglu)"),
    (dict(disable_bias_linear=False), "unsupported add_bias_linear=True (--disable-bias-linear)"),
    (dict(normalization="LayerNorm"), "unsupported normalization='LayerNorm' (--normalization)"),
    (dict(experimental_attention_variant="dsa"), "valid: None, 'gated_delta_net'"),
    (dict(moe_router_topk_scaling_factor=2.5), "unsupported moe_router_topk_scaling_factor=2.5"),
])
def test_unsupported_values_name_the_value_and_the_choices(values, message):
    supported = dict(swiglu=True, disable_bias_linear=True, position_embedding_type="rope", normalization="RMSNorm")
    check_supported(supported)
    with pytest.raises(ValueError) as e:
        check_supported({**supported, **values} if values else values)
    assert message in str(e.value)


def test_transformer_config_kwargs_rename_and_pin():
    moe = SHAPES["moe-pattern"]
    kwargs = transformer_config_kwargs(moe)
    assert kwargs["gated_linear_unit"] is True and kwargs["num_moe_experts"] == 4
    assert kwargs["normalization"] == "RMSNorm" and kwargs["moe_layer_freq"] == [1, 0, 1, 1]
    assert "kv_channels" not in kwargs and "num_experts" not in kwargs  # None: TransformerConfig derives it


def test_small_trainer_flags_come_from_the_table():
    from megatron_gatednorm.training.small_trainer import build_parser

    parser = build_parser()
    options = {s for action in parser._actions for s in action.option_strings}
    assert {row.option for row in MEGATRON_FLAGS} <= options
    for name in ("tiny", "moe-pattern", "hybrid", "moe-7b-a2b"):
        shape = SHAPES[name]
        args = parser.parse_args(shape_to_argv(shape) + ["--seq-length", "16", "--micro-batch-size", "1",
                                                         "--global-batch-size", "1", "--train-iters", "1", "--lr", "1"])
        assert shape_from_flags(vars(args), vocab_size=shape.vocab_size) == shape, name
    # the trainer's own defaults where Megatron-LM's are refused; the rest as Megatron-LM
    args = parser.parse_args(["--num-layers", "1", "--hidden-size", "8", "--num-attention-heads", "2",
                              "--seq-length", "4", "--micro-batch-size", "1", "--global-batch-size", "1",
                              "--train-iters", "1", "--lr", "1"])
    assert (args.normalization, args.position_embedding_type, args.add_bias_linear) == ("RMSNorm", "rope", True)


def test_checkpoint_args_round_trip():
    from megatron_gatednorm.norm_config import NormConfig
    from megatron_gatednorm.checkpoint import Arch, CheckpointError, arch_from_args, megatron_args

    for name in ("tiny", "mha-untied", "moe-pattern", "hybrid"):
        arch = Arch(SHAPES[name], NormConfig(variant="preaffine"), norm_epsilon=1e-6, zero_centered_gamma=True,
                    rotary_base=1e6, rotary_percent=0.5, moe_router_pre_softmax=True)
        args = megatron_args(arch, tensor_model_parallel_size=2)
        assert (args.norm_epsilon, args.layernorm_epsilon, args.apply_layernorm_1p) == (1e-6, 1e-6, True)
        saved = arch.replace(shape=arch.shape.replace(kv_channels=arch.shape.head_dim))  # as validate_args fills it
        assert arch_from_args(args) == saved, name
    args.rotary_interleaved = True
    with pytest.raises(CheckpointError, match="^common.pt: unsupported rotary_interleaved=True .*; valid: False$"):
        arch_from_args(args)


_MEGATRON_PARSER = """
import json, sys, argparse
from megatron.training.arguments import add_megatron_arguments
parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
print(json.dumps({a.dest: dict(options=a.option_strings, default=a.default) for a in parser._actions}, default=repr))
"""


@pytest.mark.slow
def test_defaults_are_megatron_lm_0_19_2s():
    """Every row's option, dest and default as Megatron-LM 0.19.2's own parser declares them."""
    if not VENV_PY.exists():
        pytest.skip(f"{VENV_PY} is missing: .ci/mcore019_venv.sh creates it")
    out = subprocess.run([str(VENV_PY), "-W", "ignore", "-c", _MEGATRON_PARSER], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    actions = json.loads(out.stdout.strip().splitlines()[-1])
    for row in MEGATRON_FLAGS:
        assert row.dest in actions, row.flag
        assert row.option in actions[row.dest]["options"], (row.flag, actions[row.dest]["options"])
        assert actions[row.dest]["default"] == row.default, (row.flag, actions[row.dest]["default"], row.default)
