"""megatron-core's ``HybridModel`` ⇄ the GPT hybrid (``GPTModel`` with ``experimental_attention_variant=
gated_delta_net``): the same weights under two sets of names, and the two model shapes. Pure Python
(no torch, no Megatron); values of the dicts are passed through untouched.

The layer correspondence is :mod:`megatron_gatednorm.hybrid_pattern`'s: a pattern with a GPT-hybrid
form is ``n`` (mixer, FFN) pairs, and GPT layer ``i``'s sublayer ``s`` (``s = 0``: the token mixer
— Gated DeltaNet or softmax attention — with its input norm; ``s = 1``: the MLP / MoE with its
pre-MLP norm) is HybridModel layer::

    j = 2·i + s            and back        i = ⌊j / 2⌋,  s = j mod 2

A key's sublayer is read from its name after ``decoder.layers.{index}.``: ``input_layernorm.`` /
``self_attention.`` are the mixer's, ``pre_mlp_layernorm.`` / ``mlp.`` the FFN's (a TE-fused norm is
checkpointed inside the linear it precedes, ``self_attention.linear_qkv.layer_norm_weight``,
``mlp.linear_fc1.layer_norm_weight``, so it follows its sublayer). A key whose sublayer disagrees
with ``j mod 2`` is refused. The stack's final norm is ``decoder.final_norm.*`` in a HybridModel
(``HybridStack.final_norm``) and ``decoder.final_layernorm.*`` in a GPT model; embedding and
output layer keep their names.

Which names: the per-layer names ``decoder.layers.{global index}.…``. A HybridModel's torch_dist
keys are always per layer at the global index (``HybridStack.sharded_state_dict`` offsets each
layer by ``layer_number - 1``; it never stacks layers, with or without ``|`` pipeline splits); a
GPT model's are per layer when its layers differ (:func:`megatron_gatednorm.checkpoint.layout.
non_homogeneous_layers`) and are unstacked by :mod:`~megatron_gatednorm.checkpoint.layout` first.
The in-memory ``state_dict`` of a single-stage model uses the same names.

Shapes: a HybridModel's args carry ``hybrid_layer_pattern`` and ``num_layers = 2n`` (megatron.training
derives it from the pattern) and no per-layer frequencies; the GPT form has ``n`` layers,
``linear_attention_freq`` = the mixer flags and ``moe_layer_freq`` = the FFN flags
(:func:`gpt_shape`; the other way is :func:`megatron_gatednorm.model_shape.hybrid_form`).
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, TypeVar

from megatron_gatednorm.hybrid_pattern import gpt_layers_from_pattern
from megatron_gatednorm.model_shape import ModelShape

V = TypeVar("V")

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_SUBLAYER_PARTS = (("input_layernorm.", "self_attention."), ("pre_mlp_layernorm.", "mlp."))  # s = 0, 1
HYBRID_FINAL = "decoder.final_norm."
GPT_FINAL = "decoder.final_layernorm."


def _sublayer(key: str, rest: str) -> int:
    for s, parts in enumerate(_SUBLAYER_PARTS):
        if rest.startswith(parts):
            return s
    raise ValueError(
        f"checkpoint key {key!r} is in no known sublayer (expected input_layernorm., self_attention., "
        "pre_mlp_layernorm. or mlp. after the layer index)"
    )


def hybrid_to_gpt_key(key: str) -> str:
    """The GPT-hybrid name of a HybridModel key: layer ``j`` → ``⌊j/2⌋``, ``final_norm`` →
    ``final_layernorm``. ValueError if the key's sublayer is not the one ``j mod 2`` says."""
    if key.startswith(HYBRID_FINAL):
        return GPT_FINAL + key[len(HYBRID_FINAL):]
    m = _LAYER.match(key)
    if not m:
        return key
    j, rest = int(m.group(1)), m.group(2)
    s = _sublayer(key, rest)
    if j % 2 != s:
        kind = ("mixer", "FFN")
        raise ValueError(
            f"checkpoint key {key!r} is a {kind[s]} part in HybridModel layer {j}, which pairs as a "
            f"{kind[j % 2]} (layers 2i are mixers, 2i+1 FFNs)"
        )
    return f"decoder.layers.{j // 2}.{rest}"


