"""Fake quantizers against hand-computed values, and SmoothQuant's invariance."""

import pytest
import torch

from megatron_gatednorm.quant.fake_quant import (
    FakeQuantLinear, block_linears, calibrate, quantize_model, smoothing_factors,
)
from megatron_gatednorm.quant.formats import int_symmetric, nvfp4, round_e2m1


def test_e2m1_grid_rounding_ties_to_even():
    x = torch.tensor([0.0, 0.2, 0.25, 0.3, 0.75, 1.2, 1.25, 1.75, 2.5, 2.6, 3.5, 5.0, 5.5, 9.0, -0.75, -2.5])
    expected = [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 6.0, 6.0, -1.0, -2.0]
    assert round_e2m1(x).tolist() == expected


def test_nvfp4_block_scales_by_hand():
    # One 16-element block, amax 12: g = 12 / (6 * 448); block scale e4m3(12 / 6 / g) = 448,
    # so each element is quantized on the grid scaled by 448 * g = 2: x/2 -> e2m1 -> *2.
    x = torch.tensor([12.0, 5.0, 3.0, 1.1, -0.6, 0.4, 7.0, -9.0] + [0.0] * 8)
    q = nvfp4(x.unsqueeze(0))[0]
    expected = 2.0 * round_e2m1(x / 2.0)
    assert q.tolist() == expected.tolist()
    # x/2 = [6, 2.5, 1.5, 0.55, -0.3, 0.2, 3.5, -4.5] -> [6, 2, 1.5, 0.5, -0.5, 0, 4, -4] (ties to even)
    assert q[:8].tolist() == [12.0, 4.0, 3.0, 1.0, -1.0, 0.0, 8.0, -8.0]


def test_nvfp4_second_block_uses_e4m3_scale():
    # Block 0 amax 6 (scale 448*g with g = 6/(6*448) = 1/448 -> scale 1: the plain grid).
    # Block 1 amax 0.3: block scale = e4m3(0.3/6/g) = e4m3(22.4) = 22 (E4M3 step 2 at 16..32),
    # so elements are quantized with step unit 22 * g = 22/448.
    b0 = torch.tensor([6.0, 2.4, 1.3] + [0.0] * 13)
    b1 = torch.tensor([0.3, 0.1, -0.05] + [0.0] * 13)
    q = nvfp4(torch.cat([b0, b1]).unsqueeze(0))[0]
    assert q[:3].tolist() == [6.0, 2.0, 1.5]
    unit = 22.0 / 448.0
    assert torch.allclose(q[16:19], round_e2m1(b1[:3] / unit) * unit)
    assert torch.allclose(q[16:19], torch.tensor([6 * unit, 2 * unit, -1 * unit]))


def test_nvfp4_per_token_scales_rows_independently_and_pads():
    x = torch.randn(3, 37) * torch.tensor([[1.0], [100.0], [0.01]])
    q = nvfp4(x, per_token=True)
    assert q.shape == x.shape
    for row in range(3):
        assert torch.equal(q[row], nvfp4(x[row:row + 1], per_token=False)[0])
    rel = ((q - x).norm(dim=1) / x.norm(dim=1))
    assert torch.all(rel < 0.2)


def test_int_rtn_per_channel_by_hand():
    w = torch.tensor([[7.0, -3.5, 1.0, 0.2], [0.7, 0.1, -0.35, 0.0]])
    q = int_symmetric(w, bits=4)  # qmax 7: row scales 1.0 and 0.1
    assert torch.allclose(q, torch.tensor([[7.0, -4.0, 1.0, 0.0], [0.7, 0.1, -0.4, 0.0]]))
    assert torch.allclose(int_symmetric(w, bits=8), w, atol=7.0 / 127 / 2 + 1e-6)
    with pytest.raises(ValueError, match="bits=1"):
        int_symmetric(w, bits=1)


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.ModuleDict(dict(
            q=torch.nn.Linear(32, 16, bias=False), k=torch.nn.Linear(32, 16, bias=False),
            o=torch.nn.Linear(16, 32, bias=True)))])
        self.head = torch.nn.Linear(32, 8)

    def forward(self, x):
        blk = self.layers[0]
        h = blk["q"](x) * blk["k"](x)
        return self.head(blk["o"](h))


def test_smoothquant_factors_keep_the_unquantized_product_and_group_shared_inputs():
    torch.manual_seed(0)
    model = _Toy()
    x = torch.randn(4, 10, 32)
    x[..., 3] *= 50.0  # an outlier channel
    linears = block_linears(model)
    assert set(linears) == {"layers.0.q", "layers.0.k", "layers.0.o"}  # head stays high precision
    act_max, groups = calibrate(model, [x], linears)
    assert sorted(map(tuple, groups)) == [("layers.0.k", "layers.0.q"), ("layers.0.o",)]
    assert torch.allclose(act_max["layers.0.q"], x.abs().amax((0, 1)))
    s = smoothing_factors(act_max, groups, linears, alpha=0.5)
    assert torch.equal(s["layers.0.q"], s["layers.0.k"])
    w_max = torch.maximum(linears["layers.0.q"].weight.abs().amax(0), linears["layers.0.k"].weight.abs().amax(0))
    assert torch.allclose(s["layers.0.q"], act_max["layers.0.q"].sqrt() / w_max.sqrt())
    # (X / s)(W s)^T == X W^T
    lin = linears["layers.0.q"]
    smoothed = (x / s["layers.0.q"]) @ (lin.weight * s["layers.0.q"]).T
    assert torch.allclose(smoothed, lin(x), atol=1e-4)
    # and SmoothQuant reduces the INT4 error of the outlier-channel input
    plain, smooth = FakeQuantLinear(lin, "int4"), FakeQuantLinear(lin, "int4", s["layers.0.q"])
    assert (smooth(x) - lin(x)).norm() < (plain(x) - lin(x)).norm()


def test_quantize_model_replaces_block_linears_and_optional_gates():
    torch.manual_seed(0)
    model = _Toy()
    model.layers[0]["norm"] = torch.nn.Module()
    model.layers[0]["norm"].gate_down = torch.nn.Parameter(torch.randn(4, 32))
    before = model.layers[0]["norm"].gate_down.detach().clone()
    quantize_model(model, "nvfp4")
    assert isinstance(model.layers[0]["q"], FakeQuantLinear) and isinstance(model.head, torch.nn.Linear)
    assert torch.equal(model.layers[0]["norm"].gate_down, before)
    quantize_model(model, "nvfp4", quantize_gates=True, linears={})
    assert torch.equal(model.layers[0]["norm"].gate_down, nvfp4(before))
    with pytest.raises(ValueError, match="valid choices: nvfp4, int4, int8"):
        quantize_model(model, "fp4")
