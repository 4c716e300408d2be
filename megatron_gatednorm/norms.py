"""Residual-stream normalization modules with Megatron's norm-builder constructor.

Every class is built as ``Cls(config=TransformerConfig, hidden_size=int, eps=float)`` — the
call ``TransformerLayer``/``TransformerBlock`` make for ``input_layernorm``,
``pre_mlp_layernorm`` and ``final_layernorm`` — plus an optional ``norm_config``
(:class:`~megatron_gatednorm.norm_config.NormConfig`, passed through ``ModuleSpec.params``).
``config`` is read duck-typed, so this module does not import Megatron.

Parameters (held directly on the module, names shared with the Hugging Face export):

==============  ===========  =====================================================
``weight``      ``[d]``      RMSNorm/DyT gain γ (stored as γ-1 with zero-centred gamma)
``pre_scale``   ``[d]``      PreAffine λ1, applied before the RMS statistic
``gate_down``   ``[r, d]``   gate down-projection W_down
``gate_up``     ``[d|1, r]`` gate up-projection W_up (``1`` row when tensor-wise)
``alpha``       ``[1]``      DyT input scale α
``bias``        ``[d]``      DyT shift β
==============  ===========  =====================================================

Megatron contract: every parameter carries ``sequence_parallel = config.sequence_parallel``
so ``finalize_model_grads`` sums its gradient over the tensor-parallel group when each
rank only saw a sequence shard; none is tensor-parallel and none sets ``allreduce`` (norms
are dense parameters, reduced over data/context/expert-data parallel ranks like any other).
Random initialisation uses ``config.init_method`` on the default generator, which Megatron
seeds identically on all tensor-parallel ranks, so replicas start bit-identical.

Implementation path: each module picks the fused Triton kernels or the eager reference via
:func:`megatron_gatednorm.ops.dispatch.choose_impl` (``MGN_NORM_IMPL=auto|eager|fused``) once per
(request, input device/dtype/width), records it in ``module.impl_decision`` and logs each distinct (class, width, decision) once,
e.g. ``fused: cuda input, triton <version>`` or ``eager: gate_activation=tanh not fused``.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch

from megatron_gatednorm.norm_config import DEFAULTS, VARIANTS, NormConfig, choice_error
from megatron_gatednorm.ops import dispatch, reference
from megatron_gatednorm.ops._triton_utils import interpreting, kernel_module

logger = logging.getLogger(__name__)
_LOGGED_DECISIONS = set()


def _log_once(key, message: str) -> None:
    if key in _LOGGED_DECISIONS:
        return
    _LOGGED_DECISIONS.add(key)
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        logger.info(message)


def _param_device(config):
    if getattr(config, "use_cpu_initialization", False):
        return torch.device("cpu")
    if getattr(config, "init_model_with_meta_device", False):
        return torch.device("meta")
    return torch.cuda.current_device()


class _ResidualNorm(torch.nn.Module):
    """Shared construction and forward for all variants; subclasses only set the flags."""

    variant = "rmsnorm"
    returns_residual = False
    """megatron-core >= 0.17's norm-builder protocol lets a norm return ``(output, residual)``
    (Transformer Engine's fused residual RMSNorm); these return the output only, and the layer
    keeps its own residual. Settings that would need the pair are refused
    (:func:`megatron_gatednorm.norm_flags.check_fused_norm_flags`)."""
    _pre_affine = False
    _gated = False
    _dyt = False

    def __init__(
        self,
        config,
        hidden_size: int,
        eps: float = 1e-5,
        norm_config: Optional[NormConfig] = None,
        **unused_megatron_kwargs,  # persist_layer_norm, zero_centered_gamma, normalization, ...
    ):
        super().__init__()
        nc = norm_config if norm_config is not None else DEFAULTS
        if self._gated:
            nc.check_hidden_size(hidden_size)
        self.hidden_size = hidden_size
        self.eps = eps
        self.zero_centered_gamma = bool(getattr(config, "layernorm_zero_centered_gamma", False))
        self.gate_activation = nc.gate_activation
        self.granularity = nc.granularity
        self._sequence_parallel = bool(getattr(config, "sequence_parallel", False))
        self.impl_decision: Optional[dispatch.ImplDecision] = None
        self._decisions: Dict[tuple, dispatch.ImplDecision] = {}
        self._factory = dict(device=_param_device(config), dtype=config.params_dtype)
        init_random = getattr(config, "perform_initialization", True)
        init_method = config.init_method

        self.weight = self._param((hidden_size,), 0.0 if self.zero_centered_gamma else 1.0)
        if self._pre_affine:
            self.pre_scale = self._param((hidden_size,), nc.preaffine_init)
        if self._dyt:
            self.alpha = self._param((1,), nc.dyt_alpha_init)
            self.bias = self._param((hidden_size,), 0.0)
        if self._gated:
            out = hidden_size if nc.granularity == "elementwise" else 1
            self.gate_down = self._param((nc.rank, hidden_size), 0.0)
            self.gate_up = self._param((out, nc.rank), 0.0)
            if init_random:
                with torch.no_grad():
                    init_method(self.gate_down)
                    if nc.gate_up_init == "init_method":
                        init_method(self.gate_up)

    def _param(self, shape, fill: float) -> torch.nn.Parameter:
        p = torch.nn.Parameter(torch.full(shape, fill, **self._factory))
        setattr(p, "sequence_parallel", self._sequence_parallel)
        return p

    def _gate_params(self):
        if not self._gated:
            return {}
        return dict(
            gate_down=self.gate_down, gate_up=self.gate_up, gate_activation=self.gate_activation
        )

    def dispatch_config(self) -> dict:
        """This module's keywords of :func:`dispatch.choose_impl` / :func:`dispatch.unfused_reason`."""
        return dict(
            dyt=self._dyt, gated=self._gated, gate_activation=self.gate_activation,
            granularity=self.granularity, rank=self.gate_down.shape[0] if self._gated else 0,
        )

    def _choose_impl(self, x: torch.Tensor) -> dispatch.ImplDecision:
        # Only the request, the interpreter switch and the input's device/dtype/width can change
        # the answer for this module: decide once per combination, not on every forward.
        key = (dispatch.requested_impl(), interpreting(), x.device.type, x.dtype, x.shape[-1])
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decisions[key] = dispatch.choose_impl(x, **self.dispatch_config())
        if decision != self.impl_decision:
            self.impl_decision = decision
            name = type(self).__name__
            _log_once((name, self.hidden_size, decision), f"{name}({self.hidden_size}) uses {decision.reason}")
        return decision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._choose_impl(x).impl == "fused":
            kernels = kernel_module()
            pre_scale = self.pre_scale if self._pre_affine else None
            if self._gated:
                return kernels.gated_rms_norm(
                    x, weight=self.weight, gate_down=self.gate_down, gate_up=self.gate_up,
                    pre_scale=pre_scale, eps=self.eps, zero_centered_gamma=self.zero_centered_gamma,
                )
            return kernels.fused_rms_norm(
                x, weight=self.weight, pre_scale=pre_scale, eps=self.eps,
                zero_centered_gamma=self.zero_centered_gamma,
            )
        if self._dyt:
            return reference.dyt(
                x, self.alpha, self.weight, self.bias, self.zero_centered_gamma,
                **self._gate_params(),
            )
        return reference.rms_norm(
            x, self.weight, self.eps, self.zero_centered_gamma,
            pre_scale=self.pre_scale if self._pre_affine else None,
            **self._gate_params(),
        )

    def extra_repr(self) -> str:
        s = f"{self.hidden_size}, eps={self.eps}, zero_centered_gamma={self.zero_centered_gamma}"
        if self._gated:
            s += (
                f", rank={self.gate_down.shape[0]}, gate_activation={self.gate_activation}"
                f", granularity={self.granularity}"
            )
        return s


class RMSNorm(_ResidualNorm):
    """Plain RMSNorm ``γ ⊙ x / rms(x)`` that, unlike Megatron's torch fallback, supports
    sequence parallelism and zero-centred gamma. Used for slots a variant does not replace."""

    variant = "rmsnorm"


class GatedRMSNorm(_ResidualNorm):
    """GatedNorm: ``y = RMSNorm(x)``, output ``act(W_up · silu(W_down · y)) ⊙ y``."""

    variant = "gatednorm"
    _gated = True


class PreAffineRMSNorm(_ResidualNorm):
    """PreAffine: ``RMSNorm(λ1 ⊙ x)``; λ1 lets the norm rescale without residual outliers."""

    variant = "preaffine"
    _pre_affine = True


class PreAffineGatedRMSNorm(_ResidualNorm):
    """PreAffine followed by the GatedNorm gate: ``y = RMSNorm(λ1 ⊙ x)``, output ``g(y) ⊙ y``."""

    variant = "preaffine_gatednorm"
    _pre_affine = True
    _gated = True


class DyTNorm(_ResidualNorm):
    """Dynamic Tanh ``γ ⊙ tanh(α x) + β``: a statistics-free replacement of RMSNorm."""

    variant = "dyt"
    _dyt = True


class GatedDyTNorm(_ResidualNorm):
    """GateDyT: ``y = DyT(x)``, output ``g(y) ⊙ y`` (the paper's Table 1, row 9)."""

    variant = "gatedyt"
    _dyt = True
    _gated = True


NORM_CLASSES = {
    cls.variant: cls
    for cls in (RMSNorm, GatedRMSNorm, PreAffineRMSNorm, PreAffineGatedRMSNorm, DyTNorm, GatedDyTNorm)
}
assert tuple(NORM_CLASSES) == VARIANTS


def norm_class(variant: str) -> type:
    """The module class of a variant name; ValueError listing the choices otherwise."""
    try:
        return NORM_CLASSES[variant]
    except KeyError:
        raise choice_error("variant", variant, VARIANTS) from None


def impl_decisions(model: torch.nn.Module) -> list:
    """Which paths (fused / eager, and why: each ``module.impl_decision.reason``) the plugin's
    norms in ``model`` took in their forward passes so far, sorted."""
    return sorted({m.impl_decision.reason for m in model.modules()
                   if isinstance(m, _ResidualNorm) and m.impl_decision is not None})
