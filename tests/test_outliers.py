"""Outlier statistics on planted patterns: a residual sink, a massive activation, attention sinks."""

import torch

from megatron_gatednorm.analysis.outliers import OutlierStats, norm_parameter_extremes


def planted_states(batch=4, tokens=12, dim=32, states=5, sink_dim=7, sink_value=50.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = [torch.randn(batch, tokens, dim, generator=g) for _ in range(states)]
    for i, h in enumerate(hs):
        h[..., sink_dim] = sink_value * (1 + i) * torch.sign(torch.randn(batch, tokens, generator=g))
    hs[2][1, 0, 3] = 1000.0  # a massive activation on the first token of sequence 1, state 2
    return hs


def test_residual_sink_and_massive_activation_are_found():
    stats = OutlierStats(top_k=4)
    stats.add_hidden_states(planted_states())
    stats.add_hidden_states(planted_states(seed=1))
    r = stats.report()
    assert r["sink_dims"][0]["dim"] == 7
    # |h_7| = 50 * (1 + i) on every token: mean over the 5 states is 150
    assert abs(r["sink_dims"][0]["h_avg"] - 150.0) < 1e-4
    assert r["sink_dims"][0]["persistence"] == 1.0 and r["sequences"] == 8
    assert r["sink_dims"][0]["ratio_to_median"] > 100
    assert r["peak_abs"] == 1000.0 and r["peak_abs_per_state"][2] == 1000.0
    assert r["peak_abs_per_state"][4] == 250.0
    assert r["first_token_peak_abs_per_state"][2] == 1000.0


def test_first_token_attention_mass_and_sink_rate():
    tokens = 6
    causal = torch.tril(torch.ones(tokens, tokens))
    uniform = causal / causal.sum(-1, keepdim=True)
    sink = torch.zeros(tokens, tokens)
    sink[:, 0] = 0.9
    sink += 0.1 * torch.eye(tokens)
    sink[0, 0] = 1.0
    layer0 = torch.stack([sink, uniform, uniform]).unsqueeze(0)    # head 0 sinks
    layer1 = torch.stack([uniform, uniform, sink]).unsqueeze(0)    # head 2 sinks
    stats = OutlierStats()
    stats.add_hidden_states([torch.randn(1, tokens, 8)] * 3)
    stats.add_attentions([layer0, None, layer1])  # a linear-attention layer in between
    att = stats.report()["first_token_attention"]
    expected_uniform = sum(1 / (q + 1) for q in range(1, tokens)) / (tokens - 1)
    assert abs(att["per_layer_head"][0][0] - 0.9) < 1e-6
    assert abs(att["per_layer_head"][0][1] - expected_uniform) < 1e-6
    assert set(att["per_layer_head"]) == {0, 2}
    assert abs(att["sink_rate"] - 2 / 6) < 1e-9  # uniform mass ~0.29 < 0.3


def test_gate_and_norm_parameter_statistics():
    stats = OutlierStats(top_k=1)
    stats.add_hidden_states(planted_states(sink_dim=5))
    gate = torch.full((2, 3, 32), 0.8)
    gate[..., 5] = 0.1
    stats.add_gate("layers.0.input_layernorm", gate)
    r = stats.report()
    g = r["gates"]["layers.0.input_layernorm"]
    assert abs(g["mean_on_sink_dims"] - 0.1) < 1e-6 and abs(g["mean_on_other_dims"] - 0.8) < 1e-6

    class FakeNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(8))
            self.pre_scale = torch.nn.Parameter(torch.ones(8))

    m = torch.nn.Sequential(FakeNorm())
    with torch.no_grad():
        m[0].weight[3] = 0.004
        m[0].pre_scale[6] = 7.19
    ext = norm_parameter_extremes(m)["0"]
    assert ext["weight_argmin"] == 3 and abs(ext["weight_min"] - 0.004) < 1e-6
    assert ext["pre_scale_argmax"] == 6 and abs(ext["pre_scale_max"] - 7.19) < 1e-5
