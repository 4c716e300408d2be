"""Plugin configuration and Megatron CLI flags: defaults from one place, clear errors."""

import argparse

import pytest

from megatron_gatednorm.norm_flags import FLAGS, add_gatednorm_args, norm_config_from_args, norm_config_to_argv
from megatron_gatednorm.norm_config import DEFAULTS, NormConfig


def parse(*argv):
    return norm_config_from_args(add_gatednorm_args(argparse.ArgumentParser()).parse_args(list(argv)))


def test_defaults_come_from_norm_config():
    assert parse() == NormConfig() == DEFAULTS
    assert DEFAULTS.variant == "gatednorm" and DEFAULTS.rank == 16
    assert DEFAULTS.placement == ("attn", "mlp", "final") and DEFAULTS.residual_clip is None


def test_flags_round_trip():
    nc = NormConfig(variant="preaffine_gatednorm", rank=8, gate_activation="tanh", granularity="tensorwise",
                    placement=("mlp", "attn"), residual_clip=100.0, gate_up_init="init_method")
    argv = norm_config_to_argv(nc)
    assert argv[:2] == ["--norm-variant", "preaffine_gatednorm"]
    assert parse(*argv) == nc
    assert nc.placement == ("attn", "mlp")  # canonical order


@pytest.mark.parametrize("argv, message", [
    (["--gatednorm-rank", "0"], "invalid --gatednorm-rank=0: it must be an integer >= 1"),
    (["--gatednorm-placement", "attn,mpl"], "invalid --gatednorm-placement='mpl': valid choices: attn, mlp, final, qk"),
    (["--residual-clip", "0"], "invalid --residual-clip=0.0: it must be a threshold > 0"),
    (["--residual-clip", "-10"], "invalid --residual-clip=-10.0"),
])
def test_bad_flag_values_name_the_flag(argv, message):
    with pytest.raises(ValueError) as e:
        parse(*argv)
    assert message in str(e.value)


def test_unknown_variant_is_rejected_by_argparse_with_choices(capsys):
    with pytest.raises(SystemExit):
        parse("--norm-variant", "gatenorm")
    assert "invalid choice: 'gatenorm'" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, field", [
    (dict(variant="layernorm"), "variant"),
    (dict(gate_activation="relu"), "gate_activation"),
    (dict(granularity="headwise"), "granularity"),
    (dict(placement="attn,qk_norm"), "placement"),
    (dict(placement=""), "placement"),
    (dict(rank=0), "rank"),
    (dict(rank=2.5), "rank"),
    (dict(residual_clip=0.0), "residual_clip"),
    (dict(dyt_alpha_init=0.0), "dyt_alpha_init"),
])
def test_norm_config_errors_name_field_and_choices(kwargs, field):
    with pytest.raises(ValueError) as e:
        NormConfig(**kwargs)
    assert e.value.field == field
    assert str(e.value).startswith(f"invalid {field}=")


def test_every_flag_maps_to_a_field():
    fields = set(NormConfig.__dataclass_fields__)
    assert {field for _, field, _ in FLAGS} == fields

