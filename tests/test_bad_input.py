"""Bad input to every ``mgn`` command and the library functions behind them: a ``ValueError``
naming the value and the valid choices (one line, exit 2 through ``mgn``), raised before any work."""

import pytest


def test_experiment_rejects_unknown_names_before_running(tmp_path, capsys):
    from megatron_gatednorm.cli import main
    from megatron_gatednorm.experiment.pipeline import run_experiment

    with pytest.raises(ValueError, match=r"invalid variant 'bogus'; valid choices: baseline, preaffine, gatednorm, clip100, vanilla"):
        run_experiment(tmp_path / "a", "quick", ["baseline", "bogus"])
    with pytest.raises(ValueError, match=r"invalid size 'huge'; valid choices: quick, default, base, gpu"):
        run_experiment(tmp_path / "b", "huge", ["baseline"])
    with pytest.raises(ValueError, match=r"--seeds=0: expected a number >= 1"):
        run_experiment(tmp_path / "b", "quick", ["baseline"], seeds=0)
    assert main(["experiment", "--out", str(tmp_path / "c"), "--variants", "baseline,bogus"]) == 2
    err = capsys.readouterr().err
    assert err == "mgn experiment: error: invalid variant 'bogus'; valid choices: baseline, preaffine, gatednorm, clip100, vanilla\n"
    assert not any(tmp_path.iterdir())  # nothing was built


def test_the_gpu_size_without_cuda_is_refused_before_running(tmp_path, capsys, monkeypatch):
    import torch

    from megatron_gatednorm.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["experiment", "--out", str(tmp_path / "gpu"), "--size", "gpu"]) == 2
    assert capsys.readouterr().err == (
        "mgn experiment: error: --size gpu is meant for one GPU and this process sees no CUDA device; "
        "on CPU use --size quick, default, base\n")
    assert not any(tmp_path.iterdir())


def test_quant_rejects_a_bad_setting_before_reading_data(tmp_path):
    from megatron_gatednorm.quant.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match=r"invalid setting 'nvfp4\+awq': valid forms are SCHEME or SCHEME\+sq"):
        evaluate_checkpoint(tmp_path / "missing", tmp_path / "missing_data", ["nvfp4", "nvfp4+awq"])


def test_data_rejects_heldout_without_input_and_a_missing_input(tmp_path):
    from megatron_gatednorm.data.build import build_datasets

    with pytest.raises(ValueError, match="--heldout needs --input"):
        build_datasets(tmp_path / "a", heldout=tmp_path / "h.txt")
    with pytest.raises(ValueError, match=r"input file .*nope.txt does not exist"):
        build_datasets(tmp_path / "b", input=tmp_path / "nope.txt")
    assert not any(tmp_path.iterdir())


# -- "Nothing lost, nothing silent": mgn convert, the checkpoint package and mgn data ------------

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _mgn(capsys, *argv):
    """``(exit code, stderr)`` of ``mgn ARGV`` in this process."""
    from megatron_gatednorm.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


def _one_line_error(capsys, *argv):
    rc, err = _mgn(capsys, *argv)
    assert rc == 2, (rc, err)
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _digest(folder):
    """``{relative path: sha256}`` of every file under ``folder`` (what a command must not change)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _tensor_bytes_in_shard(iter_dir):
    """``(shard path, offset)`` in the middle of the largest tensor's stored bytes: flipping there
    corrupts values, not the file's structure (no reader notices)."""
    from megatron_gatednorm.checkpoint.common_state import read_metadata

    info = max(read_metadata(Path(iter_dir)).storage_data.values(), key=lambda i: i.length)
    return Path(iter_dir) / info.relative_path, info.offset + info.length // 2


def _flip_bytes(path, at=None, n=4):
    data = bytearray(Path(path).read_bytes())
    at = len(data) // 2 if at is None else at
    for i in range(at, at + n):
        data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))


TINY_HF = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, max_position_embeddings=32, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen3 HF folder saved by transformers (no manifest), its Megatron checkpoint
    (``mgn convert to-megatron``) and that checkpoint's export (``to-hf``)."""
    pytest.importorskip("transformers")
    pytest.importorskip("megatron.core")
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_gatednorm.convert.to_hf import convert_to_hf
    from megatron_gatednorm.convert.to_megatron import convert_to_megatron

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(**TINY_HF)).save_pretrained(root / "hf0")
    convert_to_megatron(root / "hf0", root / "ck")
    convert_to_hf(root / "ck", root / "hf", progress=False)
    return root


def _copy(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)


