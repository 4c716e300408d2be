"""The experiment's variants as models: the vanilla-attention control differs from the baseline
only by the attention output gate; ``benchmarks/sink_search.py`` parses its settings or names the bad part."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from megatron_gatednorm.experiment.sizes import SIZES
from megatron_gatednorm.experiment.trainer_argv import trainer_argv
from megatron_gatednorm.experiment.variants import VARIANTS, parity_shape

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size", sorted(SIZES))
def test_vanilla_is_the_baseline_without_the_output_gate(size, tmp_path):
    base, vanilla = (parity_shape(SIZES[size], 4096, name) for name in ("baseline", "vanilla"))
    assert base.attention_output_gate and not vanilla.attention_output_gate
    assert vanilla == base.replace(attention_output_gate=False)  # QK-norm, widths, FFN: the baseline's
    assert VARIANTS["vanilla"] == VARIANTS["baseline"]
    (tmp_path / "data.json").write_text('{"dataset_id": "x"}')  # all trainer_argv reads of a data folder
    argv = {name: trainer_argv(SIZES[size], shape, tmp_path, tmp_path / "run", 1) for name, shape in
            (("baseline", base), ("vanilla", vanilla))}
    assert "--attention-output-gate" in argv["baseline"] and "--attention-output-gate" not in argv["vanilla"]
    assert [a for a in argv["baseline"] if a != "--attention-output-gate"] == argv["vanilla"]
    assert not parity_shape(SIZES[size], 4096, "vanilla", dict(qk_layernorm=False)).qk_layernorm


def test_parity_shape_rejects_an_unknown_variant():
    with pytest.raises(ValueError, match=r"invalid variant 'plain'; valid choices: baseline, .*vanilla"):
        parity_shape(SIZES["quick"], 4096, "plain")


@pytest.fixture(scope="module")
def search():
    """``benchmarks/sink_search.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location("sink_search", REPO / "benchmarks" / "sink_search.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_sink_search_settings(search):
    variant, size, changes = search.parse_setting("vanilla@quick:seq_length=256,lr=1e-2,qk_layernorm=0")
    assert variant == "vanilla" and size.seq_length == 256 and size.lr == 0.01 and changes == {"qk_layernorm": False}
    assert size.num_layers == SIZES["quick"].num_layers
    for bad, match in (("plain", r"invalid variant 'plain'"), ("vanilla@huge", r"invalid size 'huge'"),
                       ("vanilla:depth=3", r"invalid field 'depth=3' .*valid fields: num_layers"),
                       ("vanilla:lr=", r"invalid field 'lr='"),
                       ("vanilla:qk_layernorm=yes", r"as 0/1: .*qk_layernorm"), ("vanilla seq", r"expected VARIANT\[@SIZE\]")):
        with pytest.raises(ValueError, match=match):
            search.parse_setting(bad)
    assert search.main(["--settings", "vanilla:depth=3"]) == 2
    for setting in search.GRID:  # the documented search parses
        search.parse_setting(setting)
