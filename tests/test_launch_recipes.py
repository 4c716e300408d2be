"""Recipes: architecture = paper.PAPER_MODELS, parity widths from parity.parity_ffn, overlays,
overrides (coercion, unknown keys with close matches), and the launcher's import isolation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.launch.recipes import load_recipe, recipe_dir
from megatron_gatednorm.launch.validate import make_plan, shape_from_megatron
from megatron_gatednorm.paper import PAPER_MODELS
from megatron_gatednorm.parity import parity_ffn

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in recipe_dir().glob("*.yaml"))
OVERLAYS = sorted(p.stem for p in (recipe_dir() / "overlays").glob("*.yaml"))
PAPER_RECIPES = {"dense2b": "dense-2b", "moe7b_a2b": "moe-7b-a2b", "moe24b_a3b": "moe-24b-a3b"}


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_recipe_architecture_equals_paper_model(name):
    for variant in ("", "_preaffine", "_gatednorm"):
        r = load_recipe(name + variant)
        assert r.paper_model == PAPER_RECIPES[name]
        assert shape_from_megatron(r.megatron) == PAPER_MODELS[r.paper_model], name + variant


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
@pytest.mark.parametrize("variant", ["rmsnorm", "preaffine", "gatednorm"])
def test_variant_width_comes_from_parity_ffn(name, variant):
    recipe = name if variant == "rmsnorm" else f"{name}_{variant}"
    plan = make_plan(load_recipe(recipe, nodes=16), 16)
    report = parity_ffn(PAPER_MODELS[PAPER_RECIPES[name]], NormConfig(variant=variant))
    assert plan.norm_config.variant == variant
    assert plan.megatron[report.field] == report.width
    assert plan.derived["parity"]["params"] <= plan.derived["parity"]["baseline_params"]


def test_dense2b_gatednorm_parity_width_is_6122():
    # The literal is the value parity_ffn gives today; the test above ties the recipe to parity_ffn.
    assert parity_ffn(PAPER_MODELS["dense-2b"], NormConfig(variant="gatednorm")).width == 6122
    plan = make_plan(load_recipe("dense2b_gatednorm", nodes=1), 1)
    assert plan.megatron["ffn_hidden_size"] == 6122


@pytest.mark.parametrize("name, nodes", [(r, n) for r in RECIPES for n in (1, 4, 16, 64) if not r.startswith("tiny") or n == 1])
def test_every_recipe_validates_on_every_layout(name, nodes):
    overrides = ["launch.gpus_per_node=8"]
    plan = make_plan(load_recipe(name, overrides, nodes=nodes), nodes)
    assert plan.derived["world_size"] == nodes * 8
    assert plan.derived["memory_gib"]["total"] <= plan.derived["gpu_memory_gb"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_applies_to_the_2b_recipes(overlay):
    base = "dense2b_gatednorm" if overlay.startswith(("gate_", "tensorwise")) else "dense2b"
    plan = make_plan(load_recipe(f"{base}+{overlay}", nodes=1), 1)
    assert plan.recipe.sources[-1].endswith(f"overlays/{overlay}.yaml")


def test_overlays_set_the_ablation():
    def nc(spec):
        return make_plan(load_recipe(spec, nodes=1), 1).norm_config

    assert nc("dense2b+clip10").residual_clip == 10.0
    assert nc("dense2b+no_ga+clip1000").residual_clip == 1000.0
    assert nc("dense2b+dyt").variant == "dyt"
    assert nc("dense2b+gatedyt").variant == "gatedyt"
    assert nc("dense2b_gatednorm+tensorwise_gate").granularity == "tensorwise"
    assert nc("dense2b_gatednorm+gate_tanh").gate_activation == "tanh"
    plan = make_plan(load_recipe("dense2b+no_ga+dyt", nodes=1), 1)
    assert plan.megatron["attention_output_gate"] is False and plan.megatron["lr"] == 5.0e-4
    assert load_recipe("dense2b+glu").gatednorm["ffn_activation"] == "glu"


def test_override_coercion():
    r = load_recipe("dense2b", ["lr=1e-3", "global_batch_size=1024", "use_distributed_optimizer=false",
                                "launch.train_tokens=1e9", "slurm.time=1-00:00:00", "megatron.use_flash_attn=true",
                                "env.NCCL_DEBUG=INFO", "layouts.4.micro_batch_size=1",
                                "gatednorm.gatednorm_rank=8", "slurm.extra=[--exclude=n1]"])
    assert r.megatron["lr"] == 1e-3 and isinstance(r.megatron["lr"], float)
    assert r.megatron["global_batch_size"] == 1024 and isinstance(r.megatron["global_batch_size"], int)
    assert r.megatron["use_distributed_optimizer"] is False
    assert r.launch["train_tokens"] == 1e9
    assert r.slurm["time"] == "1-00:00:00" and r.slurm["extra"] == ["--exclude=n1"]
    assert r.megatron["use_flash_attn"] is True and r.env["NCCL_DEBUG"] == "INFO"
    assert r.layouts[4]["micro_batch_size"] == 1 and r.gatednorm["gatednorm_rank"] == 8


def test_overrides_win_over_the_layout():
    r = load_recipe("dense2b", ["tensor_model_parallel_size=2"], nodes=4)
    assert r.megatron["tensor_model_parallel_size"] == 2
    assert load_recipe("dense2b", nodes=64).megatron["micro_batch_size"] == 1


@pytest.mark.parametrize("item, message", [
    ("tensor_model_paralel_size=2", "invalid override key 'tensor_model_paralel_size': unknown; did you mean "
                                    "megatron.tensor_model_parallel_size"),
    ("launch.gpus_per_nod=4", "did you mean launch.gpus_per_node"),
    ("gatednorm.gatednorm_rnk=4", "did you mean gatednorm.gatednorm_rank"),
    ("global_batch_size=12.5", "invalid global_batch_size='12.5': expected int like the recipe's value 512"),
    ("bf16=maybe", "invalid bf16='maybe': expected bool"),
    ("lr", "invalid override 'lr': expected key=value"),
    ("layouts.x.lr=1", "expected layouts.<nodes>.<key>=value"),
])
def test_override_errors(item, message):
    with pytest.raises(ValueError) as e:
        load_recipe("dense2b", [item], nodes=1)
    assert message in str(e.value)


def test_ambiguous_bare_key():
    with pytest.raises(ValueError, match=r"ambiguous; use one of megatron.gpu_memory_gb, launch.gpu_memory_gb"):
        load_recipe("dense2b", ["megatron.gpu_memory_gb=1", "gpu_memory_gb=2"])


def test_unknown_recipe_and_key_in_file(tmp_path):
    with pytest.raises(ValueError, match=r"invalid recipe='dense2b_gatednrm'.*did you mean dense2b_gatednorm"):
        load_recipe("dense2b_gatednrm")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: dense2b\nmegatorn: {lr: 1.0e-3}\n")
    with pytest.raises(ValueError, match=r"invalid key 'megatorn'.*did you mean megatron"):
        load_recipe(str(bad))
    bad.write_text("base: dense2b\ngatednorm: {gate_rank: 8}\n")
    with pytest.raises(ValueError, match=r"invalid recipe key 'gatednorm.gate_rank'"):
        load_recipe(str(bad))


def test_recipe_json_round_trip():
    from megatron_gatednorm.launch.recipes import Recipe

    r = load_recipe("moe24b_a3b_gatednorm", ["lr=1e-3"], nodes=4)
    back = Recipe.from_dict(json.loads(json.dumps(r.to_dict())))
    assert make_plan(back, 4).megatron == make_plan(r, 4).megatron


def test_builtin_recipes_are_package_data():
    import megatron_gatednorm

    builtin = Path(str(recipe_dir()))
    assert builtin == Path(megatron_gatednorm.__file__).resolve().parent / "recipes"
    assert {"dense2b", "moe24b_a3b", "tiny"} <= set(RECIPES) and "clip100" in OVERLAYS
    assert (builtin / "base" / "moe_common.yaml").is_file()
    assert not (ROOT / "launch" / "recipes").exists()  # launch/ keeps only the documentation


def _user_dir(tmp_path):
    d = tmp_path / "my_recipes"
    (d / "overlays").mkdir(parents=True)
    (d / "mine.yaml").write_text("base: dense2b_gatednorm\ndescription: mine\nmegatron: {lr: 3.0e-4}\n")
    (d / "overlays" / "short.yaml").write_text("launch: {train_tokens: 1.0e+9}\n")
    (d / "dense2b.yaml").write_text("base: base/moe_common\n")  # shadows the built-in dense2b by name only
    return d


def test_user_recipe_dir_extends_builtin_recipes(tmp_path, monkeypatch):
    d = _user_dir(tmp_path)
    monkeypatch.delenv("MGN_RECIPE_DIR", raising=False)
    r = load_recipe("mine+short+clip100", nodes=1, recipe_dirs=[str(d)])
    assert r.megatron["lr"] == 3.0e-4 and r.gatednorm["norm_variant"] == "gatednorm"
    assert r.launch["train_tokens"] == 1e9 and r.gatednorm["residual_clip"] == 100.0
    assert r.sources[-1].endswith("overlays/clip100.yaml") and r.sources[-3] == str(d / "mine.yaml")
    assert r.recipe_dirs == [str(d.resolve())]
    # a built-in recipe's base stays built-in even when a user recipe shadows its name
    builtin_dense2b = str(Path(str(recipe_dir())) / "dense2b.yaml")
    assert load_recipe("dense2b_gatednorm", recipe_dirs=[str(d)]).sources[0] == builtin_dense2b
    assert load_recipe("dense2b", recipe_dirs=[str(d)]).sources[-1] == str(d / "dense2b.yaml")
    monkeypatch.setenv("MGN_RECIPE_DIR", str(d))  # the environment variable: same search
    assert load_recipe("mine").megatron["lr"] == 3.0e-4
    monkeypatch.setenv("MGN_RECIPE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"invalid MGN_RECIPE_DIR='.*nowhere': not a directory"):
        load_recipe("dense2b")


def test_unknown_user_recipe_names_where_it_looked(tmp_path, monkeypatch):
    d = _user_dir(tmp_path)
    monkeypatch.delenv("MGN_RECIPE_DIR", raising=False)
    with pytest.raises(ValueError) as e:
        load_recipe("mien", recipe_dirs=[str(d)])
    msg = str(e.value)
    assert msg.startswith("invalid recipe='mien': no such file in ") and "\n" not in msg
    assert f"{d.resolve()} (--recipe-dir)" in msg and f"{recipe_dir()} (built-in)" in msg
    assert "did you mean mine" in msg
    with pytest.raises(ValueError, match=r"invalid --recipe-dir='.*nowhere': not a directory"):
        load_recipe("dense2b", recipe_dirs=[str(tmp_path / "nowhere")])


def test_launch_command_takes_recipe_dir(tmp_path):
    d = _user_dir(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MGN_RECIPE_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "megatron_gatednorm.cli", "launch", "--nodes", "1", "--recipe-dir", str(d)]
    out = subprocess.run(cmd + ["mine+clip100", "data_path=/d"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    builtin = Path(str(recipe_dir()))
    assert (f"# recipe        mine+clip100  ({builtin / 'dense2b.yaml'} + {builtin / 'dense2b_gatednorm.yaml'} + "
            f"{d / 'mine.yaml'} + {builtin / 'overlays' / 'clip100.yaml'})") in out.stdout
    assert f"# re-render with: mgn launch mine+clip100 data_path=/d --nodes 1 --recipe-dir {d.resolve()}" in out.stdout
    bad = subprocess.run(cmd + ["mien"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith("mgn launch: error: invalid recipe='mien': no such file in ")
    assert "did you mean mine" in bad.stderr
