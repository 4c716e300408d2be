"""What a tensor-parallel run must show against its TP=1 reference (the workers' JSON records)."""

FP32_TIGHT = 1e-5


def assert_tp_matches_tp1(case: str, r: dict) -> None:
    """Logits and loss within fp32 rounding; finalised norm gradients identical on both TP ranks
    and equal to the TP=1 gradients; every compared gradient nonzero, the same names compared."""
    assert r["logits"] < FP32_TIGHT, (case, r)
    assert r["loss"] < FP32_TIGHT, (case, r)
    assert r["grads_across_tp"] == 0.0, (case, r)
    assert r["grads_vs_tp1"] < 1e-4, (case, r)
    assert r["min_ref_grad_norm"] > 0, (case, r)
    assert r["grad_names"] == r["ref_grad_names"], case
