"""The fused kernels move exactly the bytes their design states (``ops.traffic``), counted from
the kernels' own loads and stores in triton's interpreter (``interpreter_traffic``).

CPU only: on a GPU the kernels are compiled and the GPU check's ``ncu`` step measures DRAM bytes.
"""

from __future__ import annotations

import pytest
import torch

from megatron_gatednorm.ops import _triton_utils, traffic

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="counts the interpreter's accesses; ncu on GPUs")

VARIANTS = {  # name: (pre, gated)
    "rmsnorm": (False, False),
    "preaffine": (True, False),
    "gatednorm": (False, True),
    "preaffine_gatednorm": (True, True),
}


def _measure(kernels, rows, d, rank, *, pre, gated, dtype, param_dtype):
    from helpers.interpreter_traffic import record

    g = torch.Generator().manual_seed(0)
    params = {"weight": torch.randn(d, generator=g).to(param_dtype)}
    if pre:
        params["pre_scale"] = torch.rand(d, generator=g).to(param_dtype) + 0.5
    if gated:
        params["gate_down"] = (torch.randn(rank, d, generator=g) / d**0.5).to(param_dtype)
        params["gate_up"] = torch.randn(d, rank, generator=g).to(param_dtype)
    params = {k: v.requires_grad_() for k, v in params.items()}
    x = torch.randn(rows, d, generator=g).to(dtype).requires_grad_()
    do = torch.randn(rows, d, generator=g).to(dtype)
    fn = kernels.gated_rms_norm if gated else kernels.fused_rms_norm
    with record() as fwd:
        out = fn(x, **params)
    with record() as bwd:
        out.backward(do)
    return {"fwd": fwd, "bwd": bwd}


CASES = [
    # rows, d, rank (gated variants), act dtype, param dtype
    pytest.param(40, 200, 16, torch.bfloat16, torch.bfloat16, id="40x200-bf16"),
    pytest.param(33, 72, 5, torch.bfloat16, torch.float32, id="33x72-rank5-bf16-fp32params"),
    pytest.param(17, 130, 16, torch.float32, torch.float32, id="17x130-fp32"),
]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("rows, d, rank, dtype, param_dtype", CASES)
def test_bytes_match_design(kernels, variant, rows, d, rank, dtype, param_dtype):
    pre, gated = VARIANTS[variant]
    launches = _measure(kernels, rows, d, rank, pre=pre, gated=gated, dtype=dtype, param_dtype=param_dtype)
    plan = _triton_utils.launch_plan(rows, d, rank if gated else 0, pre=pre, sms=_triton_utils.INTERPRETER_SMS)
    design = traffic.design_bytes(plan, dtype.itemsize, param_dtype.itemsize)
    for phase in ("fwd", "bwd"):
        assert [launch.name for launch in launches[phase]] == list(design[phase]), phase
        for launch in launches[phase]:
            want = design[phase][launch.name]
            assert (launch.unique_read, launch.written) == (want.read, want.write), launch.name
            # Activations (x, dy) are loaded once, except the designed L2 re-read, which the kernel
            # marks: first sweep evict_last, second sweep evict_first.
            for arg in ("X", "DO"):
                if arg not in launch.args:
                    continue
                by_policy = launch.loads_of(arg)
                reread = sum(by_policy.values()) - launch.unique_read_of(arg)
                assert reread == (want.l2_reread if arg == "X" else 0), (launch.name, arg)
                if reread:
                    assert by_policy == {"evict_last": reread, "evict_first": reread}, launch.name


def test_wide_ungated_backward_bytes(kernels, monkeypatch):
    """Rows wider than ROW_ON_CHIP_MAX_BWD: the stats + column-owner backward, at its 5d design."""
    monkeypatch.setattr(_triton_utils, "ROW_ON_CHIP_MAX_BWD", 64)
    launches = _measure(kernels, 40, 200, 0, pre=True, gated=False, dtype=torch.bfloat16, param_dtype=torch.bfloat16)
    plan = _triton_utils.launch_plan(40, 200, 0, pre=True, sms=_triton_utils.INTERPRETER_SMS)
    design = traffic.design_bytes(plan, 2, 2)["bwd"]
    assert [launch.name for launch in launches["bwd"]] == list(design)
    for launch in launches["bwd"]:
        assert (launch.unique_read, launch.written) == tuple(design[launch.name][:2]), launch.name


def test_bytes_per_token_at_the_paper_shape():
    """The design at 16384 x 4096 bf16 on 132 SMs, in units of d activation bytes per token:
    forward at the 2d floor for every variant; backward at the 3d floor without the gate, 5d with
    it (plus parameters, statistics and bounded partials: < 0.2d)."""
    t, d = 16384, 4096
    for variant, (pre, gated) in VARIANTS.items():
        plan = _triton_utils.launch_plan(t, d, 16 if gated else 0, pre=pre, sms=132)
        design = traffic.design_bytes(plan, 2, 2)
        fwd = traffic.per_token(design["fwd"], t, d, 2)
        bwd = traffic.per_token(design["bwd"], t, d, 2)
        assert 2.0 <= fwd < 2.02, (variant, fwd)
        floor = 5.0 if gated else 3.0
        assert floor <= bwd < floor + 0.2, (variant, bwd)