def test_convert_refuses_an_output_that_is_contains_or_is_inside_its_input(tiny, tmp_path, capsys):
    """Reproduction 1: ``to-hf --load CK --out CK --overwrite`` (also ``--load CK/iter_N --out CK``,
    and ``to-megatron --hf X --out X --overwrite``) exited 0 after replacing the checkpoint with
    the export. Now: one line naming both paths, the input untouched."""
    ck, hf = _copy(tiny / "ck", tmp_path / "ck"), _copy(tiny / "hf", tmp_path / "hf")
    before = _digest(ck), _digest(hf)
    for load, out in ((ck, ck), (ck / "iter_0000000", ck), (ck, ck / "iter_0000000" / "export")):
        err = _one_line_error(capsys, "convert", "to-hf", "--load", load, "--out", out, "--overwrite", "--no-progress")
        assert f"--out {out}" in err and f"--load {load}" in err and "choose an --out outside" in err, err
    err = _one_line_error(capsys, "convert", "to-megatron", "--hf", hf, "--out", hf, "--overwrite")
    assert f"--out {hf} is the input --hf {hf}" in err, err
    err = _one_line_error(capsys, "convert", "to-hf", "--load", ck, "--out", tmp_path / "x",
                          "--tokenizer", tmp_path / "x" / "tok")
    assert "contains the input --tokenizer" in err, err
    assert (_digest(ck), _digest(hf)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "hf"]


def test_overwrite_replaces_only_a_folder_mgn_wrote(tiny, tmp_path, capsys):
    """Reproduction 1: ``--overwrite`` deleted unrelated files in the target. Now it replaces only
    a folder with mgn's manifest that holds nothing else, and names what it refuses to delete."""
    to_hf = ("convert", "to-hf", "--load", tiny / "ck", "--no-progress", "--overwrite", "--out")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    err = _one_line_error(capsys, *to_hf, mine)
    assert str(mine) in err and ".mgn-manifest.json" in err and "choose another --out" in err, err
    assert _digest(mine) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}

    export = _copy(tiny / "hf", tmp_path / "export")
    (export / "extra").mkdir()
    (export / "extra" / "eval.json").write_text("{}")
    err = _one_line_error(capsys, *to_hf, export)
    assert "extra/eval.json" in err and "did not write" in err, err
    assert (export / "extra" / "eval.json").is_file()
    shutil.rmtree(export / "extra")
    before = _digest(export)
    assert _mgn(capsys, *to_hf, export)[0] == 0  # an export mgn wrote, nothing added: replaced
    after = _digest(export)
    assert after.pop(".mgn-manifest.json") and after == {k: v for k, v in before.items() if k != ".mgn-manifest.json"}
    err = _one_line_error(capsys, "convert", "to-megatron", "--hf", tiny / "hf", "--overwrite", "--out", mine)
    assert str(mine) in err and ".mgn-manifest.json" in err, err


