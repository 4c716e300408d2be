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
* Gated DeltaNet (only where ``fla`` is not importable): fla's Triton kernels
  (``chunk_gated_delta_rule``, ``l2norm``) are GPU-only, so they become megatron-core's own
  torch reference ``torch_chunk_gated_delta_rule`` (what ``deterministic_mode`` runs) and
  ``x / sqrt(sum(x²) + 1e-6)`` (fla's l2norm). 0.16.1 (module ``ssm/gated_delta_net.py``)
  already falls back to torch for the depthwise conv; 0.19.x (package ``ssm/gated_delta_net/``,
  ``common.py`` + ``gdn.py``) also imports fla's ``causal_conv1d``, which becomes the same
  depthwise ``F.conv1d`` + SiLU that its ``deterministic_mode`` runs.

:func:`apply_pretrain_cpu_shim` adds what ``megatron.training.pretrain`` (0.19) needs (``mgn train``
on CPU): ``initialize_megatron(allow_no_cuda=True)``, one visible "device" while Megatron sets up
its model-parallel groups and RNG tracker, CUDA type names for the optimizer's dtype dispatch.

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
_PRETRAIN_MARKER = "_megatron_gatednorm_pretrain_cpu_shim"
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


def _causal_conv1d(x, weight, bias=None, activation=None, initial_state=None,
                   output_final_state=False, cu_seqlens=None):
    """fla's ``causal_conv1d`` (``x``: [b, s, d], ``weight``: [d, w]) as a depthwise torch conv,
    the computation megatron-core 0.19's ``GatedDeltaNet`` runs itself in ``deterministic_mode``
    (``F.conv1d`` + the activation); only what that call site uses (no state, no packing)."""
    if initial_state is not None or output_final_state or cu_seqlens is not None:
        raise NotImplementedError(
            "megatron_gatednorm.cpu_shim's causal_conv1d has no initial/final state or cu_seqlens "
            "(packed sequences): install fla on a GPU for those"
        )
    width = weight.shape[-1]
    y = torch.nn.functional.conv1d(
        x.transpose(1, 2), weight.unsqueeze(1), bias, padding=width - 1, groups=weight.shape[0]
    )[..., : x.shape[1]]
    if activation in ("silu", "swish"):
        y = torch.nn.functional.silu(y)
    elif activation is not None:
        raise NotImplementedError(f"causal_conv1d activation={activation!r}")
    return y.transpose(1, 2), None


def _patch_gated_delta_net() -> None:
    """fla's GPU kernels → megatron-core's torch reference, only where fla is not importable.

    0.16.x: one module ``megatron.core.ssm.gated_delta_net`` (its conv already falls back to
    torch). 0.19.x: a package whose ``common`` module imports fla (``HAVE_FLA``, ``l2norm``,
    ``causal_conv1d``, ``chunk_gated_delta_rule``) and whose ``gdn`` module binds
    ``causal_conv1d`` / ``chunk_gated_delta_rule`` by name at import: both are patched.
    """
    try:
        from megatron.core.ssm import gated_delta_net as gdn
    except ImportError:
        return
    if getattr(gdn, "HAVE_FLA", True) or not hasattr(gdn, "torch_chunk_gated_delta_rule"):
        return
    modules = [gdn]
    if hasattr(gdn, "__path__"):  # 0.19.x package layout
        import importlib

        modules = [gdn] + [
            importlib.import_module(f"{gdn.__name__}.{name}") for name in ("common", "gdn")
        ]
    for module in modules:
        # set even where absent: without fla, 0.16's module never bound these names it calls
        module.l2norm = _l2norm
        module.chunk_gated_delta_rule = gdn.torch_chunk_gated_delta_rule
        if hasattr(module, "causal_conv1d"):
            module.causal_conv1d = _causal_conv1d
        if hasattr(module, "HAVE_FLA"):
            module.HAVE_FLA = True


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


@contextlib.contextmanager
def _one_visible_device() -> Iterator[None]:
    """``torch.cuda.device_count()`` reads 1 and ``set_device`` does nothing inside the block."""
    cuda = torch.cuda
    original = cuda.device_count, cuda.set_device
    cuda.device_count, cuda.set_device = (lambda: 1), (lambda device: None)
    try:
        yield
    finally:
        cuda.device_count, cuda.set_device = original


@contextlib.contextmanager
def _cuda_type_names() -> Iterator[None]:
    """``Tensor.type()`` (no argument: the type's name) reads ``torch.cuda.<T>Tensor`` for a CPU
    tensor inside the block; ``Tensor.type(dtype)`` conversions are untouched."""
    original = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = original(self)  # (re-enters here once through the torch-function mode)
            return name if self.is_cuda or name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_
    try:
        yield
    finally:
        torch.Tensor.type = original


def _with(context, fn):
    def wrapper(*args, **kwargs):
        with context():
            return fn(*args, **kwargs)

    return wrapper


def apply_pretrain_cpu_shim() -> bool:
    """:func:`apply_cpu_shim` plus what ``megatron.training.pretrain`` (0.19) needs on a CPU
    process; only process-setup and bookkeeping calls, never the training math."""
    if not apply_cpu_shim():
        return False
    if getattr(torch, _PRETRAIN_MARKER, False):
        return True
    from megatron.training import arguments, initialize, training

    # arguments.py:validate_args reads the CUDA architecture (get_device_properties) when TP/CP > 1,
    # only to choose CUDA stream settings: no CUDA is architecture 0, and then it asserts
    # CUDA_DEVICE_MAX_CONNECTIONS=1 (as before Blackwell), meaningless without CUDA
    arguments.get_device_arch_version = lambda: 0
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    # training.py:pretrain calls initialize_megatron(), which asserts torch.cuda.is_available()
    # unless allow_no_cuda (Megatron's own switch for processes without CUDA)
    original_initialize = initialize.initialize_megatron

    def initialize_megatron(*args, **kwargs):
        return original_initialize(*args, allow_no_cuda=True, **kwargs)

    training.initialize_megatron = initialize_megatron
    # initialize.py:_initialize_distributed and _set_random_seed skip
    # mpu.initialize_model_parallel and model_parallel_cuda_manual_seed when device_count() == 0
    initialize._initialize_distributed = _with(_one_visible_device, initialize._initialize_distributed)
    initialize._set_random_seed = _with(_one_visible_device, initialize._set_random_seed)

    # The optimizer picks its fp16/bf16 vs fp32 path by CUDA type names (param.type() in
    # ['torch.cuda.BFloat16Tensor', ...]): optimizer.py:Float16OptimizerWithFloat16Params.__init__,
    # distrib_optimizer.py:DistributedOptimizer.__init__ (+ _build_model_and_main_param_groups),
    # clip_grads.py:clip_grad_by_total_norm_fp32 (assert grad.type() == 'torch.cuda.FloatTensor')
    from megatron.core.optimizer import distrib_optimizer, optimizer

    for cls in (optimizer.Float16OptimizerWithFloat16Params, distrib_optimizer.DistributedOptimizer):
        cls.__init__ = _with(_cuda_type_names, cls.__init__)
    optimizer.clip_grad_by_total_norm_fp32 = _with(_cuda_type_names, optimizer.clip_grad_by_total_norm_fp32)
    setattr(torch, _PRETRAIN_MARKER, True)
    return True
