"""The bad-input corpus ("Nothing lost, nothing silent", item 6): every ``mgn`` command over the
classes of bad input — missing, wrong kind (a folder for a file and vice versa), truncated,
corrupted bytes, wrong types, out-of-range numbers, outputs over inputs — must end in exit 2 with
one ``error:`` line naming the input, no traceback, and the inputs unchanged (sha256 before and
after). Commands that write are also killed mid-write: nothing partial under the output name, and
the next run works.

The commands run in this process (``megatron_gatednorm.cli.main``), except ``mgn train`` (its
error paths and ``--help``) and the killed runs, which need subprocesses. Fixtures are tiny:
the HF folder and Megatron checkpoint of ``tests/test_bad_input.py`` (its ``tiny`` fixture) and a
30-document dataset with a matching HF model built here.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import test_bad_input
from test_bad_input import TINY_HF, _digest, _flip_bytes, _write_text

tiny = test_bad_input.tiny  # its module-scoped fixture, shared (not copied)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fx(tiny, tmp_path_factory):
    """``tiny`` (hf0: an HF folder of vocab 64 and max_position_embeddings 32; ck: its Megatron
    checkpoint) plus ``data`` (a 30 + 10 document dataset, vocabulary 300), ``hf`` (an HF model
    whose vocabulary fits it) and broken copies of each input, all under one folder whose digest
    the cases compare."""
    pytest.importorskip("tokenizers")
    import shutil

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_gatednorm.cli import main

    root = tmp_path_factory.mktemp("corpus")
    for name in ("hf0", "ck"):
        shutil.copytree(tiny / name, root / name, symlinks=True)
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(**dict(TINY_HF, vocab_size=320))).save_pretrained(root / "hf")
    text = _write_text(root / "train.jsonl", 30, 0)
    held = _write_text(root / "held.jsonl", 10, 1)
    assert main(["data", "--out", str(root / "data"), "--input", str(text), "--heldout", str(held),
                 "--vocab-size", "300"]) == 0
    bad = root / "bad"
    bad.mkdir()
    (bad / "file.txt").write_text("a file, not a folder\n")
    (bad / "not-json.jsonl").write_text('{"text": "ok"}\n{not json\n')
    (bad / "text-number.jsonl").write_text('{"text": 5}\n')
    (bad / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") + b"\xff\xfe\x80")
    (bad / "empty.jsonl").write_text("")
    (bad / "recipe-list.json").write_text("[1, 2]\n")
    (bad / "recipe-truncated.json").write_text('{"recipe": {"name": "tiny", ')
    shutil.copytree(root / "hf0", bad / "hf-config")  # config.json cut mid-way
    cfg = bad / "hf-config" / "config.json"
    cfg.write_text(cfg.read_text()[: len(cfg.read_text()) // 2])
    shutil.copytree(root / "hf", bad / "hf-weights")  # safetensors header cut
    st = bad / "hf-weights" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:200])
    shutil.copytree(root / "data", bad / "data-idx")  # .idx truncated to its header
    idx = bad / "data-idx" / "heldout_text_document.idx"
    idx.write_bytes(idx.read_bytes()[:20])
    shutil.copytree(root / "data", bad / "data-magic")  # .idx with corrupted magic bytes
    _flip_bytes(bad / "data-magic" / "heldout_text_document.idx", at=0, n=6)
    shutil.copytree(root / "data", bad / "data-onlybin")  # .idx missing
    os.remove(bad / "data-onlybin" / "heldout_text_document.idx")
    shutil.copytree(root / "data" / "tokenizer", bad / "tok-corrupt")
    (bad / "tok-corrupt" / "tokenizer.json").write_bytes(b"\x00\x01garbage{")
    shutil.copytree(root / "ck", bad / "ck-tracker")
    (bad / "ck-tracker" / "latest_checkpointed_iteration.txt").write_text("abc")
    return root


def _run(capsys, argv):
    """``(exit code, stderr)`` of ``mgn ARGV`` in this process (argparse's SystemExit included);
    Python warnings silenced so stderr holds only what mgn says."""
    from megatron_gatednorm.cli import main

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
    return rc, capsys.readouterr().err


def _assert_one_line(rc, err, names, code=2):
    assert rc == code, (rc, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and ": note: " not in line]
    assert len(lines) == 1 and "error:" in lines[0], err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


# (id, argv with {root}/{bad} placeholders, fragments the one line must contain)
H = "{root}/data/heldout_text_document"
CASES = {
    "params": [
        ("rank-zero", ["params", "--gatednorm-rank", "0", "--no-build"], ["rank=0"]),
        ("rank-not-a-number", ["params", "--gatednorm-rank", "two"], ["--gatednorm-rank", "'two'"]),
        ("unknown-variant", ["params", "--variants", "rmsnorm,bogus", "--no-build"], ["'bogus'"]),
        ("no-variant", ["params", "--variants", ",", "--no-build"], ["--variants"]),
        ("unknown-model", ["params", "--model", "dense-9b"], ["--model", "'dense-9b'"]),
    ],
    "data": [
        ("input-missing", ["data", "--out", "{out}", "--input", "{bad}/nope.jsonl"], ["{bad}/nope.jsonl"]),
        ("input-is-a-folder", ["data", "--out", "{out}", "--input", "{root}/hf0"], ["--input {root}/hf0", "folder"]),
        ("input-corrupted-json", ["data", "--out", "{out}", "--input", "{bad}/not-json.jsonl", "--vocab-size", "300"],
         ["{bad}/not-json.jsonl:2"]),
        ("input-wrong-type", ["data", "--out", "{out}", "--input", "{bad}/text-number.jsonl", "--vocab-size", "300"],
         ["{bad}/text-number.jsonl:1", "int"]),
        ("input-not-utf8", ["data", "--out", "{out}", "--input", "{bad}/latin1.txt", "--vocab-size", "300"],
         ["{bad}/latin1.txt", "UTF-8"]),
        ("input-empty", ["data", "--out", "{out}", "--input", "{bad}/empty.jsonl", "--vocab-size", "300"], ["empty"]),
        ("heldout-missing", ["data", "--out", "{out}", "--input", "{root}/train.jsonl", "--heldout", "{bad}/nope.txt"],
         ["{bad}/nope.txt"]),
        ("vocab-out-of-range", ["data", "--out", "{out}", "--input", "{root}/train.jsonl", "--vocab-size", "-5"],
         ["--vocab-size=-5"]),
        ("vocab-not-a-number", ["data", "--out", "{out}", "--vocab-size", "4k"], ["--vocab-size", "'4k'"]),
        ("tokenizer-missing", ["data", "--out", "{out}", "--input", "{root}/train.jsonl", "--tokenizer", "{bad}/nope"],
         ["{bad}/nope"]),
        ("tokenizer-is-a-file", ["data", "--out", "{out}", "--input", "{root}/train.jsonl", "--tokenizer",
                                 "{bad}/file.txt"], ["{bad}/file.txt"]),
        ("tokenizer-corrupted", ["data", "--out", "{out}", "--input", "{root}/train.jsonl", "--tokenizer",
                                 "{bad}/tok-corrupt"], ["{bad}/tok-corrupt", "tokenizer.json"]),
        ("out-is-a-file", ["data", "--out", "{bad}/file.txt", "--input", "{root}/train.jsonl"], ["{bad}/file.txt"]),
        ("out-under-a-file", ["data", "--out", "{bad}/file.txt/d", "--input", "{root}/train.jsonl",
                              "--vocab-size", "300"], ["{bad}/file.txt"]),
        ("out-holds-the-input", ["data", "--out", "{root}", "--input", "{root}/train.jsonl", "--replace"],
         ["--out {root}", "--input {root}/train.jsonl"]),
        ("out-is-a-dataset", ["data", "--out", "{root}/data", "--input", "{root}/train.jsonl"],
         ["--out {root}/data", "--replace"]),
    ],
    "convert": [
        ("load-missing", ["convert", "to-hf", "--load", "{bad}/nope", "--out", "{out}"], ["{bad}/nope"]),
        ("load-is-a-file", ["convert", "to-hf", "--load", "{bad}/file.txt", "--out", "{out}"], ["{bad}/file.txt"]),
        ("load-is-hf", ["convert", "to-hf", "--load", "{root}/hf0", "--out", "{out}"], ["{root}/hf0"]),
        ("load-tracker-corrupted", ["convert", "to-hf", "--load", "{bad}/ck-tracker", "--out", "{out}"],
         ["{bad}/ck-tracker/latest_checkpointed_iteration.txt", "'abc'"]),
        ("shard-size-wrong-type", ["convert", "to-hf", "--load", "{root}/ck", "--out", "{out}", "--max-shard-size",
                                   "lots"], ["--max-shard-size='lots'"]),
        ("dtype-unknown", ["convert", "to-hf", "--load", "{root}/ck", "--out", "{out}", "--dtype", "fp8"],
         ["--dtype", "'fp8'"]),
        ("out-under-a-file", ["convert", "to-hf", "--load", "{root}/ck", "--out", "{bad}/file.txt/x", "--no-progress"],
         ["{bad}/file.txt"]),
        ("out-is-the-input", ["convert", "to-hf", "--load", "{root}/ck", "--out", "{root}/ck", "--overwrite",
                              "--no-progress"], ["--out {root}/ck"]),
        ("hf-missing", ["convert", "to-megatron", "--hf", "{bad}/nope", "--out", "{out}"], ["{bad}/nope"]),
        ("hf-is-a-file", ["convert", "to-megatron", "--hf", "{bad}/file.txt", "--out", "{out}"], ["{bad}/file.txt"]),
        ("hf-config-truncated", ["convert", "to-megatron", "--hf", "{bad}/hf-config", "--out", "{out}"],
         ["{bad}/hf-config/config.json"]),
        ("hf-weights-truncated", ["convert", "to-megatron", "--hf", "{bad}/hf-weights", "--out", "{out}"],
         ["{bad}/hf-weights/model.safetensors"]),
        ("tp-out-of-range", ["convert", "to-megatron", "--hf", "{root}/hf0", "--out", "{out}", "--tp", "0"], ["--tp=0"]),
        ("tp-not-a-number", ["convert", "to-megatron", "--hf", "{root}/hf0", "--out", "{out}", "--tp", "x"],
         ["--tp", "'x'"]),
    ],
    "quant": [
        ("checkpoint-missing", ["quant", "{bad}/nope", "--data", H], ["{bad}/nope"]),
        ("checkpoint-is-a-file", ["quant", "{bad}/file.txt", "--data", H], ["{bad}/file.txt"]),
        ("config-truncated", ["quant", "{bad}/hf-config", "--data", H], ["{bad}/hf-config/config.json"]),
        ("weights-truncated", ["quant", "{bad}/hf-weights", "--data", H, "--seq-length", "16",
                               "--num-sequences", "2", "--calib-sequences", "1"], ["{bad}/hf-weights"]),
        ("tracker-corrupted", ["quant", "{bad}/ck-tracker", "--data", H], ["{bad}/ck-tracker"]),
        ("data-missing", ["quant", "{root}/hf", "--data", "{bad}/nope"], ["{bad}/nope"]),
        ("data-is-a-folder", ["quant", "{root}/hf", "--data", "{root}/data"], ["--data {root}/data", "folder"]),
        ("data-idx-missing", ["quant", "{root}/hf", "--data", "{bad}/data-onlybin/heldout_text_document"],
         ["{bad}/data-onlybin/heldout_text_document.idx"]),
        ("data-idx-truncated", ["quant", "{root}/hf", "--data", "{bad}/data-idx/heldout_text_document"],
         ["{bad}/data-idx/heldout_text_document", "truncated"]),
        ("data-idx-corrupted", ["quant", "{root}/hf", "--data", "{bad}/data-magic/heldout_text_document"],
         ["{bad}/data-magic/heldout_text_document"]),
        ("data-of-another-vocab", ["quant", "{root}/hf0", "--data", H, "--seq-length", "16", "--num-sequences", "2",
                                   "--calib-sequences", "1"], ["--data " + H, "vocab_size=64"]),
        ("seq-longer-than-the-model", ["quant", "{root}/hf", "--data", H, "--seq-length", "64"],
         ["--seq-length=64", "max_position_embeddings=32"]),
        ("seq-out-of-range", ["quant", "{root}/hf", "--data", H, "--seq-length", "1"], ["--seq-length=1"]),
        ("too-few-tokens", ["quant", "{root}/hf", "--data", H, "--num-sequences", "500", "--calib-sequences", "1"],
         ["--data " + H, "--num-sequences"]),
        ("sequences-zero", ["quant", "{root}/hf", "--data", H, "--num-sequences", "0"], ["--num-sequences=0"]),
        ("batch-zero", ["quant", "{root}/hf", "--data", H, "--batch-size", "0"], ["--batch-size=0"]),
        ("alpha-out-of-range", ["quant", "{root}/hf", "--data", H, "--alpha", "1.5"], ["--alpha=1.5"]),
        ("alpha-not-a-number", ["quant", "{root}/hf", "--data", H, "--alpha", "half"], ["--alpha", "'half'"]),
        ("unknown-scheme", ["quant", "{root}/hf", "--data", H, "--settings", "fp3"], ["'fp3'"]),
        ("json-is-a-folder", ["quant", "{root}/hf", "--data", H, "--json", "{bad}"], ["--json {bad}"]),
        ("json-under-a-file", ["quant", "{root}/hf", "--data", H, "--json", "{bad}/file.txt/r.json"],
         ["{bad}/file.txt"]),
        ("json-over-the-data", ["quant", "{root}/hf", "--data", H, "--json", H + ".idx"], ["--json " + H + ".idx"]),
        ("json-inside-the-checkpoint", ["quant", "{root}/hf", "--data", H, "--json", "{root}/hf/quant.json"],
         ["--json {root}/hf/quant.json"]),
    ],
    "outliers": [
        ("checkpoint-missing", ["outliers", "{bad}/nope", "--data", H, "--out", "{out}"], ["{bad}/nope"]),
        ("checkpoint-is-a-file", ["outliers", "{bad}/file.txt", "--data", H, "--out", "{out}"], ["{bad}/file.txt"]),
        ("config-truncated", ["outliers", "{bad}/hf-config", "--data", H, "--out", "{out}"],
         ["{bad}/hf-config/config.json"]),
        ("data-missing", ["outliers", "{root}/hf", "--data", "{bad}/nope", "--out", "{out}"], ["{bad}/nope"]),
        ("data-is-a-folder", ["outliers", "{root}/hf", "--data", "{root}/data", "--out", "{out}"], ["{root}/data"]),
        ("data-idx-truncated", ["outliers", "{root}/hf", "--data", "{bad}/data-idx/heldout_text_document", "--out",
                                "{out}"], ["{bad}/data-idx/heldout_text_document"]),
        ("data-of-another-vocab", ["outliers", "{root}/hf0", "--data", H, "--out", "{out}", "--seq-length", "16",
                                   "--num-sequences", "2"], ["vocab_size=64"]),
        ("seq-longer-than-the-model", ["outliers", "{root}/hf", "--data", H, "--out", "{out}", "--seq-length", "33"],
         ["--seq-length=33", "max_position_embeddings=32"]),
        ("top-k-zero", ["outliers", "{root}/hf", "--data", H, "--out", "{out}", "--top-k", "0"], ["--top-k=0"]),
        ("sequences-negative", ["outliers", "{root}/hf", "--data", H, "--out", "{out}", "--num-sequences", "-1"],
         ["--num-sequences=-1"]),
        ("top-k-not-a-number", ["outliers", "{root}/hf", "--data", H, "--out", "{out}", "--top-k", "many"],
         ["--top-k", "'many'"]),
        ("out-is-a-file", ["outliers", "{root}/hf", "--data", H, "--out", "{bad}/file.txt"], ["{bad}/file.txt"]),
        ("out-is-the-checkpoint", ["outliers", "{root}/hf", "--data", H, "--out", "{root}/hf"], ["--out {root}/hf"]),
        ("out-inside-the-data", ["outliers", "{root}/hf", "--data", H, "--out", "{root}/data/reports"],
         ["--out {root}/data/reports"]),
    ],
    "experiment": [
        ("unknown-variant", ["experiment", "--out", "{out}", "--variants", "baseline,nope"], ["'nope'"]),
        ("no-variant", ["experiment", "--out", "{out}", "--variants", ","], ["--variants"]),
        ("unknown-size", ["experiment", "--out", "{out}", "--size", "huge"], ["--size", "'huge'"]),
        ("seed-not-a-number", ["experiment", "--out", "{out}", "--seed", "x"], ["--seed", "'x'"]),
        ("no-seeds", ["experiment", "--out", "{out}", "--size", "quick", "--seeds", "0"], ["--seeds=0"]),
        ("out-is-a-file", ["experiment", "--out", "{bad}/file.txt", "--size", "quick"], ["{bad}/file.txt"]),
        ("out-under-a-file", ["experiment", "--out", "{bad}/file.txt/run", "--size", "quick"], ["{bad}/file.txt"]),
    ],
    "preflight": [
        ("no-recipe", ["preflight"], ["--recipe-json"]),
        ("recipe-json-missing", ["preflight", "--recipe-json", "{bad}/nope.json"], ["{bad}/nope.json"]),
        ("recipe-json-is-a-folder", ["preflight", "--recipe-json", "{bad}"], ["{bad}", "folder"]),
        ("recipe-json-truncated", ["preflight", "--recipe-json", "{bad}/recipe-truncated.json"],
         ["{bad}/recipe-truncated.json"]),
        ("recipe-json-wrong-type", ["preflight", "--recipe-json", "{bad}/recipe-list.json"],
         ["{bad}/recipe-list.json"]),
        ("recipe-unknown", ["preflight", "--recipe", "nope", "--nodes", "1"], ["'nope'"]),
        ("nodes-zero", ["preflight", "--recipe", "tiny", "--nodes", "0"], ["--nodes=0"]),
        ("timeout-not-a-number", ["preflight", "--recipe", "tiny", "--nodes", "1", "--timeout-s", "soon"],
         ["--timeout-s", "'soon'"]),
    ],
    "launch": [  # the launcher's own inputs are tests/test_launch_*.py's
        ("recipe-missing", ["launch", "nope", "--nodes", "1"], ["'nope'"]),
        ("override-unknown", ["launch", "tiny", "--nodes", "1", "train.lr=1e-3"], ["'train.lr'"]),
    ],
}


def _small_train_cases():
    from helpers.small_runs import trainer_argv

    def argv(root, out, **changes):
        a = trainer_argv(Path(root) / "data", out, iters=1)
        for flag, value in changes.items():
            flag = "--" + flag.replace("_", "-")
            if flag in a:
                a[a.index(flag) + 1] = value
            else:
                a += [flag, value]
        return ["small-train"] + a

    return [
        ("data-missing", lambda r, b, o: argv(r, o, data_path=f"{b}/nope"), ["--data-path {bad}/nope"]),
        ("data-is-a-folder", lambda r, b, o: argv(r, o, data_path=f"{r}/data"), ["--data-path {root}/data"]),
        ("data-idx-truncated", lambda r, b, o: argv(r, o, data_path=f"{b}/data-idx/heldout_text_document"),
         ["{bad}/data-idx/heldout_text_document"]),
        ("valid-data-missing", lambda r, b, o: argv(r, o, valid_data_path=f"{b}/nope"), ["--valid-data-path"]),
        ("tokenizer-is-a-file", lambda r, b, o: argv(r, o, tokenizer_model=f"{b}/file.txt"), ["{bad}/file.txt"]),
        ("tokenizer-corrupted", lambda r, b, o: argv(r, o, tokenizer_model=f"{b}/tok-corrupt"), ["{bad}/tok-corrupt"]),
        ("save-is-a-file", lambda r, b, o: argv(r, o, save=f"{b}/file.txt"), ["--save {bad}/file.txt"]),
        ("load-is-a-file", lambda r, b, o: argv(r, o, load=f"{b}/file.txt"), ["--load {bad}/file.txt"]),
        ("load-tracker-corrupted", lambda r, b, o: argv(r, o, load=f"{b}/ck-tracker"), ["{bad}/ck-tracker", "'abc'"]),
        ("iters-negative", lambda r, b, o: argv(r, o, train_iters="-1"), ["--train-iters=-1"]),
        ("seq-zero", lambda r, b, o: argv(r, o, seq_length="0"), ["--seq-length=0"]),
        ("batch-not-a-number", lambda r, b, o: argv(r, o, micro_batch_size="two"), ["--micro-batch-size", "'two'"]),
        ("required-flag-missing", lambda r, b, o: ["small-train", "--num-layers", "2"], ["--hidden-size"]),
    ]


PARAMS = [pytest.param(cmd, *case, id=f"{cmd}-{case[0]}") for cmd, cases in CASES.items() for case in cases]
PARAMS += [pytest.param("small-train", *case, id=f"small-train-{case[0]}") for case in _small_train_cases()]


@pytest.mark.parametrize("command, name, argv, fragments", PARAMS)
def test_bad_input_is_one_line_exit_2_inputs_unchanged(fx, tmp_path, capsys, command, name, argv, fragments):
    sub = dict(root=fx, bad=fx / "bad", out=tmp_path / "out")
    argv = argv(fx, fx / "bad", tmp_path / "out") if callable(argv) else [a.format(**sub) for a in argv]
    before = _digest(fx)
    rc, err = _run(capsys, argv)
    line = _assert_one_line(rc, err, [f.format(**sub) for f in fragments])
    prog = "mgn small-train" if command == "small-train" else f"mgn {command}"
    assert line.startswith((prog, "small-train: error:")), line
    assert _digest(fx) == before, "an input changed"
    assert not (tmp_path / "out").exists(), "output written for a refused command"


def test_every_mgn_command_is_in_the_corpus():
    from megatron_gatednorm.cli import COMMANDS, PASSTHROUGH

    covered = set(CASES) | {"small-train", "train"}  # train: test_mgn_train_* below (subprocesses)
    assert covered >= set(COMMANDS) | set(PASSTHROUGH), sorted(set(COMMANDS) | set(PASSTHROUGH) - covered)


# -- evaluation defaults follow the model ---------------------------------------------------------


def test_default_seq_length_is_clipped_to_the_model_with_a_note(fx, tmp_path, capsys):
    """The model has 32 positions: the default 256 is clipped, with one note line; the windows
    and the results are of 32 tokens."""
    import json

    rc, err = _run(capsys, ["quant", fx / "hf", "--data", fx / "data" / "heldout_text_document", "--settings",
                            "int8", "--num-sequences", "2", "--calib-sequences", "0", "--json", tmp_path / "q.json"])
    assert rc == 0, err
    notes = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]  # transformers' bar
    assert notes == ["mgn quant: note: --seq-length defaults to 32, the model's max_position_embeddings (not 256)"]
    assert json.loads((tmp_path / "q.json").read_text())["seq_length"] == 32
    rc, err = _run(capsys, ["outliers", fx / "hf", "--data", fx / "data" / "heldout_text_document", "--out",
                            tmp_path / "o", "--num-sequences", "2"])
    assert rc == 0 and err.count("note:") == 1 and "Traceback" not in err, err
    assert json.loads((tmp_path / "o" / "outliers.json").read_text())["seq_length"] == 32


# -- mgn train (Megatron's parser; subprocesses) --------------------------------------------------


def _mgn_subprocess(*argv, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "megatron_gatednorm.cli", *map(str, argv)], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, **(env or {})), timeout=timeout)


def _has_megatron_training():
    import importlib.util

    try:
        return importlib.util.find_spec("megatron.training") is not None
    except ModuleNotFoundError:
        return False


def test_mgn_train_help_works_without_megatron_training():
    proc = _mgn_subprocess("train", "--help")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "--norm-variant" in proc.stdout
    if not _has_megatron_training():
        assert "megatron-core" in proc.stdout and "megatron.training" in proc.stdout, proc.stdout


def test_mgn_train_user_errors_are_one_line(tmp_path):
    """On a node without CUDA and MGN_DEVICE=cuda: one line naming the device problem (checked
    first). On CPU without megatron.training: one line saying what to install. Exit 2 each."""
    cases = [(dict(MGN_DEVICE="cuda", CUDA_VISIBLE_DEVICES=""), "MGN_DEVICE=cuda")]
    if not _has_megatron_training():
        cases.append((dict(MGN_DEVICE="cpu"), "megatron.training"))
    for env, named in cases:
        proc = _mgn_subprocess("train", "--num-layers", "2", env=env)
        err = [line for line in proc.stderr.splitlines() if "mgn train: error:" in line]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(err) == 1, proc.stderr[-3000:]
        assert named in err[0], err


# -- killed mid-write ---------------------------------------------------------------------------------


def _kill_at(argv, moment, out, timeout=120):
    """Start ``mgn ARGV``, SIGKILL it at ``moment`` (seconds after the start, or "tmp": once the
    temporary sibling of ``out`` appears); returns the exit code (or None if it ended first)."""
    proc = subprocess.Popen([sys.executable, "-m", "megatron_gatednorm.cli", *map(str, argv)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while proc.poll() is None and time.time() - t0 < timeout:
            if (moment == "tmp" and any(out.parent.glob(f".{out.name}.mgn-tmp-*"))) or (
                    moment != "tmp" and time.time() - t0 >= moment):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None
            time.sleep(0.005)
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _whole(out) -> bool:
    """``out`` appeared by the writer's final rename and is complete: an export's or checkpoint's
    manifest lists every file in it, unchanged; a data folder's data.json names splits whose
    .bin/.idx hold its document counts."""
    from megatron_gatednorm.checkpoint.manifest import MANIFEST, verify_manifest
    from megatron_gatednorm.data.build import read_manifest
    from megatron_gatednorm.data.windows import open_indexed_dataset

    if (out / MANIFEST).exists():
        files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MANIFEST]
        return verify_manifest(out, used=files)
    splits = read_manifest(out)["splits"].values()
    return all(len(open_indexed_dataset(s["prefix"])) == s["documents"] for s in splits)


WRITERS = {
    "data": lambda fx, out: ["data", "--out", out, "--input", fx / "train.jsonl", "--heldout", fx / "held.jsonl",
                             "--vocab-size", "300"],
    "convert-to-hf": lambda fx, out: ["convert", "to-hf", "--load", fx / "ck", "--out", out, "--no-progress"],
    "convert-to-megatron": lambda fx, out: ["convert", "to-megatron", "--hf", fx / "hf0", "--out", out],
    "outliers": lambda fx, out: ["outliers", fx / "hf", "--data", fx / "data" / "heldout_text_document", "--out", out,
                                 "--num-sequences", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", [3.0, "tmp"], ids=["after-3s", "mid-write"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_killed_mid_write_leaves_nothing_partial_and_the_next_run_works(fx, tmp_path, capsys, writer, moment):
    out = tmp_path / "out"
    argv = WRITERS[writer](fx, out)
    before = _digest(fx)
    rc = _kill_at(argv, moment, out)
    for _ in range(4 if moment == "tmp" else 0):  # a small write can finish between two polls: again
        if rc is None:
            break
        shutil.rmtree(out)
        rc = _kill_at(argv, moment, out)
    assert rc is None or moment != "tmp", "five runs ended before their temporary folder was seen"
    if rc is None:  # killed: nothing under the output name, or the whole result (the kill came after the rename)
        assert not out.exists() or (writer == "outliers" and not any(out.iterdir())) or _whole(out), sorted(out.rglob("*"))
    else:
        assert rc == 0
    assert _digest(fx) == before
    replace = {"data": "--replace", "convert-to-hf": "--overwrite", "convert-to-megatron": "--overwrite"}
    rc, err = _run(capsys, argv + ([replace[writer]] if writer in replace and out.exists() else []))
    assert rc == 0 and "Traceback" not in err, err
    assert not list(tmp_path.glob(".out.mgn-*")), list(tmp_path.iterdir())  # the killed run's leftovers are gone
