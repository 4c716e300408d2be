"""The plugin's configuration: which normalization replaces the residual-stream RMSNorms.

This module is the single source of truth for every plugin default. It imports neither
torch nor Megatron, so the launcher can validate recipes on a login node.

Variants (``x`` is the residual stream, ``λ`` the RMSNorm weight, ``g(·)`` the low-rank gate):

=====================  ==========================================================
``rmsnorm``            ``y = λ ⊙ x / rms(x)`` (the baseline; sequence-parallel aware)
``gatednorm``          ``y = RMSNorm(x)``, output ``g(y) ⊙ y``
``preaffine``          ``RMSNorm(λ1 ⊙ x)`` with a learnable ``λ1`` initialised to ones
``preaffine_gatednorm`` ``y = RMSNorm(λ1 ⊙ x)``, output ``g(y) ⊙ y``
``dyt``                ``γ ⊙ tanh(α x) + β`` (Dynamic Tanh; no statistics)
``gatedyt``            ``y = DyT(x)``, output ``g(y) ⊙ y``
=====================  ==========================================================

The gate is ``g(y) = act(W_up · silu(W_down · y))`` with ``W_down ∈ R^{r×d}`` and
``W_up ∈ R^{d×r}`` (element-wise) or ``R^{1×r}`` (tensor-wise: one score per token).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

VARIANTS = ("rmsnorm", "gatednorm", "preaffine", "preaffine_gatednorm", "dyt", "gatedyt")
GATED_VARIANTS = ("gatednorm", "preaffine_gatednorm", "gatedyt")
PREAFFINE_VARIANTS = ("preaffine", "preaffine_gatednorm")
DYT_VARIANTS = ("dyt", "gatedyt")
GATE_ACTIVATIONS = ("sigmoid", "tanh", "silu", "identity")
GRANULARITIES = ("elementwise", "tensorwise")
# Residual-stream norm slots: before attention (or linear attention), before the MLP/MoE,
# and the final norm before the output layer. "qk" (per-head QK-norm) is opt-in only.
PLACEMENTS = ("attn", "mlp", "final", "qk")
DEFAULT_PLACEMENT = ("attn", "mlp", "final")
GATE_UP_INITS = ("zeros", "init_method")


class NormConfigError(ValueError):
    """A bad plugin setting: ``field`` is the NormConfig field, ``reason`` what would be valid."""

    def __init__(self, field: str, value, reason: str):
        super().__init__(f"invalid {field}={value!r}: {reason}")
        self.field, self.value, self.reason = field, value, reason


def choice_error(field: str, value, choices: Iterable) -> NormConfigError:
    return NormConfigError(field, value, f"valid choices: {', '.join(map(str, choices))}")


def parse_placement(value) -> Tuple[str, ...]:
    """Turn ``"attn,mlp"`` (or an iterable of names) into a validated, ordered tuple."""
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",") if v.strip()]
    else:
        names = list(value)
    if not names:
        raise NormConfigError("placement", value, f"empty; valid choices: {', '.join(PLACEMENTS)}")
    for name in names:
        if name not in PLACEMENTS:
            raise choice_error("placement", name, PLACEMENTS)
    return tuple(p for p in PLACEMENTS if p in names)


@dataclass(frozen=True)
class NormConfig:
    """Everything the plugin's norm modules and specs need beyond Megatron's TransformerConfig."""

    variant: str = "gatednorm"
    """Which normalization replaces the residual-stream RMSNorms (see VARIANTS)."""
    rank: int = 16
    """Rank r of the gate's bottleneck (W_down: d→r, W_up: r→d)."""
    gate_activation: str = "sigmoid"
    """Output nonlinearity of the gate; the paper's choice is sigmoid, the others are ablations."""
    granularity: str = "elementwise"
    """``elementwise``: one score per hidden dimension; ``tensorwise``: one score per token."""
    placement: Tuple[str, ...] = DEFAULT_PLACEMENT
    """Which norm slots get the variant; the others stay plain RMSNorm."""
    gate_up_init: str = "zeros"
    """``zeros``: W_up = 0, so the gate starts at act(0) (0.5 for sigmoid); ``init_method``:
    Megatron's init_method (normal, init_method_std). W_down always uses init_method."""
    preaffine_init: float = 1.0
    """Initial value of every entry of the PreAffine vector λ1."""
    dyt_alpha_init: float = 0.5
    """Initial value of DyT's scalar α (DyT paper default)."""
    residual_clip: Optional[float] = None
    """If set to T, every residual-stream state after a sublayer's residual add is clamped to
    [-T, T] (the paper's clip 10/100/1000 ablation). None disables clipping."""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise choice_error("variant", self.variant, VARIANTS)
        if self.gate_activation not in GATE_ACTIVATIONS:
            raise choice_error("gate_activation", self.gate_activation, GATE_ACTIVATIONS)
        if self.granularity not in GRANULARITIES:
            raise choice_error("granularity", self.granularity, GRANULARITIES)
        if self.gate_up_init not in GATE_UP_INITS:
            raise choice_error("gate_up_init", self.gate_up_init, GATE_UP_INITS)
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise NormConfigError("rank", self.rank, "it must be an integer >= 1")
        object.__setattr__(self, "placement", parse_placement(self.placement))
        if self.residual_clip is not None and not self.residual_clip > 0:
            raise NormConfigError(
                "residual_clip", self.residual_clip,
                "it must be a threshold > 0 (e.g. 10, 100 or 1000), or unset to disable clipping",
            )
        if not self.dyt_alpha_init > 0:
            raise NormConfigError("dyt_alpha_init", self.dyt_alpha_init, "it must be > 0")

    @property
    def gated(self) -> bool:
        return self.variant in GATED_VARIANTS

    @property
    def preaffine(self) -> bool:
        return self.variant in PREAFFINE_VARIANTS

    @property
    def dyt(self) -> bool:
        return self.variant in DYT_VARIANTS

    def check_hidden_size(self, hidden_size: int) -> None:
        """Raise ValueError if the gate rank does not fit a norm of this width."""
        if self.gated and not self.rank < hidden_size:
            raise NormConfigError(
                "rank", self.rank, f"it must satisfy 1 <= rank < hidden size ({hidden_size})"
            )

    def replace(self, **changes) -> "NormConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["placement"] = list(self.placement)
        return d


DEFAULTS = NormConfig()
