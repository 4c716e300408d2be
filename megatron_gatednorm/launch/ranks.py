"""Rank environment of a process started by ``srun`` (one task per GPU) for torch.distributed's
``env://`` rendezvous. torchrun sets RANK/WORLD_SIZE/LOCAL_RANK itself; srun-native tasks only
have SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID. MASTER_ADDR/MASTER_PORT come from the sbatch
script (first host of the allocation, port from the job id)."""

from __future__ import annotations

import os
from typing import Dict, MutableMapping, Optional


def torch_env_from_slurm(environ: Optional[MutableMapping[str, str]] = None, apply: bool = True) -> Dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from Slurm's task variables when they
    are not already set (by torchrun); returns what was (or would be) set."""
    env = os.environ if environ is None else environ
    if "RANK" in env or "SLURM_PROCID" not in env:
        return {}
    values = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": env.get("SLURM_NTASKS_PER_NODE", env.get("SLURM_NTASKS", "1")).split("(")[0],
    }
    if apply:
        env.update(values)
    return values
