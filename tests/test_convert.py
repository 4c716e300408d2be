"""``mgn convert``: Megatron torch_dist checkpoints ⇄ Hugging Face, against independent references.

One torchrun launch saves tiny fp32 models of every variant (dense and MoE) at TP=2, PP=2 and
EP=2 with Megatron's logits and greedy continuation; conversions run offline in this process.
A second launch loads converted-back checkpoints into Megatron models at TP=1/TP=2/PP=2/EP=2.
"""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.conversion import FP32_TIGHT, LOGITS_ATOL, STOCK, expect_one_line_error, load_hf, mgn, same_tensor
from helpers.processes import run_worker

pytest.importorskip("transformers")
pytest.importorskip("safetensors")
import torch  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKERS = Path(__file__).parent / "workers"
sys.path.insert(0, str(WORKERS))
from convert_save import CASES, tokens  # noqa: E402


def _torchrun(tmp, *args):
    return run_worker(tmp, "convert_save.py", 2, *args, timeout=900)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def saved(work):
    """{"case/layout": {ckpt, logits, greedy}} from Megatron at TP=2 / PP=2 / EP=2."""
    return _torchrun(work, "--ckpt", str(work / "megatron"))


@pytest.fixture(scope="module")
def converted(saved, work):
    """Every saved checkpoint converted to HF: {"case/layout": (hf dir, architecture)}."""
    from megatron_gatednorm.convert.to_hf import convert_to_hf

    out = {}
    for key, r in saved.items():
        hf_dir = work / "hf" / key
        out[key] = (hf_dir, convert_to_hf(r["ckpt"], hf_dir, progress=False))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_logits_and_greedy_match_megatron(case, saved, converted):
    keys = [k for k in saved if k.startswith(case + "/")]
    assert len(keys) == (3 if CASES[case][0].num_experts else 2)
    assert "greedy" in saved[f"{case}/tp2"], case
    toks = tokens()
    for key in keys:
        hf_dir, arch = converted[key]
        assert arch == STOCK.get(case, "GatedNormForCausalLM"), key
        model = load_hf(hf_dir, arch)
        assert type(model).__name__ == arch
        with torch.no_grad():
            logits = model(toks, use_cache=False).logits
        ref = torch.tensor(saved[key]["logits"])
        diff = float((logits - ref).abs().max())
        assert diff < LOGITS_ATOL, (key, diff)
        # and relative to the logits' scale (DyT models have small logits): a real comparison
        assert diff < 1e-3 * float(ref.abs().max()), (key, diff, float(ref.abs().max()))
        if "greedy" in saved[key]:  # recorded at TP=2; every layout's logits are compared above
            generated = model.generate(toks, max_new_tokens=8, min_new_tokens=8, do_sample=False)
            assert generated.tolist() == saved[key]["greedy"], key


def test_stock_baselines_carry_no_remote_code(converted):
    for key, (hf_dir, arch) in converted.items():
        cfg = json.loads((hf_dir / "config.json").read_text())
        code = sorted(p.name for p in hf_dir.glob("*.py"))
        if arch in STOCK.values():
            assert "auto_map" not in cfg and code == [], key
        else:
            assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_gatednorm.GatedNormForCausalLM"
            assert code == ["configuration_gatednorm.py", "modeling_gatednorm.py"], key
        assert (hf_dir / "generation_config.json").is_file()
        index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
        assert all((hf_dir / f).is_file() for f in set(index["weight_map"].values()))


