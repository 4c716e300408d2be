"""A multi-rank load checks the checkpoint's manifest once, on rank 0, and every rank stops with
the same error: two real gloo processes (torch.multiprocessing.spawn), no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_gatednorm.checkpoint import read
from megatron_gatednorm.checkpoint.errors import CheckpointError
from megatron_gatednorm.checkpoint.manifest import write_manifest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # spawns two processes that import torch


def _rank(rank: int, store: str, folders: list, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    verify = read.verify_iteration
    records = []
    for folder in folders:
        hashed = []
        read.verify_iteration = lambda path: (hashed.append(rank), verify(path))[1]
        try:
            read._verify_on_rank0(Path(folder), dist)
            outcome = "ok"
        except CheckpointError as e:
            outcome = str(e)
        records.append({"verified_here": bool(hashed), "outcome": outcome})
    Path(out, f"{rank}.json").write_text(json.dumps(records))
    dist.destroy_process_group()


def _folder(path, shard: bytes):
    path.mkdir()
    (path / "__0_0.distcp").write_bytes(b"x" * 1000)
    (path / ".metadata").write_bytes(b"meta")
    write_manifest(path, "megatron-checkpoint")
    (path / "__0_0.distcp").write_bytes(shard)  # after the manifest: changed unless it is the same
    return path


def test_rank0_verifies_and_every_rank_gets_its_verdict(tmp_path):
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    good = _folder(tmp_path / "good" / "iter_0000001", b"x" * 1000)
    bad = _folder(tmp_path / "bad" / "iter_0000001", b"y" * 1000)  # same size, other bytes
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_rank, args=(str(tmp_path / "store"), [str(good), str(bad)], str(out)), nprocs=2)
    ranks = [json.loads((out / f"{r}.json").read_text()) for r in (0, 1)]
    good, bad = [[ranks[r][i] for r in (0, 1)] for i in (0, 1)]
    assert [r["verified_here"] for r in good] == [True, False]
    assert [r["outcome"] for r in good] == ["ok", "ok"]
    assert [r["verified_here"] for r in bad] == [True, False]
    assert bad[0]["outcome"] == bad[1]["outcome"] and "__0_0.distcp" in bad[1]["outcome"]
    assert "changed since they were written" in bad[1]["outcome"]
