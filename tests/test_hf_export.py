"""HF exports are complete models: ``convert_to_hf`` without ``tokenizer`` copies the tokenizer
the checkpoint's args name, sets bos/eos/pad and a generation config, and writes only the
config fields the architecture reads, so AutoTokenizer + AutoModelForCausalLM + generate work
on the folder with no extra arguments. Tiny checkpoints are written in this process."""

import json
import logging
import os
import warnings

import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")
import torch  # noqa: E402

from megatron_gatednorm.checkpoint import Arch, megatron_args, stack, write_checkpoint  # noqa: E402
from megatron_gatednorm.convert import hf_io  # noqa: E402
from megatron_gatednorm.convert.mapping import hf_to_megatron  # noqa: E402
from megatron_gatednorm.convert.to_hf import convert_to_hf  # noqa: E402
from megatron_gatednorm.model_shape import ModelShape  # noqa: E402
from megatron_gatednorm.norm_config import NormConfig  # noqa: E402

DENSE = ModelShape(
    num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2, kv_channels=8,
    ffn_hidden_size=64, vocab_size=320, qk_layernorm=True, max_position_embeddings=64,
)
MOE = DENSE.replace(num_experts=4, moe_ffn_hidden_size=16, moe_router_topk=2)
HYBRID = DENSE.replace(num_layers=4, experimental_attention_variant="gated_delta_net", linear_attention_freq=2,
                       linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                       linear_value_head_dim=8)
NEXT = dict(zero_centered_gamma=True, rotary_percent=0.5)
GATED = DENSE.replace(attention_output_gate=True)
RMS = NormConfig(variant="rmsnorm")
# name -> (arch, the HF class hf_io picks)
ARCHS = {
    "qwen3": (Arch(DENSE, RMS), "Qwen3ForCausalLM"),
    "llama": (Arch(DENSE.replace(qk_layernorm=False), RMS), "LlamaForCausalLM"),
    "qwen3_moe": (Arch(MOE, RMS), "Qwen3MoeForCausalLM"),
    "qwen3_next": (Arch(HYBRID.replace(attention_output_gate=True), RMS, **NEXT), "Qwen3NextForCausalLM"),
    "gatednorm": (Arch(GATED, NormConfig(variant="gatednorm")), "GatedNormForCausalLM"),
    "preaffine": (Arch(DENSE, NormConfig(variant="preaffine")), "GatedNormForCausalLM"),
    "moe_gatednorm": (Arch(MOE.replace(moe_shared_expert_intermediate_size=16), NormConfig(variant="gatednorm")),
                      "GatedNormForCausalLM"),
    "hybrid_dyt": (Arch(HYBRID, NormConfig(variant="dyt")), "GatedNormForCausalLM"),
}
# set by hf_io on purpose beyond a default config's fields: the dtype, the class, and Qwen3-MoE's
# head_dim (its attention reads getattr(config, "head_dim", hidden // heads))
DELIBERATE = {"architectures", "dtype", "head_dim", "auto_map"}


def _config_class(name):
    if name == "GatedNormForCausalLM":
        from megatron_gatednorm.hf.configuration_gatednorm import GatedNormConfig

        return GatedNormConfig
    import transformers

    return getattr(transformers, name.replace("ForCausalLM", "Config"))


