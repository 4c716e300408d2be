"""Make megatron-core run on a machine without CUDA (tests, CPU demos, the CPU trainer).

megatron-core assumes CUDA in a few places that have nothing to do with the math: RNG state
bookkeeping, ``torch.cuda.current_device()`` as an allocation device, ``device="cuda"``
scratch tensors in the schedules, CUDA streams/events in the MoE dispatcher, and
``torch.cuda.synchronize`` in checkpoint saving. :func:`apply_cpu_shim` redirects exactly
those to the CPU. It refuses to run when CUDA is available, so a GPU process never takes
this path; set ``MGN_CPU_SHIM=none`` to see the unshimmed failure.

What it patches (megatron-core 0.16.1 and 0.19.x):

* CUDA RNG state → the CPU generator (``torch.cuda.{get,set}_rng_state``,
  ``torch.cuda.manual_seed`` as a no-op, megatron's ``_{get,set}_cuda_rng_state``);
* ``torch.cuda.current_device()`` → ``"cpu"``; ``torch.cuda.synchronize`` → no-op;
  ``Tensor.cuda`` → identity; ``Tensor.record_stream`` → no-op; dummy streams/events;
* a process-wide ``TorchFunctionMode`` that rewrites a CUDA ``device=`` keyword to CPU (also
  entered in the backward pass of full activation recompute, where modes are otherwise off);
* MoE: split sizes become numpy arrays as they would on GPU; ``te_general_gemm = None``
  on 0.16.1 where it is otherwise undefined without Transformer Engine;
* Gated DeltaNet (0.16.1, only where ``fla`` is not importable): fla's Triton kernels
  (``chunk_gated_delta_rule``, ``l2norm``) are GPU-only, so they become megatron-core's own
  torch reference ``torch_chunk_gated_delta_rule`` (what ``deterministic_mode`` runs) and
  ``x / sqrt(sum(x²) + 1e-6)`` (fla's l2norm); the depthwise conv already falls back to torch.

:func:`cuda_calls_on_cpu` is the narrow, temporary form for tools that only save a checkpoint
(``mgn convert to-megatron``): ``torch.cuda.synchronize``/``current_device`` redirected for the
duration of a ``with`` block, then restored.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

_MARKER = "_megatron_gatednorm_cpu_shim"
ENV = "MGN_CPU_SHIM"


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaDeviceToCpu(TorchFunctionMode):
    """Rewrites ``device=<cuda>`` keyword arguments of torch calls to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = dict(kwargs, device="cpu")
        return func(*args, **kwargs)


class _DummyEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait(self, *args, **kwargs):
        pass

    def query(self):
        return True


class _DummyStream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def record_event(self, *args, **kwargs):
        return _DummyEvent()

    def __eq__(self, other):
        return isinstance(other, _DummyStream)

    __hash__ = object.__hash__


def _patch_megatron():
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, clone=False, **k: (
        torch.get_rng_state().clone() if clone else torch.get_rng_state()
    )
    mrandom._set_cuda_rng_state = lambda new_state, *a, **k: torch.set_rng_state(new_state)

    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    original = token_dispatcher.maybe_move_tensor_to_cpu

    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if torch.is_tensor(tensor) and not tensor.is_cuda and as_numpy:
            return tensor.numpy()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    _patch_recompute(mrandom.CheckpointFunction)
    _patch_gated_delta_net()


def _patch_recompute(checkpoint_function) -> None:
    """Full activation recompute reruns the forward inside autograd's backward, where torch
    function modes are not active: re-enter the CUDA-device rewrite there (megatron-core's
    causal mask is created with ``device="cuda"``)."""
    backward = checkpoint_function.backward

    def backward_on_cpu(ctx, *args):
        with _CudaDeviceToCpu():
            return backward(ctx, *args)

    checkpoint_function.backward = staticmethod(backward_on_cpu)


def _l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)


def _patch_gated_delta_net() -> None:
    try:
        from megatron.core.ssm import gated_delta_net as gdn
    except ImportError:
        return
    # 0.16.x layout only; newer releases keep the module's own fla requirement (clear ImportError)
    if getattr(gdn, "HAVE_FLA", True) or not hasattr(gdn, "torch_chunk_gated_delta_rule"):
        return
    gdn.l2norm = _l2norm
    gdn.chunk_gated_delta_rule = gdn.torch_chunk_gated_delta_rule
    gdn.HAVE_FLA = True


@contextlib.contextmanager
def cuda_calls_on_cpu() -> Iterator[None]:
    """``dist_checkpointing.save`` calls ``torch.cuda.synchronize()`` and
    ``torch.cuda.current_device()``; without CUDA make them a no-op and ``"cpu"`` inside the
    block only. A no-op where CUDA exists."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.cuda.synchronize, torch.cuda.current_device
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"
    try:
        yield
    finally:
        torch.cuda.synchronize, torch.cuda.current_device = original


def apply_cpu_shim() -> bool:
    """Apply the CPU shim once per process; returns True if it is (now) active.

    Raises:
        RuntimeError: if CUDA is available (GPU processes must never be shimmed).
    """
    if getattr(torch, _MARKER, False):
        return True
    if torch.cuda.is_available():
        raise RuntimeError(
            "megatron_gatednorm.cpu_shim is for processes without CUDA; this one has a GPU"
        )
    if os.environ.get(ENV, "").lower() == "none":
        return False

    cuda = torch.cuda
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state
    cuda.manual_seed = lambda seed: None
    cuda.manual_seed_all = lambda seed: None
    cuda.current_device = lambda: "cpu"
    cuda.synchronize = lambda device=None: None
    cuda.device_count = lambda: 0
    cuda.Stream = _DummyStream
    cuda.Event = _DummyEvent
    cuda.current_stream = lambda device=None: _DummyStream()
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.record_stream = lambda self, stream: None
    _CudaDeviceToCpu().__enter__()  # process-global on purpose: this process has no GPU

    _patch_megatron()
    setattr(torch, _MARKER, True)
    return True