def gpt_to_hybrid_key(key: str) -> str:
    """The HybridModel name of a GPT-hybrid key: layer ``i``'s mixer part → ``2i``, its FFN part →
    ``2i + 1``, ``final_layernorm`` → ``final_norm``."""
    if key.startswith(GPT_FINAL):
        return HYBRID_FINAL + key[len(GPT_FINAL):]
    m = _LAYER.match(key)
    if not m:
        return key
    i, rest = int(m.group(1)), m.group(2)
    return f"decoder.layers.{2 * i + _sublayer(key, rest)}.{rest}"


def hybrid_to_gpt(tensors: Mapping[str, V], pattern: str) -> Dict[str, V]:
    """``{HybridModel key: value}`` → ``{GPT-hybrid key: value}`` for ``pattern`` (ValueError if it
    has no GPT-hybrid form, or a key does not fit it)."""
    return _checked(tensors, hybrid_to_gpt_key, pattern, hybrid_side=True)


def gpt_to_hybrid(tensors: Mapping[str, V], pattern: str) -> Dict[str, V]:
    """``{GPT-hybrid key: value}`` → ``{HybridModel key: value}`` for ``pattern`` (ValueError if it
    has no GPT-hybrid form, or a key does not fit it)."""
    return _checked(tensors, gpt_to_hybrid_key, pattern, hybrid_side=False)


def _checked(tensors: Mapping[str, V], rename, pattern: str, hybrid_side: bool) -> Dict[str, V]:
    """``rename`` every key, refusing layer indices beyond the pattern's layers."""
    linear, _ = gpt_layers_from_pattern(pattern)
    n = len(linear)
    out: Dict[str, V] = {}
    for key, value in tensors.items():
        new = rename(key)
        m = _LAYER.match(key)
        if m and int(m.group(1)) >= (2 * n if hybrid_side else n):
            side = f"{2 * n} HybridModel" if hybrid_side else f"{n} GPT-hybrid"
            raise ValueError(
                f"checkpoint key {key!r}: layer {m.group(1)} is beyond the {side} layers of "
                f"hybrid_layer_pattern={pattern!r}"
            )
        out[new] = value
    return out


def gpt_shape(hybrid: ModelShape, pattern: str) -> ModelShape:
    """The GPT-hybrid form of a HybridModel of ``pattern`` whose args give ``hybrid`` (``num_layers``
    = the pattern's layer count, no per-layer frequencies). ValueError: no GPT-hybrid form, or the
    pattern's MoE layers without ``num_experts``."""
    linear, moe = gpt_layers_from_pattern(pattern)
    if hybrid.num_layers != 2 * len(linear):
        raise ValueError(f"num_layers={hybrid.num_layers} but hybrid_layer_pattern={pattern!r} has "
                         f"{2 * len(linear)} layers")
    if any(moe) and not hybrid.num_experts:
        raise ValueError(f"hybrid_layer_pattern={pattern!r} has MoE layers (E) but num_experts is not set")
    return hybrid.replace(
        num_layers=len(linear),
        experimental_attention_variant="gated_delta_net" if any(linear) else None,
        linear_attention_freq=list(linear) if any(linear) else None,
        num_experts=hybrid.num_experts if any(moe) else None,
        moe_layer_freq=(1 if all(moe) else list(moe)) if any(moe) else 1,
        hybrid_layer_pattern=None,  # the GPT-hybrid form (the pattern is the caller's, e.g. Arch's)
    )


__all__ = [
    "GPT_FINAL", "HYBRID_FINAL", "gpt_shape", "gpt_to_hybrid", "gpt_to_hybrid_key",
    "hybrid_to_gpt", "hybrid_to_gpt_key",
]
