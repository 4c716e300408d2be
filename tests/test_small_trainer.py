"""The small trainer: real corpus → .bin/.idx → training; determinism, resume, layouts."""

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("tokenizers")

from helpers.processes import free_port
from helpers.small_runs import trainer_argv


def run_trainer(argv, nproc=1, env=None):
    cmd = [sys.executable, "-m", "megatron_gatednorm.training.small_trainer", *argv]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
               "-m", "megatron_gatednorm.training.small_trainer", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})), timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]


def losses(records):
    return [r["loss"] for r in records if r["event"] == "train"]


def test_data_pipeline(tiny_data):
    manifest = json.loads((tiny_data / "data.json").read_text())
    assert manifest["vocab_size"] == 512 and set(manifest["splits"]) == {"train", "heldout"}
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_gatednorm.data.tokenizer import TextTokenizer

    ds = IndexedDataset(str(tiny_data / "train_text_document"))
    tok = TextTokenizer(tiny_data / "tokenizer")
    first = ds[0]
    assert first[-1] == tok.eod and len(ds) == manifest["splits"]["train"]["documents"]
    text = (tiny_data / "corpus" / "train.jsonl").read_text().splitlines()[0]
    assert tok.decode(list(first[:-1])) == json.loads(text)["text"]  # byte-level BPE round trip


@pytest.mark.slow
def test_training_is_deterministic_and_resumes_exactly(tiny_data, tmp_path):
    full = run_trainer(trainer_argv(tiny_data, tmp_path / "full"))
    assert len(losses(full)) == 6
    assert losses(full)[-1] < losses(full)[0]
    peaks = [r for r in full if "peak_activation_per_layer" in r]
    assert [r["iteration"] for r in peaks] == [3, 6]
    assert set(peaks[0]["peak_activation_per_layer"]) == {"embedding", "layer_001", "layer_002"}

    first = run_trainer(trainer_argv(tiny_data, tmp_path / "split", iters=3))
    second = run_trainer(trainer_argv(tiny_data, tmp_path / "split", extra=["--load", str(tmp_path / "split")]))
    assert any(r["event"] == "resume" and r["iteration"] == 3 for r in second)
    # a second run of the same seed reproduces the first three iterations bit for bit, and the
    # resumed run the last three: deterministic and exact on resume in one comparison
    assert losses(first) + losses(second) == losses(full)
    assert (tmp_path / "split" / "latest_checkpointed_iteration.txt").read_text() == "6"


@pytest.mark.slow
@pytest.mark.distributed
def test_data_and_tensor_parallel_runs_match_single_rank(tiny_data, tmp_path):
    single = losses(run_trainer(trainer_argv(tiny_data, tmp_path / "one", iters=3)))
    dp2 = losses(run_trainer(trainer_argv(tiny_data, tmp_path / "dp2", iters=3), nproc=2))
    tp2 = losses(run_trainer(trainer_argv(tiny_data, tmp_path / "tp2", iters=3,
                                          extra=["--tensor-model-parallel-size", "2", "--sequence-parallel"]), nproc=2))
    for other in (dp2, tp2):
        assert len(other) == 3
        assert max(abs(a - b) for a, b in zip(single, other)) < 1e-4, (single, other)


@pytest.mark.slow
def test_bad_batch_configuration(tiny_data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megatron_gatednorm.training.small_trainer",
                           *trainer_argv(tiny_data, tmp_path, extra=["--global-batch-size", "3"])],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid --global-batch-size=3" in proc.stderr


@pytest.mark.slow
def test_diverging_run_stops_before_a_non_finite_step(tiny_data, tmp_path):
    """A learning rate that overflows the weights: the run stops with exit 3 naming the iteration,
    and the last committed checkpoint holds only finite weights. Without the check (Megatron's
    ``--no-check-for-nan-in-loss-and-grad``) the same run trains on through non-finite losses."""
    import math

    import torch

    from megatron_gatednorm.checkpoint import iteration_dir, read_checkpoint

    diverge = ["--lr", "1e30", "--lr-warmup-iters", "0", "--clip-grad", "0", "--save-interval", "1",
               "--lr-decay-style", "constant"]
    cmd = [sys.executable, "-m", "megatron_gatednorm.training.small_trainer"]
    proc = subprocess.run(cmd + trainer_argv(tiny_data, tmp_path / "run", iters=6, extra=diverge),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("small-train: error: non-finite values at iteration ") and "Traceback" not in proc.stderr
    failed = int(message.split("iteration ")[1].split(":")[0])
    _, committed = iteration_dir(tmp_path / "run")
    assert committed == failed - 1
    _, _, tensors = read_checkpoint(tmp_path / "run")
    assert all(torch.isfinite(t).all() for t in tensors.values())

    unchecked = run_trainer(trainer_argv(tiny_data, tmp_path / "unchecked", iters=failed,
                                         extra=diverge + ["--no-check-for-nan-in-loss-and-grad"]))
    step = [r for r in unchecked if r["event"] == "train"][failed - 1]
    assert not (math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"])), step


@pytest.mark.slow
def test_bf16_is_a_bf16_model_with_fp32_main_parameters_and_resumes_exactly(tiny_data, tmp_path):
    """--bf16: the loss moves by bf16 rounding, not more; AdamW's moments and the main parameters
    are fp32; a run split in two and resumed equals the straight run (the main parameters were
    restored, not re-read from the rounded bf16 model)."""
    import torch

    from megatron_gatednorm.training.small_trainer import train

    fp32 = train(trainer_argv(tiny_data, tmp_path / "fp32", iters=3))["heldout_loss"]
    straight = train(trainer_argv(tiny_data, tmp_path / "bf16", iters=3, extra=["--bf16"]))
    assert math.isfinite(straight["heldout_loss"]) and straight["heldout_loss"] != fp32
    assert abs(straight["heldout_loss"] - fp32) < 0.05, (fp32, straight["heldout_loss"])
    state = torch.load(next((tmp_path / "bf16").glob("iter_*/small_trainer/rank_*.pt")), weights_only=False)
    moments = [t for s in state["optimizer"]["state"].values() for k, t in s.items() if k != "step"]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    assert state["main_params"] and all(t.dtype == torch.float32 for t in state["main_params"])
    assert any(t.ne(t.bfloat16().float()).any() for t in state["main_params"])  # not just the bf16 model

    split = tmp_path / "split"
    train(trainer_argv(tiny_data, split, iters=2, extra=["--bf16"]))
    resumed = train(trainer_argv(tiny_data, split, iters=3, extra=["--bf16", "--load", str(split)]))
    assert (resumed["final_loss"], resumed["heldout_loss"]) == (straight["final_loss"], straight["heldout_loss"])
    with pytest.raises(ValueError, match="trained with --bf16; resume it the same way"):
        train(trainer_argv(tiny_data, tmp_path / "other", iters=4, extra=["--load", str(split)]))