@pytest.mark.parametrize("case", sorted(ARCHS))
def test_config_holds_only_the_fields_the_architecture_reads(case, tmp_path):
    from megatron_gatednorm.hf.configuration_gatednorm import GATE_FIELDS, LINEAR_ATTENTION_FIELDS, MOE_FIELDS

    arch, expected = ARCHS[case]
    config, name = hf_io.hf_config(arch, torch.float32)
    assert name == expected
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    cls = _config_class(name)
    groups = set(MOE_FIELDS + LINEAR_ATTENTION_FIELDS + GATE_FIELDS) if name == "GatedNormForCausalLM" else set()
    assert set(saved) - set(cls().to_dict()) <= DELIBERATE | groups, case  # a default config leaves out parts
    loaded, unused = cls.from_dict(saved, return_unused_kwargs=True)
    assert unused == {}, (case, unused)
    if name == "GatedNormForCausalLM":
        s, nc = arch.shape, arch.norm_config
        absent = (() if s.num_experts else MOE_FIELDS) + (() if s.experimental_attention_variant else
                                                          LINEAR_ATTENTION_FIELDS) + (() if nc.gated else GATE_FIELDS)
        assert not set(absent) & set(saved), (case, sorted(set(absent) & set(saved)))
        present = groups - set(absent)
        assert present <= set(saved), (case, sorted(present - set(saved)))
        assert hf_io.arch_from_hf_config(saved).shape == arch.shape.replace(kv_channels=arch.shape.head_dim)
        # what to-megatron reads is the same as from the config with every field
        from transformers import PretrainedConfig

        full = PretrainedConfig.to_dict(loaded)
        assert set(absent) <= set(full) and hf_io.arch_from_hf_config(saved) == hf_io.arch_from_hf_config(full)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tokenizer folder as ``mgn data`` trains it (byte-level BPE; EOS, no pad token)."""
    from megatron_gatednorm.data.tokenizer import train_bpe

    folder = tmp_path_factory.mktemp("data") / "tokenizer"
    train_bpe(["the quick brown fox jumps over the lazy dog, said the hello world"] * 20, 300, folder)
    return folder


def _checkpoint(folder, arch: Arch, tokenizer_model) -> None:
    """A tiny Megatron checkpoint of ``arch`` with random weights whose args name ``tokenizer_model``."""
    config, name = hf_io.hf_config(arch, torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        tensors = {k: torch.randn(v.shape) * 0.2 for k, v in hf_io._meta_parameters(config, name).items()}
    args = megatron_args(arch, tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(tokenizer_model))
    folder.mkdir()
    write_checkpoint(stack(hf_to_megatron(tensors, arch, name), arch), args, folder)


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _generates(folder, **load) -> None:
    """AutoTokenizer + AutoModelForCausalLM + generate, no extra arguments: text that starts
    with the prompt, and no warning from transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, **load)
    inputs = tok("the quick brown fox", return_tensors="pt")
    logged, logger = _Warnings(), logging.getLogger("transformers")
    logger.addHandler(logged)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            out = model.generate(**inputs, max_new_tokens=8)
    finally:
        logger.removeHandler(logged)
    assert logged.messages == [] and [str(w.message) for w in warned] == []
    assert out.shape[1] > inputs["input_ids"].shape[1]
    text = tok.decode(out[0])
    assert isinstance(text, str) and text.startswith(tok.decode(inputs["input_ids"][0])), text


def test_export_carries_the_checkpoints_tokenizer_and_generates(tokenizer_dir, tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    ckpt, hf = tmp_path / "ckpt", tmp_path / "hf"
    _checkpoint(ckpt, ARCHS["gatednorm"][0], tokenizer_dir)
    notes = []
    assert convert_to_hf(ckpt, hf, progress=False, notes=notes.append) == "GatedNormForCausalLM"
    assert notes == [f"copied the tokenizer the checkpoint's args name: {tokenizer_dir} (pass --tokenizer DIR for another)"]
    assert capsys.readouterr().err == ""  # the library says it through notes only
    tok = AutoTokenizer.from_pretrained(hf)
    eos = tok.eos_token_id
    assert tok.pad_token_id is None and eos is not None  # mgn data's tokenizer has no pad token
    config = json.loads((hf / "config.json").read_text())
    gen = json.loads((hf / "generation_config.json").read_text())
    for d in (config, gen):  # pad with EOS
        assert (d["bos_token_id"], d["eos_token_id"], d["pad_token_id"]) == (tok.bos_token_id, eos, eos)
    _generates(hf, trust_remote_code=True)


def test_export_without_the_named_tokenizer_says_so(tokenizer_dir, tmp_path):
    ckpt, hf = tmp_path / "ckpt", tmp_path / "hf"
    moved = tmp_path / "moved-tokenizer"
    _checkpoint(ckpt, ARCHS["qwen3"][0], moved)
    err = []
    assert convert_to_hf(ckpt, hf, progress=False, notes=err.append) == "Qwen3ForCausalLM"
    assert len(err) == 1 and err[0].startswith("the export has no tokenizer: ") and str(moved) in err[0], err
    assert "--tokenizer DIR" in err[0]
    assert not any(p.name.startswith("tokenizer") for p in hf.iterdir()), sorted(os.listdir(hf))
    moved.mkdir()  # there, but not a tokenizer: not loadable, said so
    err = []
    assert convert_to_hf(ckpt, tmp_path / "hf1", progress=False, notes=err.append) == "Qwen3ForCausalLM"
    assert len(err) == 1 and "the export has no tokenizer" in err[0] and "AutoTokenizer cannot load" in err[0], err
    assert not (tmp_path / "hf1" / "tokenizer_config.json").exists()
    # an explicit tokenizer wins, and says nothing
    err = []
    assert convert_to_hf(ckpt, tmp_path / "hf2", tokenizer=tokenizer_dir, progress=False, notes=err.append) == "Qwen3ForCausalLM"
    assert err == []
    assert (tmp_path / "hf2" / "tokenizer.json").is_file()
    _generates(tmp_path / "hf2")  # a stock class: no remote code


def test_export_may_not_overlap_the_named_tokenizer(tokenizer_dir, tmp_path):
    from megatron_gatednorm.checkpoint import CheckpointError

    ckpt = tmp_path / "ckpt"
    _checkpoint(ckpt, ARCHS["qwen3"][0], tokenizer_dir)
    out = tokenizer_dir / "hf"
    with pytest.raises(CheckpointError, match="is inside the input tokenizer_model .named in the checkpoint's args"):
        convert_to_hf(ckpt, out, progress=False)
    assert not out.exists()
