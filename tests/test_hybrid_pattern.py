"""HybridModel layer patterns (megatron_gatednorm.hybrid_pattern): validation and the GPT-hybrid
⇄ HybridModel layer correspondence, against megatron-core's own pattern parser where installed."""

from __future__ import annotations

import pytest

from megatron_gatednorm import hybrid_pattern as hp


@pytest.mark.parametrize("pattern, message", [
    ("M*M*", "'M' \\(Mamba\\)"), ("G*+-", "'\\+' \\(MLA\\)"), ("G*-E/G*", "multi-token prediction"),
    ("", "valid: G"), ("GE||*E", "empty pipeline segment"), ("GE*E|", "empty pipeline segment"),
])
def test_unsupported_patterns(pattern, message):
    with pytest.raises(ValueError, match=message):
        hp.check_hybrid_pattern(pattern)


def test_gpt_layers_round_trip():
    linear, moe = [1, 1, 1, 0, 1, 1, 1, 0], [1] * 8
    pattern = hp.pattern_from_gpt_layers(linear, moe)
    assert pattern == "GEGEGE*E" * 2
    assert hp.gpt_layers_from_pattern(pattern) == (linear, moe)
    assert hp.gpt_layers_from_pattern("G-|*E") == ([1, 0], [0, 1])  # pipeline boundaries ignored
    assert hp.layer_counts("GE|*E-") == {"G": 1, "*": 1, "-": 1, "E": 2}
    assert hp.segments("GE|*E") == ["GE", "*E"] and hp.layers("GE|*E") == "GE*E"


@pytest.mark.parametrize("pattern", ["GG*-", "G*-", "EG"])
def test_patterns_without_a_gpt_form(pattern):
    with pytest.raises(ValueError, match="no GPT-hybrid form"):
        hp.gpt_layers_from_pattern(pattern)


def test_counts_agree_with_megatron_core():
    allocation = pytest.importorskip("megatron.core.models.hybrid.hybrid_layer_allocation",
                                     reason="megatron-core < 0.18 has no HybridModel pattern parser")
    for pattern in ("GEGEGE*E", "GE|*E", "G*-E|GE-*"):
        ours = hp.layer_counts(pattern)
        theirs = allocation.get_hybrid_layer_counts(pattern)
        assert {s: theirs.get(s, 0) for s in ours} == ours, pattern
        assert allocation.get_hybrid_total_layer_count(pattern) == len(hp.layers(pattern))
        assert allocation.get_hybrid_total_pipeline_segment_count(pattern) == len(hp.segments(pattern))
