"""The paper's MoE models as megatron-core's HybridModel: the same parameters as their GPTModel
form (analytic counts, the launcher's ``+hybrid`` dry runs), and ``mgn params --hybrid`` building
them on the meta device (megatron-core >= 0.18: run in .venv-mcore019 by test_mcore019_compat.py)
with exactly those counts."""

import importlib.util
import json

import pytest

from megatron_gatednorm.hybrid_pattern import layers
from megatron_gatednorm.launch.plan import build
from megatron_gatednorm.model_shape import hybrid_form
from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.paper import PAPER_MODELS
from megatron_gatednorm.parity import count_params

HAVE_HYBRID = importlib.util.find_spec("megatron.core") is not None and \
    importlib.util.find_spec("megatron.core.models.hybrid") is not None
# model, its recipe, GPT layers; 3 Gated DeltaNet + 1 attention, each followed by MoE
MODELS = [("moe-7b-a2b", "moe7b_a2b", 48), ("moe-24b-a3b", "moe24b_a3b", 24)]


@pytest.mark.parametrize("model, recipe, gpt_layers", MODELS)
def test_hybrid_form_has_the_paper_layout_and_the_gpt_parameters(model, recipe, gpt_layers):
    gpt = PAPER_MODELS[model]
    hybrid = hybrid_form(gpt)
    assert hybrid.hybrid_layer_pattern == "GEGEGE*E" * (gpt_layers // 4) and hybrid.num_layers == 2 * gpt_layers
    assert hybrid_form(gpt, 2).hybrid_layer_pattern == "|".join(["GEGEGE*E" * (gpt_layers // 8)] * 2)
    for variant in ("rmsnorm", "gatednorm", "preaffine"):
        nc = NormConfig(variant=variant)
        for active in (False, True):
            assert count_params(hybrid, nc, active) == count_params(gpt, nc, active), (variant, active)


@pytest.mark.parametrize("model, recipe, gpt_layers", MODELS)
def test_launcher_maps_the_hybrid_overlay_to_the_pattern(model, recipe, gpt_layers):
    for variant in ("", "_gatednorm", "_preaffine"):
        gpt, _ = build(f"{recipe}{variant}", ["data_path=/d"], nodes=4)
        plan, script = build(f"{recipe}{variant}+hybrid", ["data_path=/d"], nodes=4)
        m = plan.megatron
        assert m["hybrid_layer_pattern"] == "GEGEGE*E" * (gpt_layers // 4) and m["num_layers"] == 2 * gpt_layers
        assert not {"experimental_attention_variant", "linear_attention_freq"} & set(m)
        assert f"--hybrid-layer-pattern\n  '{m['hybrid_layer_pattern']}'" in script  # quoted: * is a shell glob
        for key in ("params_total", "params_active", "parity"):
            assert plan.derived[key] == gpt.derived[key], (variant, key)
    piped, _ = build(f"{recipe}+hybrid", ["data_path=/d", "megatron.pipeline_model_parallel_size=2"], nodes=4)
    assert piped.megatron["hybrid_layer_pattern"].count("|") == 1


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_HYBRID, reason="megatron-core < 0.18 has no HybridModel")
@pytest.mark.parametrize("model, recipe, variant", [("moe-7b-a2b", "moe7b_a2b_gatednorm", "gatednorm"),
                                                    ("moe-24b-a3b", "moe24b_a3b_preaffine", "preaffine")])
def test_mgn_params_builds_the_hybrid_model_with_the_launchers_counts(model, recipe, variant, capsys):
    from megatron_gatednorm.cli import main

    assert main(["params", "--model", model, "--hybrid", "--variants", variant, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["variants"]
    assert out["built"] and row["built_params"] == row["params"], row  # the HybridModel on the meta device
    plan, _ = build(f"{recipe}+hybrid", ["data_path=/d"], nodes=4)
    assert layers(plan.megatron["hybrid_layer_pattern"]) == out["hybrid_layer_pattern"]
    assert (plan.derived["params_total"], plan.derived["params_active"]) == (row["params"], row["active_params"])