def test_outputs_get_ordinary_permissions_and_killed_runs_leftovers_go(tiny, tmp_path, capsys):
    """Reproduction 1: exports were 0700/0600 (mkdtemp's). Now the umask's; the temporary folder
    of a killed run is visibly named and removed by the next run once its process is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".out.mgn-tmp-{dead.pid}-abcd1234"
    leftover.mkdir()
    (leftover / "model-00001-of-00001.safetensors").write_bytes(b"half")
    alive = tmp_path / f".out.mgn-tmp-{os.getpid()}-live"  # a run still going: kept
    alive.mkdir()
    old = os.umask(0o027)
    try:
        assert _mgn(capsys, "convert", "to-hf", "--load", tiny / "ck", "--out", tmp_path / "out", "--no-progress")[0] == 0
        assert _mgn(capsys, "convert", "to-megatron", "--hf", tiny / "hf0", "--out", tmp_path / "meg")[0] == 0
    finally:
        os.umask(old)
    assert not leftover.exists() and alive.exists()
    for out in (tmp_path / "out", tmp_path / "meg"):
        assert stat.S_IMODE(out.stat().st_mode) == 0o750, oct(out.stat().st_mode)
        for p in out.rglob("*"):
            assert stat.S_IMODE(p.stat().st_mode) == (0o750 if p.is_dir() else 0o640), (p, oct(p.stat().st_mode))
        record = json.loads((out / ".mgn-manifest.json").read_text())
        assert record["tool"] == "megatron-gatednorm" and record["version"] and record["time"]
        assert sorted(record["files"]) == sorted(_digest(out).keys() - {".mgn-manifest.json"})
        assert all(info["sha256"] == _digest(out)[rel] for rel, info in record["files"].items())
    assert (tmp_path / "meg" / "iter_0000000" / ".mgn-manifest.json").is_file()  # commit's, per iteration


def _edit_config(src, dst, **changes):
    d = _copy(src, dst)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, **changes)))
    return d


def test_to_megatron_refuses_a_config_that_disagrees_with_the_tensors(tiny, tmp_path, capsys):
    """Reproduction 2: config.json disagreeing with the tensors (hidden size, FFN size, vocabulary)
    converted into a checkpoint nothing loads; a layer count mismatch or a missing tensor gave a
    bare KeyError. Now one line listing every disagreement, nothing written."""
    to_meg = lambda hf: ("convert", "to-megatron", "--hf", hf, "--out", tmp_path / "out")  # noqa: E731
    cases = {
        "hidden": (dict(hidden_size=48, head_dim=12), ["of the wrong shape", "model.embed_tokens.weight [64, 32] (expected [64, 48])"]),
        "ffn": (dict(intermediate_size=96), ["model.layers.0.mlp.gate_proj.weight [64, 32] (expected [96, 32])"]),
        "vocab": (dict(vocab_size=128), ["model.embed_tokens.weight [64, 32] (expected [128, 32])"]),
        "more_layers": (dict(num_hidden_layers=3, layer_types=["full_attention"] * 3), ["missing: model.layers.2."]),
        "fewer_layers": (dict(num_hidden_layers=1, layer_types=["full_attention"]), ["unexpected: model.layers.1."]),
    }
    for name, (changes, fragments) in cases.items():
        err = _one_line_error(capsys, *to_meg(_edit_config(tiny / "hf0", tmp_path / name, **changes)))
        assert "the tensors do not match config.json" in err, (name, err)
        for f in fragments:
            assert f in err, (name, f, err)
    # a missing tensor (re-saved without it) and an extra one
    from safetensors.torch import load_file, save_file

    gone = _copy(tiny / "hf0", tmp_path / "gone")
    tensors = load_file(str(gone / "model.safetensors"))
    tensors.pop("model.layers.1.self_attn.k_norm.weight")
    tensors["model.layers.0.mlp.bias"] = tensors["model.norm.weight"].clone()
    save_file(tensors, str(gone / "model.safetensors"), metadata={"format": "pt"})
    err = _one_line_error(capsys, *to_meg(gone))
    assert "1 missing: model.layers.1.self_attn.k_norm.weight" in err and "1 unexpected: model.layers.0.mlp.bias" in err, err
    # the list is capped
    err = _one_line_error(capsys, *to_meg(_edit_config(tiny / "hf0", tmp_path / "big", num_hidden_layers=9,
                                                          layer_types=["full_attention"] * 9)))
    assert "and " in err and " more" in err and len(err) < 2000, err
    assert not (tmp_path / "out").exists()


def test_convert_checks_every_input_before_reading(tiny, tmp_path, capsys):
    """Reproduction 2: parallel sizes were checked only after all tensors were read (and --ep 0
    passed). Now a bad size is named even when the shards are unreadable."""
    broken = _copy(tiny / "hf0", tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"garbage")
    for flag, value, fragment in (("--tp", 3, "--tp=3: num_attention_heads=4 is not divisible"),
                                  ("--tp", 0, "--tp=0: expected a whole number >= 1"),
                                  ("--ep", 0, "--ep=0: expected a whole number >= 1"),
                                  ("--pp", -1, "--pp=-1: expected a whole number >= 1")):
        err = _one_line_error(capsys, "convert", "to-megatron", "--hf", broken, "--out", tmp_path / "o", flag, value)
        assert fragment in err, err
    err = _one_line_error(capsys, "convert", "to-hf", "--load", tiny / "ck", "--out", tmp_path / "o",
                          "--tokenizer", tmp_path / "no-tokenizer")
    assert "--tokenizer" in err and "cannot be loaded" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_corrupted_files_are_refused_naming_the_file(tiny, tmp_path, capsys):
    """Reproduction 3: a shard with a few corrupted bytes converted (and resumed) silently into
    garbage. Now the manifest names it; --no-verify reads it anyway; a checkpoint without a
    manifest (written by Megatron-LM) reads as before."""
    from megatron_gatednorm.checkpoint import CheckpointError, read_checkpoint

    ck = _copy(tiny / "ck", tmp_path / "ck")
    shard, at = _tensor_bytes_in_shard(ck / "iter_0000000")
    _flip_bytes(shard, at=at)  # inside tensor data: no reader notices
    err = _one_line_error(capsys, "convert", "to-hf", "--load", ck, "--out", tmp_path / "o", "--no-progress")
    assert shard.name in err and "changed since they were written" in err and "--no-verify" in err, err
    with pytest.raises(CheckpointError, match=shard.name):
        read_checkpoint(ck)
    assert _mgn(capsys, "convert", "to-hf", "--load", ck, "--out", tmp_path / "o", "--no-progress", "--no-verify")[0] == 0
    read_checkpoint(ck, verify=False)

    hf = _copy(tiny / "hf", tmp_path / "hf")
    st = next(hf.glob("*.safetensors"))
    _flip_bytes(st, at=st.stat().st_size - 16)  # the last tensor's last values
    err = _one_line_error(capsys, "convert", "to-megatron", "--hf", hf, "--out", tmp_path / "m")
    assert st.name in err and "--no-verify" in err, err
    assert _mgn(capsys, "convert", "to-megatron", "--hf", hf, "--out", tmp_path / "m", "--no-verify")[0] == 0
    (tmp_path / "m2").mkdir()
    os.remove(ck / "iter_0000000" / "common.pt")  # a listed file gone
    err = _one_line_error(capsys, "convert", "to-hf", "--load", ck, "--out", tmp_path / "o2", "--no-progress")
    assert "missing: common.pt" in err, err

    plain = _copy(tiny / "ck", tmp_path / "plain")  # as Megatron-LM writes it: no manifest
    os.remove(plain / "iter_0000000" / ".mgn-manifest.json")
    read_checkpoint(plain)
    truncated = _copy(plain, tmp_path / "truncated")
    shard = sorted((truncated / "iter_0000000").glob("*.distcp"))[-1]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    err = _one_line_error(capsys, "convert", "to-hf", "--load", truncated, "--out", tmp_path / "o3", "--no-progress")
    assert "failed to read" in err and shard.name in err, err


def test_live_model_loads_verify_the_manifest(tiny, tmp_path):
    """Reproduction 3 (resume): load_megatron_checkpoint checks the iteration folder's manifest
    before loading (before any model is touched), unless verify=False."""
    from megatron_gatednorm.checkpoint import CheckpointError, load_megatron_checkpoint

    ck = _copy(tiny / "ck", tmp_path / "ck")
    shard, at = _tensor_bytes_in_shard(ck / "iter_0000000")
    _flip_bytes(shard, at=at)
    with pytest.raises(CheckpointError, match=f"{shard.name}.*--no-verify"):
        load_megatron_checkpoint(object(), ck)  # no model needed: refused before it is used


def _write_text(path, n, seed):
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    path.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(40))}) for _ in range(n)) + "\n")
    return path


def test_data_refuses_an_existing_dataset_unless_replace(tmp_path, capsys):
    """Reproduction 4: ``mgn data --out EXISTING`` overwrote the dataset, dropped the held-out
    entry from data.json and left Megatron's cache stale. Now it refuses (one line, exit 2);
    ``--replace`` rebuilds all of it, cache included; the cache path carries the dataset's id."""
    from megatron_gatednorm.data.build import read_manifest

    train, held = _write_text(tmp_path / "train.jsonl", 30, 0), _write_text(tmp_path / "held.jsonl", 5, 1)
    other = _write_text(tmp_path / "other.jsonl", 30, 2)
    data = tmp_path / "data"
    assert _mgn(capsys, "data", "--out", data, "--input", train, "--heldout", held, "--vocab-size", "300")[0] == 0
    before = _digest(data)
    err = _one_line_error(capsys, "data", "--out", data, "--input", other, "--vocab-size", "300")
    assert f"--out {data} already holds a dataset" in err and "--replace" in err, err
    assert _digest(data) == before

    from megatron_gatednorm.data.build import cache_path
    from megatron_gatednorm.experiment.sizes import experiment_size
    from megatron_gatednorm.experiment.trainer_argv import trainer_argv
    from megatron_gatednorm.model_shape import ModelShape

    first = read_manifest(data)
    assert set(first["splits"]) == {"train", "heldout"} and len(first["dataset_id"]) == 16
    (cache_path(data) / "stale.npy").parent.mkdir(parents=True)
    (cache_path(data) / "stale.npy").write_bytes(b"old index")
    assert _mgn(capsys, "data", "--out", data, "--input", other, "--vocab-size", "300", "--replace")[0] == 0
    second = read_manifest(data)
    assert set(second["splits"]) == {"train"} and second["dataset_id"] != first["dataset_id"]
    assert not (data / "cache").exists()  # the old cache went with the old dataset
    assert cache_path(data) == data / "cache" / second["dataset_id"]
    argv = trainer_argv(experiment_size("quick"), ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4,
                                                              ffn_hidden_size=128, vocab_size=512), data, tmp_path / "run", 1)
    assert argv[argv.index("--data-cache-path") + 1] == str(data / "cache" / second["dataset_id"])

    # --replace deletes only what mgn data writes; an input inside the output is refused
    (data / "my-notes.txt").write_text("keep")
    err = _one_line_error(capsys, "data", "--out", data, "--input", other, "--vocab-size", "300", "--replace")
    assert "my-notes.txt" in err and "did not write" in err, err
    assert (data / "my-notes.txt").read_text() == "keep"
    os.remove(data / "my-notes.txt")
    shutil.copy(other, data / "corpus.jsonl")
    err = _one_line_error(capsys, "data", "--out", data, "--input", data / "corpus.jsonl", "--replace")
    assert "contains the input --input" in err, err
    assert (data / MANIFEST_NAME).is_file()


MANIFEST_NAME = "data.json"