def test_exported_code_is_self_contained(converted):
    """The copied files import only torch/transformers, and load where megatron_gatednorm and
    megatron cannot be imported."""
    hf_dir, _ = converted["preaffine_gatednorm/tp2"]
    for name in ("configuration_gatednorm.py", "modeling_gatednorm.py"):
        tree = ast.parse((hf_dir / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {"." if node.level else node.module.split(".")[0]}
            else:
                continue
            assert roots <= {"torch", "transformers", "typing", ".", "math"}, (name, roots)
    script = (
        "import sys; sys.modules['megatron_gatednorm'] = None; sys.modules['megatron'] = None\n"
        "import torch; from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(hf_dir)!r}, trust_remote_code=True)\n"
        "print(type(m).__name__, m.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False).shape)\n"
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(hf_dir.parent / "modules"), HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GatedNormForCausalLM torch.Size([1, 5])" in proc.stdout


def test_round_trips(saved, converted, work):
    """HF → Megatron → HF is byte-identical; Megatron (TP=2) → HF → Megatron (TP=1) has the same
    tensors and logits, and the written checkpoints load at TP=2, PP=2 (and EP=2). The one
    exception is :data:`SHIFTED` in stock Qwen3-Next folders (within an ulp of 1)."""
    from megatron_gatednorm.convert.hf_io import read_safetensors
    from megatron_gatednorm.checkpoint import read_checkpoint
    from megatron_gatednorm.convert.to_hf import convert_to_hf
    from megatron_gatednorm.convert.to_megatron import convert_to_megatron

    loads = []
    for case in sorted(CASES):
        hf_dir, arch = converted[f"{case}/tp2"]
        back = work / "back" / case
        convert_to_megatron(hf_dir, back, tp=1)
        again = work / "hf-again" / case
        assert convert_to_hf(back, again, progress=False) == arch
        a, b = read_safetensors(hf_dir), read_safetensors(again)
        assert sorted(a) == sorted(b), case
        for k in a:
            assert same_tensor(case, k, a[k], b[k]), (case, k)
        for f in ("config.json", "generation_config.json"):
            assert json.loads((hf_dir / f).read_text()) == json.loads((again / f).read_text()), (case, f)
        _, args, original = read_checkpoint(saved[f"{case}/tp2"]["ckpt"])
        _, back_args, written = read_checkpoint(back)
        assert sorted(original) == sorted(written), case
        for k in original:
            assert same_tensor(case, k, original[k], written[k]), (case, k)
        assert back_args.tensor_model_parallel_size == 1 and args.tensor_model_parallel_size == 2
        assert back_args.padded_vocab_size == args.padded_vocab_size
        loads.append(f"{back}@tp1")
        if case in ("gatednorm", "moe_gatednorm", "moe_qwen3", "llama", "next_qwen3", "next_dense_preaffine"):
            loads += [f"{back}@tp2", f"{back}@pp2"] + ([f"{back}@ep2"] if CASES[case][0].num_experts else [])
    results = _torchrun(work, "--load", *loads)
    for pair, r in results.items():
        case = Path(pair.split("@")[0]).name
        ref = torch.tensor(saved[f"{case}/tp2"]["logits"])
        assert r["changed"] > 0.1 * float(ref.abs().max()), pair  # the load replaced the built weights
        diff = float((torch.tensor(r["logits"]) - ref).abs().max())
        assert diff < FP32_TIGHT, (pair, diff)


def _tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(20)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(path)


def test_cli_both_directions(saved, work, capsys):
    tok_dir = work / "tokenizer"
    _tiny_tokenizer(tok_dir)
    hf = work / "cli-hf"
    ckpt = saved["moe_gatednorm/ep2"]["ckpt"]
    assert mgn("convert", "to-hf", "--load", ckpt, "--out", hf, "--tokenizer", tok_dir, "--max-shard-size", "20KB", "--no-progress") == 0
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert (hf / "tokenizer.json").is_file() and (hf / "tokenizer_config.json").is_file()
    gen = json.loads((hf / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (0, 1)
    out = work / "cli-megatron"
    assert mgn("convert", "to-megatron", "--hf", hf, "--out", out, "--tp", 2, "--pp", 2, "--ep", 2) == 0
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "0"
    common = torch.load(out / "iter_0000000" / "common.pt", weights_only=False)
    a = common["args"]
    assert (a.tensor_model_parallel_size, a.pipeline_model_parallel_size, a.expert_model_parallel_size) == (2, 2, 2)
    assert (a.norm_variant, a.num_experts, a.moe_layer_freq, a.padded_vocab_size) == ("gatednorm", 4, [1, 0], 128)
    assert common["iteration"] == 0 and common["checkpoint_version"] == 3.0
    capsys.readouterr()


def test_bad_input_errors(saved, converted, work, capsys):
    good = Path(saved["gatednorm/tp2"]["ckpt"])
    outs = work / "err-out"
    outs.mkdir()
    to_hf = lambda load: ("convert", "to-hf", "--load", load, "--out", outs / "x", "--no-progress")  # noqa: E731

    expect_one_line_error(capsys, to_hf(work / "nope"), "no such checkpoint directory", leftovers_in=outs)
    empty = work / "empty"
    empty.mkdir()
    expect_one_line_error(capsys, to_hf(empty), "not a Megatron checkpoint", leftovers_in=outs)

    def broken(name, damage):  # as Megatron-LM writes it (no integrity manifest): the readers' own checks
        d = work / name
        shutil.copytree(good, d)
        os.remove(d / "iter_0000000" / ".mgn-manifest.json")
        damage(d / "iter_0000000")
        return d

    truncated = broken("truncated", lambda it: [
        open(f, "r+b").truncate(os.path.getsize(f) // 2) for f in it.glob("*.distcp")])
    expect_one_line_error(capsys, to_hf(truncated), "failed to read", leftovers_in=outs)
    missing = broken("missing", lambda it: os.remove(sorted(it.glob("*.distcp"))[0]))
    expect_one_line_error(capsys, to_hf(missing), "missing", leftovers_in=outs)
    no_meta = broken("nometa", lambda it: os.remove(it / ".metadata"))
    expect_one_line_error(capsys, to_hf(no_meta), "missing .metadata", leftovers_in=outs)
    bad_common = broken("badcommon", lambda it: (it / "common.pt").write_bytes(b"not a pickle"))
    expect_one_line_error(capsys, to_hf(bad_common), "common.pt", "cannot be read", leftovers_in=outs)

    def sparse_attention(it):
        common = torch.load(it / "common.pt", weights_only=False)
        common["args"].experimental_attention_variant = "dsa"
        torch.save(common, it / "common.pt")

    expect_one_line_error(capsys, to_hf(broken("dsa", sparse_attention)), "experimental_attention_variant='dsa'",
                  "'gated_delta_net'", leftovers_in=outs)

    # an existing output folder is kept untouched without --overwrite
    existing = outs / "x"
    existing.mkdir()
    (existing / "keep").write_text("mine")
    expect_one_line_error(capsys, to_hf(good), "already exists", "--overwrite")
    assert [p.name for p in outs.iterdir()] == ["x"] and (existing / "keep").read_text() == "mine"
    # --overwrite replaces only a folder mgn wrote (its .mgn-manifest.json lists every file in it)
    expect_one_line_error(capsys, (*to_hf(good), "--overwrite"), "replaces only a folder mgn wrote", ".mgn-manifest.json")
    assert [p.name for p in outs.iterdir()] == ["x"] and (existing / "keep").read_text() == "mine"
    shutil.rmtree(existing)
    assert mgn(*to_hf(good)) == 0
    assert mgn(*to_hf(good), "--overwrite") == 0
    notes = capsys.readouterr().err.strip().splitlines()  # one line per export: which tokenizer it got
    assert len(notes) == 2 and all(n.startswith("to-hf: the export has no tokenizer: ") for n in notes), notes
    assert (existing / "config.json").is_file() and (existing / ".mgn-manifest.json").is_file()
    assert [p.name for p in outs.iterdir()] == ["x"]
    shutil.rmtree(existing)

    # HF side: unsupported architecture, missing tensors, existing output, bad layout
    to_meg = lambda hf: ("convert", "to-megatron", "--hf", hf, "--out", outs / "m")  # noqa: E731
    gpt2 = work / "gpt2"
    shutil.copytree(converted["qwen3/tp2"][0], gpt2)
    cfg = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt2", architectures=["GPT2LMHeadModel"])))
    expect_one_line_error(capsys, to_meg(gpt2), "unsupported architecture", "gpt2", leftovers_in=outs)
    shard_gone = work / "shardgone"
    shutil.copytree(converted["qwen3/tp2"][0], shard_gone)
    for f in shard_gone.glob("*.safetensors"):
        f.unlink()
    expect_one_line_error(capsys, to_meg(shard_gone), "missing", leftovers_in=outs)
    expect_one_line_error(capsys, to_meg(work / "nohf"), "no config.json", leftovers_in=outs)
    # a released Qwen3-Next folder's MTP head: named on stderr, not converted, nothing else changes
    from safetensors.torch import save_file

    mtp = work / "with-mtp"
    shutil.copytree(converted["next_qwen3/tp2"][0], mtp)
    save_file({"mtp.fc.weight": torch.ones(2, 2)}, str(mtp / "mtp.safetensors"))
    index = json.loads((mtp / "model.safetensors.index.json").read_text())
    index["weight_map"]["mtp.fc.weight"] = "mtp.safetensors"
    (mtp / "model.safetensors.index.json").write_text(json.dumps(index))
    # (edited by hand after the export: its integrity manifest no longer matches, --no-verify reads it)
    assert mgn("convert", "to-megatron", "--hf", mtp, "--out", work / "mtp-megatron", "--no-verify") == 0
    assert "not converting 1 tensors of Qwen3-Next's multi-token-prediction head" in capsys.readouterr().err
    from megatron_gatednorm.checkpoint import read_checkpoint
    from megatron_gatednorm.convert.to_megatron import convert_to_megatron

    convert_to_megatron(converted["next_qwen3/tp2"][0], work / "mtp-plain")
    _, _, with_mtp = read_checkpoint(work / "mtp-megatron")
    _, _, plain = read_checkpoint(work / "mtp-plain")
    assert sorted(with_mtp) == sorted(plain) and all(torch.equal(with_mtp[k], plain[k]) for k in plain)
    expect_one_line_error(capsys, (*to_meg(converted["qwen3/tp2"][0]), "--tp", 3), "--tp=3", "not divisible",
                  leftovers_in=outs)
