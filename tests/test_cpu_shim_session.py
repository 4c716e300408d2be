"""The CPU shim is a property of the process, entered once at session start (tests/conftest.py),
not a side effect of whichever test first builds a Megatron model."""

import pytest
import torch

from megatron_gatednorm import cpu_shim


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shim exists only for processes without CUDA")
def test_shim_active_from_session_start():
    pytest.importorskip("megatron.core")
    assert getattr(torch, cpu_shim._MARKER, False), "tests/conftest.py did not enter the CPU shim"
    assert torch.cuda.current_device() == "cpu"
    assert cpu_shim.apply_cpu_shim() is True  # idempotent


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_shim_refuses_a_gpu_process():
    with pytest.raises(RuntimeError, match="this one has a GPU"):
        cpu_shim.apply_cpu_shim()
