"""What the conversion tests (test_convert, test_hybrid_convert) compare with: tolerances, the
stock transformers classes, tensor identity after a round trip, loading an HF export, and
``mgn``'s one-line errors."""

from pathlib import Path

import torch

STOCK = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM", "moe_qwen3": "Qwen3MoeForCausalLM",
         "next_qwen3": "Qwen3NextForCausalLM"}
"""convert_save case -> the stock transformers class its export uses (others: the exported architecture)."""
# stock Qwen3-Next stores its gated output norm as γ = 1 + w (Megatron: w, zero-centred), and
# 1 + w rounds: exact only to an ulp of 1 after a round trip (every other tensor is bit-identical)
SHIFTED = ("self_attention.out_norm.weight", "linear_attn.norm.weight")
ULP_OF_ONE = 2.0**-23
LOGITS_ATOL = 1e-4
FP32_TIGHT = 1e-5


def same_tensor(case, key, a, b) -> bool:
    """Whether tensor ``key`` of case ``case`` came back from a round trip as it went in: byte-identical
    (Qwen3-Next's shifted norms: within an ulp of 1)."""
    if STOCK.get(case) == "Qwen3NextForCausalLM" and key.endswith(SHIFTED):
        return a.dtype == b.dtype and float((a - b).abs().max()) <= ULP_OF_ONE
    return a.dtype == b.dtype and a.numpy().tobytes() == b.numpy().tobytes()


def load_hf(hf_dir, arch):
    """The HF folder's model in fp32 (remote code unless ``arch`` is a stock class), all keys matched."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        hf_dir, trust_remote_code=arch not in STOCK.values(), dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    return model.eval()


def mgn(*argv):
    from megatron_gatednorm.cli import main

    return main([str(a) for a in argv])


def expect_one_line_error(capsys, argv, *fragments, leftovers_in=None):
    """``mgn argv`` exits 2 with one stderr line holding every fragment; ``leftovers_in`` stays empty."""
    assert mgn(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    for f in fragments:
        assert f in err, (f, err)
    if leftovers_in is not None:
        assert [p.name for p in Path(leftovers_in).iterdir()] == [], list(Path(leftovers_in).iterdir())
    return err
