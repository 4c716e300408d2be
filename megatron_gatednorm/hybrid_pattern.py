"""HybridModel layer patterns (megatron-core >= 0.18's ``--hybrid-layer-pattern``): pure Python,
importable without torch or Megatron (the launcher validates recipes with it).

A pattern holds one symbol per ``HybridStack`` layer, ``|`` between pipeline segments. The
plugin's hybrid specs provide four kinds (:data:`SYMBOLS`); megatron-core's Mamba (``M``),
DeepSeek sparse attention (``D``), MLA (``+``) and multi-token prediction (``/...``) are refused.

The paper's MoE models as a GPT hybrid (``GPTModel`` with ``experimental_attention_variant=
gated_delta_net``) have, per GPT layer ``i``, one token mixer — Gated DeltaNet, or softmax
attention where ``linear_attention[i] == 0`` — and one FFN — MoE where ``moe[i] == 1``, else a
dense MLP. In a HybridModel each is a layer of its own, so GPT layer ``i`` is the symbol pair at
HybridModel layers ``2i`` (mixer: ``G`` / ``*``) and ``2i + 1`` (FFN: ``E`` / ``-``)::

    linear_attention = [1, 1, 1, 0],  moe = [1, 1, 1, 1]   <->   "GEGEGE*E"

:func:`pattern_from_gpt_layers` and :func:`gpt_layers_from_pattern` convert between the two; a
pattern that is not such pairs (``GG*-``) has no GPT-hybrid form.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

SYMBOLS = {"G": "Gated DeltaNet", "*": "attention", "-": "MLP", "E": "MoE"}
PIPE = "|"
MIXERS = {"G": 1, "*": 0}  # symbol -> linear_attention flag
FFNS = {"E": 1, "-": 0}  # symbol -> moe flag
UNSUPPORTED = {"M": "Mamba", "D": "DeepSeek sparse attention", "+": "MLA"}  # megatron-core symbols the specs refuse
# GPTModel flags (argparse dests) a HybridModel has no use for, and why; a pattern replaces the
# GPT layout ones (GPT_LAYOUT_FLAGS), use_rope_scaling has no HybridModel counterpart.
GPT_ONLY_FLAGS = {
    "experimental_attention_variant": "the pattern sets every layer's kind (G Gated DeltaNet, * attention)",
    "linear_attention_freq": "the pattern places the Gated DeltaNet (G) layers",
    "moe_layer_freq": "the pattern places the MoE (E) layers",
    "use_rope_scaling": "HybridModel has no Llama 3.1 RoPE scaling",
}
GPT_LAYOUT_FLAGS = ("experimental_attention_variant", "linear_attention_freq", "moe_layer_freq")
_VALID = "valid: G (Gated DeltaNet), * (attention), - (MLP), E (MoE), | (pipeline stage boundary)"


def gpt_only_value_set(dest: str, value) -> bool:
    """Whether a :data:`GPT_ONLY_FLAGS` value asks for something (Megatron's defaults do not: None,
    False, ``moe_layer_freq`` 1)."""
    return value not in (None, False) and not (dest == "moe_layer_freq" and value == 1)


def check_hybrid_pattern(pattern: str) -> None:
    """ValueError for an empty pattern, an empty pipeline segment, or a symbol or MTP part the
    plugin's hybrid specs do not provide."""
    if not pattern:
        raise ValueError(f"invalid hybrid_layer_pattern='': {_VALID}")
    if "/" in pattern:
        raise ValueError(
            f"invalid hybrid_layer_pattern={pattern!r}: multi-token prediction ('/...') is not supported "
            "by megatron-gatednorm's hybrid specs"
        )
    for symbol in pattern:
        if symbol not in SYMBOLS and symbol != PIPE:
            what = UNSUPPORTED.get(symbol, "unknown")
            raise ValueError(f"invalid layer symbol {symbol!r} ({what}) in hybrid_layer_pattern={pattern!r}; {_VALID}")
    if any(not segment for segment in pattern.split(PIPE)):
        raise ValueError(f"invalid hybrid_layer_pattern={pattern!r}: an empty pipeline segment (two '|' in a row, "
                         "or '|' at an end); every segment needs at least one layer")


def layers(pattern: str) -> str:
    """The layer symbols, pipeline boundaries removed."""
    return pattern.replace(PIPE, "")


def segments(pattern: str) -> List[str]:
    """The pipeline segments (one, without ``|``)."""
    return pattern.split(PIPE)


def layer_counts(pattern: str) -> Dict[str, int]:
    """``{symbol: layers of that kind}`` for every symbol of :data:`SYMBOLS`."""
    return {s: layers(pattern).count(s) for s in SYMBOLS}


def pattern_from_gpt_layers(linear_attention: Sequence[int], moe: Sequence[int]) -> str:
    """The HybridModel pattern of a GPT hybrid (per-layer 0/1 lists; no pipeline boundaries)."""
    assert len(linear_attention) == len(moe), (len(linear_attention), len(moe))
    mixer = {v: s for s, v in MIXERS.items()}
    ffn = {v: s for s, v in FFNS.items()}
    return "".join(mixer[int(a)] + ffn[int(m)] for a, m in zip(linear_attention, moe))


def gpt_layers_from_pattern(pattern: str) -> Tuple[List[int], List[int]]:
    """``(linear_attention, moe)`` per GPT layer of a pattern of (mixer, FFN) pairs.

    Raises:
        ValueError: the pattern is not such pairs (it has no GPT-hybrid form).
    """
    check_hybrid_pattern(pattern)
    symbols = layers(pattern)
    pairs = [symbols[i:i + 2] for i in range(0, len(symbols), 2)]
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or pair[0] not in MIXERS or pair[1] not in FFNS:
            raise ValueError(
                f"hybrid_layer_pattern={pattern!r} has no GPT-hybrid form: layer {2 * i} onwards is {pair!r}, "
                "expected (mixer, FFN) pairs: G or * followed by E or -"
            )
    return [MIXERS[p[0]] for p in pairs], [FFNS[p[1]] for p in pairs]


__all__ = [
    "FFNS", "GPT_LAYOUT_FLAGS", "GPT_ONLY_FLAGS", "MIXERS", "PIPE", "SYMBOLS", "UNSUPPORTED", "check_hybrid_pattern",
    "gpt_layers_from_pattern", "gpt_only_value_set", "layer_counts", "layers", "pattern_from_gpt_layers", "segments",
]
