"""Hugging Face side of megatron-gatednorm: the exported architecture, registered with the
Auto classes on import.

``import megatron_gatednorm`` never imports transformers; ``import megatron_gatednorm.hf``
does, and registers ``GatedNormConfig`` (``model_type="gatednorm"``) with ``AutoConfig`` and
``GatedNormForCausalLM`` with ``AutoModelForCausalLM``, so converted folders load without
``trust_remote_code``. Folders written by ``mgn convert to-hf`` also carry copies of both files
with ``auto_map``, so ``trust_remote_code=True`` works where megatron_gatednorm is absent.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from megatron_gatednorm.hf.configuration_gatednorm import GatedNormConfig
from megatron_gatednorm.hf.modeling_gatednorm import GatedNormForCausalLM, GatedNormModel

try:
    AutoConfig.register(GatedNormConfig.model_type, GatedNormConfig)
    AutoModelForCausalLM.register(GatedNormConfig, GatedNormForCausalLM)
except ValueError:  # already registered (module reloaded)
    pass

__all__ = ["GatedNormConfig", "GatedNormForCausalLM", "GatedNormModel"]
