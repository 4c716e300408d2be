"""Shared by the workers that run inside .venv-mcore019 (megatron-core 0.19.2 with its real
``megatron.training``): Megatron-LM's own argument parsing and a 1-process gloo group (Python
3.11's missing ``typing.override`` is provided by the venv itself, .ci/mcore019_venv.sh; the
CPU-only Megatron switches are the recipe overlay ``cpu``); and, for the tests that start them
from the main environment, the venv's interpreter (:func:`venv_python`)."""

import contextlib
import io
import os
import sys

from helpers.processes import REPO, free_port


def venv_python():
    """.venv-mcore019's interpreter (``$MGN_MCORE019_VENV``), for tests in the main environment that
    run workers there: skips where it is missing, fails under CI (``.ci/mcore019_venv.sh`` makes it)."""
    from pathlib import Path

    import pytest

    from helpers.slurm_cluster import in_ci

    python = Path(os.environ.get("MGN_MCORE019_VENV", REPO / ".venv-mcore019")) / "bin" / "python"
    if not python.exists():
        if in_ci():
            pytest.fail(f"{python} is missing under CI: run .ci/mcore019_venv.sh first")
        pytest.skip(f"{python} is missing: .ci/mcore019_venv.sh creates it")
    return python


def parse(argv, world_size, validate, extra_args_provider=None):
    """Megatron-LM's ``parse_args`` (+ ``validate_args``) on ``argv``; argparse exits become errors."""
    from megatron.training.arguments import parse_args, validate_args

    from megatron_gatednorm.training.flags import add_train_args

    sys.argv = ["pretrain_gpt.py"] + argv
    os.environ.update(RANK="0", WORLD_SIZE=str(world_size), LOCAL_RANK="0")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = parse_args(extra_args_provider=extra_args_provider or add_train_args)
            if validate:
                validate_args(args, {"tokenizer_type": "GPT2BPETokenizer"})
        except SystemExit as e:
            raise RuntimeError(f"argparse exit {e.code}: {err.getvalue().strip()[-600:]}") from None
    return args


def init_single_process():
    """A 1-process gloo group on a free local port, plus Megatron's parallel state (CPU shim)."""
    from megatron_gatednorm.distributed import init_distributed

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    init_distributed(device="cpu")
