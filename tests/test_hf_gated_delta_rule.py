"""The exported architecture's Gated DeltaNet pieces against independent references: the chunked
gated delta rule vs the per-token recurrence in float64, and vs megatron-core's own torch
implementation (what Megatron runs in ``deterministic_mode``)."""

import pytest
import torch

from megatron_gatednorm.hf.modeling_gatednorm import _l2norm, gated_delta_rule


def _inputs(b=2, t=150, h=3, dk=8, dv=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = _l2norm(torch.randn(b, t, h, dk, generator=g, dtype=dtype))
    k = _l2norm(torch.randn(b, t, h, dk, generator=g, dtype=dtype))
    v = torch.randn(b, t, h, dv, generator=g, dtype=dtype)
    decay = -2 * torch.rand(b, t, h, generator=g, dtype=dtype)
    beta = torch.rand(b, t, h, generator=g, dtype=dtype)
    state = torch.randn(b, h, dk, dv, generator=g, dtype=dtype)
    return q, k, v, decay, beta, state


def _recurrence(q, k, v, decay, beta, state):
    """S_t = e^{g_t} (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,  o_t = S_tᵀ q_t / sqrt(d_k)."""
    S, out = state.clone(), []
    for t in range(q.shape[1]):
        S = S * decay[:, t].exp()[..., None, None]
        u = (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)) * beta[:, t][..., None]
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], u)
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * q.shape[-1] ** -0.5, S))
    return torch.stack(out, 1), S


@pytest.mark.parametrize("chunk_size", [64, 16, 1])
def test_chunked_rule_equals_recurrence(chunk_size):
    q, k, v, decay, beta, state = _inputs()
    ref, ref_state = _recurrence(q, k, v, decay, beta, state)
    out, final = gated_delta_rule(q, k, v, decay, beta, state, chunk_size=chunk_size)
    assert out.dtype == torch.float64
    assert float((out - ref).abs().max()) < 1e-12
    assert float((final - ref_state).abs().max()) < 1e-12


def test_state_carries_across_calls():
    """Prefill then continuation with the returned state == one pass (how generate() decodes)."""
    q, k, v, decay, beta, _ = _inputs(t=70)
    whole, state = gated_delta_rule(q, k, v, decay, beta)
    first, s1 = gated_delta_rule(*(x[:, :45] for x in (q, k, v, decay, beta)), chunk_size=16)
    pieces = [first]
    for t in range(45, 70):  # token by token, like cached decoding
        o, s1 = gated_delta_rule(*(x[:, t:t + 1] for x in (q, k, v, decay, beta)), s1)
        pieces.append(o)
    assert float((torch.cat(pieces, 1) - whole).abs().max()) < 1e-12
    assert float((s1 - state).abs().max()) < 1e-12


def test_float32_matches_megatron_torch_reference():
    gdn = pytest.importorskip("megatron.core.ssm.gated_delta_net")
    if not hasattr(gdn, "torch_chunk_gated_delta_rule"):
        pytest.skip("this megatron-core has no torch_chunk_gated_delta_rule")
    q, k, v, decay, beta, _ = (x.float() for x in _inputs())
    ours, _ = gated_delta_rule(q, k, v, decay, beta)
    theirs, _ = gdn.torch_chunk_gated_delta_rule(q, k, v, decay, beta)
    ref, _ = _recurrence(*(x.double() for x in (q, k, v, decay, beta)), torch.zeros(2, 3, 8, 6, dtype=torch.float64))
    assert ours.dtype == torch.float32
    assert float((ours.double() - ref).abs().max()) < 1e-5
    assert float((ours - theirs).abs().max()) < 1e-5
