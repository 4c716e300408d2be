"""megatron-core's HybridModel: the same weights as the GPT hybrid (both directions of
:mod:`megatron_gatednorm.checkpoint.hybrid_keys`), and ``mgn convert`` of HybridModel checkpoints.

One torchrun launch in .venv-mcore019 (megatron-core 0.19.2; tests/workers/hybrid_convert.py)
compares GPT hybrid and HybridModel logits on renamed weights, saves tiny HybridModels at TP=2,
PP=2 (pattern split by ``|``) and EP=2 with Megatron's logits and greedy continuation. The
conversions to and from HF run here (CI's main environment: megatron-core 0.16.1, transformers),
against the recorded logits and Megatron's own saves.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers.mcore019 import venv_python
from helpers.processes import run_worker

pytest.importorskip("transformers")
import torch  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.mcore019, pytest.mark.distributed]

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from hybrid_convert import CASES  # noqa: E402
from convert_save import tokens  # noqa: E402
from helpers.conversion import FP32_TIGHT, LOGITS_ATOL, expect_one_line_error, load_hf, mgn, same_tensor  # noqa: E402

ARCH = {"hybrid_qwen3_next": "Qwen3NextForCausalLM", "hybrid_gatednorm": "GatedNormForCausalLM"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("hybrid-convert")


@pytest.fixture(scope="module")
def worker(work):
    return run_worker(work, "hybrid_convert.py", 2, "--ckpt", str(work / "megatron"), python=venv_python(), timeout=900)


@pytest.fixture(scope="module")
def converted(worker, work):
    """Every HybridModel save converted to HF: {"case/layout": (hf dir, architecture)}."""
    from megatron_gatednorm.convert.to_hf import convert_to_hf

    return {key: (work / "hf" / key, convert_to_hf(r["ckpt"], work / "hf" / key, progress=False))
            for key, r in worker["saved"].items()}


def test_gpt_hybrid_and_hybrid_model_give_the_same_logits(worker):
    r = worker["equivalence"]
    assert sorted(r) == sorted(f"{c}/{d}" for c in CASES for d in ("gpt->hybrid", "hybrid->gpt"))
    for key, m in r.items():
        assert m["diff"] <= FP32_TIGHT, (key, m)
        assert m["changed"] > 0.1 * m["scale"], (key, m)  # the renamed weights replaced the built ones
        assert m["tensors"] >= 30, (key, m)


def test_hybrid_checkpoints_convert_to_hf(worker, converted):
    from megatron_gatednorm.checkpoint import read_checkpoint

    saved = worker["saved"]
    assert sorted(saved) == sorted(f"{c}/{lay}" for c in CASES for lay in ("tp2", "pp2", "ep2"))
    toks = tokens()
    for key, r in saved.items():
        case, layout = key.split("/")
        assert r["pattern"] == CASES[case][3 if layout == "pp2" else 2], key
        arch, args, raw = read_checkpoint(r["ckpt"])
        # a HybridModel checkpoint: its own layer count and final-norm name, per-layer keys
        assert args.hybrid_layer_pattern == r["pattern"] and args.num_layers == 4, key
        assert any(k.startswith("decoder.layers.3.mlp.") for k in raw) and "decoder.final_norm.weight" in raw, key
        assert arch.shape.num_layers == 2 and arch.shape.linear_attention_pattern() == [1, 0], key
        hf_dir, name = converted[key]
        assert name == ARCH[case], key
        model = load_hf(hf_dir, name)
        with torch.no_grad():
            logits = model(toks, use_cache=False).logits
        ref = torch.tensor(r["logits"])
        diff = float((logits - ref).abs().max())
        assert diff < LOGITS_ATOL and diff < 1e-3 * float(ref.abs().max()), (key, diff)
        if "greedy" in r:
            generated = model.generate(toks, max_new_tokens=8, min_new_tokens=8, do_sample=False)
            assert generated.tolist() == r["greedy"], key


def _stored_keys(ckpt):
    from megatron_gatednorm.checkpoint.common_state import read_metadata
    from megatron_gatednorm.checkpoint.paths import iteration_dir

    return set(read_metadata(iteration_dir(ckpt)[0]).state_dict_metadata)


def test_hf_to_hybrid_model_to_hf_is_byte_identical(worker, converted, work):
    from megatron_gatednorm.checkpoint import read_checkpoint
    from megatron_gatednorm.convert.hf_io import read_safetensors
    from megatron_gatednorm.convert.to_hf import convert_to_hf
    from megatron_gatednorm.convert.to_megatron import convert_to_megatron

    for case in CASES:
        base = CASES[case][0]  # the GPT case of tests/workers/convert_save.py with the same choices
        hf_dir, name = converted[f"{case}/pp2"]
        back = work / "back" / case
        arch = convert_to_megatron(hf_dir, back, tp=2, pp=2, ep=2, hybrid_model=True)
        assert arch.hybrid_layer_pattern == CASES[case][3]
        again = work / "hf-again" / case
        assert convert_to_hf(back, again, progress=False) == name
        a, b = read_safetensors(hf_dir), read_safetensors(again)
        assert sorted(a) == sorted(b), case
        for k in a:
            assert same_tensor(base, k, a[k], b[k]), (case, k)
        for f in ("config.json", "generation_config.json"):
            assert json.loads((hf_dir / f).read_text()) == json.loads((again / f).read_text()), (case, f)
        # the written checkpoint has the HybridModel's own keys and tensors, as Megatron saved them
        _, args, original = read_checkpoint(worker["saved"][f"{case}/pp2"]["ckpt"])
        _, back_args, written = read_checkpoint(back)
        assert sorted(original) == sorted(written), case
        for k in original:
            assert same_tensor(base, k, original[k], written[k]), (case, k)
        # and every other object Megatron saved (its linears' and output layer's _extra_state), which a
        # HybridModel needs to load; 0.19 keeps the common state in the torch_dist files, 0.16 in common.pt
        assert _stored_keys(back) == _stored_keys(worker["saved"][f"{case}/pp2"]["ckpt"]) - {"common_state/shard_0_1"}
        for field in ("hybrid_layer_pattern", "num_layers", "num_experts", "experimental_attention_variant",
                      "linear_attention_freq", "moe_layer_freq", "pipeline_model_parallel_size"):
            assert getattr(back_args, field) == getattr(args, field), (case, field)


def test_cli_hybrid_model_and_pattern_without_gpt_form(converted, work, capsys):
    hf_dir, _ = converted["hybrid_gatednorm/tp2"]
    out = work / "cli-hybrid"
    assert mgn("convert", "to-megatron", "--hf", hf_dir, "--out", out, "--pp", 2, "--hybrid-model") == 0
    assert "HybridModel 'GE|*-'" in capsys.readouterr().out
    common = torch.load(out / "iter_0000000" / "common.pt", weights_only=False)
    assert (common["args"].hybrid_layer_pattern, common["args"].num_layers) == ("GE|*-", 4)
    # a pattern that is not (mixer, FFN) pairs has no GPT-hybrid form: one line naming it, exit 2
    bad = work / "no-gpt-form"
    shutil.copytree(out, bad)
    common["args"].hybrid_layer_pattern = "GG*-"
    torch.save(common, bad / "iter_0000000" / "common.pt")
    outs = work / "cli-err"
    outs.mkdir()
    expect_one_line_error(capsys, ("convert", "to-hf", "--load", bad, "--out", outs / "x", "--no-verify", "--no-progress"),
                  "hybrid_layer_pattern='GG*-' has no GPT-hybrid form", leftovers_in=outs)
