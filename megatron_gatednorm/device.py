"""Which device a process trains on, checked before anything starts: never a silent CPU fallback.

A recipe states its device (``launch.device: cuda|cpu``, default ``cuda``); the sbatch script
exports it to every task as ``MGN_DEVICE``, which :func:`megatron_gatednorm.distributed.init_distributed`
(the small trainer, the test workers) and ``mgn train`` read. A process asked for ``cuda`` on a
node whose CUDA is broken (``torch.cuda.is_available()`` False, or fewer visible GPUs than local
ranks) stops with a ValueError naming the setting instead of running on CPU/gloo; CPU runs happen
only where ``cpu`` is asked for. The collective backend follows the device: NCCL for CUDA
tensors, gloo for CPU tensors (:data:`BACKENDS`), so a CPU process on a GPU machine never gets
NCCL.

Imports torch only inside the functions that query CUDA, so the launcher can use the names.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

DEVICES = ("cuda", "cpu")
DEVICE_ENV = "MGN_DEVICE"
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}


def parse_device(value, setting: str = "device") -> str:
    """``value`` as one of :data:`DEVICES`; ValueError naming ``setting`` and the choices."""
    if value not in DEVICES:
        raise ValueError(f"invalid {setting}={value!r}; valid: {', '.join(DEVICES)}")
    return value


def requested_device(device: Optional[str] = None, default: str = "auto") -> Tuple[str, str]:
    """``(device, setting)``: the explicit ``device``, else ``$MGN_DEVICE``, else ``default``
    (``auto``: cuda where CUDA is available, cpu elsewhere — for interactive use only; a recipe's
    job always has ``MGN_DEVICE``). ``setting`` names the knob for messages: ``device`` for the
    argument, else ``MGN_DEVICE`` (also when it is unset and the default applies)."""
    if device is not None:
        return parse_device(device), "device"
    env = os.environ.get(DEVICE_ENV, "").strip()
    if env:
        return parse_device(env, DEVICE_ENV), DEVICE_ENV
    if default == "auto":
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu"), DEVICE_ENV
    return parse_device(default, "default"), DEVICE_ENV


def _cuda_facts() -> str:
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"torch {torch.__version__}, {build}; CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)}"


def check_device(device: str, local_ranks: int = 1, setting: str = "device") -> None:
    """Raise ValueError unless ``device`` can serve ``local_ranks`` ranks on this node: for
    ``cuda``, CUDA must be available and show at least one GPU per local rank. ``cpu`` always
    passes."""
    if parse_device(device, setting) != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"{setting}=cuda but CUDA is not usable on this node: torch.cuda.is_available() is False "
            f"({_cuda_facts()}); valid: fix the node's GPU driver / visible devices, or set {setting}=cpu "
            "to run on CPU (gloo) on purpose")
    count = torch.cuda.device_count()
    if count < local_ranks:
        raise ValueError(
            f"{setting}=cuda needs one GPU per local rank: {local_ranks} local ranks but "
            f"torch.cuda.device_count() is {count} ({_cuda_facts()}); valid: give each node "
            f"{local_ranks} GPUs, or run {count} rank(s) per node")


def backend(device: str) -> str:
    """The torch.distributed backend for tensors on ``device``: nccl (cuda) or gloo (cpu)."""
    return BACKENDS[parse_device(device)]
