"""megatron-gatednorm: GatedNorm and PreAffine (arXiv 2601.22966) for Megatron-core.

``import megatron_gatednorm`` imports neither torch nor Megatron: the names below load their
module on first use, so the launcher runs on a login node. The Megatron-facing pieces are
``megatron_gatednorm.specs`` (layer/block specs), ``megatron_gatednorm.norm_flags`` (CLI flags)
and ``megatron_gatednorm.parity`` (parameter counts and FFN-width parity).
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "NormConfig": "megatron_gatednorm.norm_config",
    "DEFAULTS": "megatron_gatednorm.norm_config",
    "VARIANTS": "megatron_gatednorm.norm_config",
    "PLACEMENTS": "megatron_gatednorm.norm_config",
    "RMSNorm": "megatron_gatednorm.norms",
    "GatedRMSNorm": "megatron_gatednorm.norms",
    "PreAffineRMSNorm": "megatron_gatednorm.norms",
    "PreAffineGatedRMSNorm": "megatron_gatednorm.norms",
    "DyTNorm": "megatron_gatednorm.norms",
    "GatedDyTNorm": "megatron_gatednorm.norms",
    "norm_class": "megatron_gatednorm.norms",
    "add_gatednorm_args": "megatron_gatednorm.norm_flags",
    "norm_config_from_args": "megatron_gatednorm.norm_flags",
    "get_gatednorm_block_spec": "megatron_gatednorm.specs",
    "get_gatednorm_layer_spec": "megatron_gatednorm.specs",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'megatron_gatednorm' has no attribute {name!r}")
