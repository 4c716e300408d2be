"""Example 4: a GatedNorm checkpoint exported to Hugging Face, loaded in plain ``transformers``.

    python examples/04_load_exported_in_transformers.py [OUT_DIR]     # default: ./exported_gatednorm

Offline, CPU, about 35 s on 2 cores; writes only under OUT_DIR. Three steps:

1. Make a Megatron checkpoint: a tiny GPTModel (2 layers, hidden 64, GatedNorm in every
   residual-stream norm, gated attention, QK-norm) built with the plugin's specs, saved in
   Megatron-LM's torch_dist layout (what ``mgn train`` / ``mgn small-train`` write with
   ``--save``). Its greedy continuation of a prompt is recorded for step 3.
2. Convert: ``mgn convert to-hf --load OUT/megatron --out OUT/hf``. The folder holds
   ``config.json`` (``architectures: ["GatedNormForCausalLM"]`` with an ``auto_map``),
   safetensors, ``generation_config.json`` and a copy of the model code
   (``modeling_gatednorm.py``, ``configuration_gatednorm.py``; torch + transformers only).
   Add ``--tokenizer DIR`` to copy a tokenizer in; baselines without plugin norms become stock
   ``Qwen3ForCausalLM`` / ``LlamaForCausalLM`` / ``Qwen3MoeForCausalLM`` folders instead.
3. Load and generate in a fresh Python process that imports only torch and transformers:
   ``AutoModelForCausalLM.from_pretrained(OUT/hf, trust_remote_code=True)`` runs the folder's
   own code, so megatron_gatednorm need not be installed where the model is used.
   (Where it is installed, ``import megatron_gatednorm.hf`` registers the architecture with the
   Auto classes and ``trust_remote_code`` is not needed.) Its greedy tokens must equal Megatron's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

PROMPT = [[3, 17, 42, 99, 7, 64, 5, 21]]  # token ids (no tokenizer in this example)
NEW_TOKENS = 8


def make_megatron_checkpoint(ckpt_dir: Path) -> list:
    """Step 1: build, record greedy tokens, save torch_dist. Returns the greedy continuation."""
    import torch

    from megatron_gatednorm.checkpoint import Arch, megatron_args, save_checkpoint
    from megatron_gatednorm.norm_config import NormConfig
    from megatron_gatednorm.distributed import init_distributed
    from megatron_gatednorm.model import build_gpt_model, transformer_config
    from megatron_gatednorm.model_shape import ModelShape

    init_distributed(device="cpu")  # 1-process gloo group + Megatron's parallel state (CPU shim)
    shape = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, kv_channels=16,
                       ffn_hidden_size=128, vocab_size=128, qk_layernorm=True, attention_output_gate=True,
                       max_position_embeddings=32)
    # gate_up_init="init_method": a random W_up, as after training (the default zeros give a constant
    # gate 0.5); init_method_std=0.5 so that an untrained model's greedy tokens are not all the same.
    arch = Arch(shape, NormConfig(variant="gatednorm", rank=4, gate_up_init="init_method"))
    config = transformer_config(shape, arch.norm_config, use_cpu_initialization=True, init_method_std=0.5,
                                **arch.transformer_config_overrides())
    model = build_gpt_model(shape, config).eval()

    tokens = torch.tensor(PROMPT)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            positions = torch.arange(tokens.shape[1]).unsqueeze(0)
            next_token = model(tokens, positions, None)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)

    # megatron_args: the ``args`` namespace Megatron-LM stores in a checkpoint (the converter reads
    # the architecture and the plugin flags from it).
    save_checkpoint(ckpt_dir, 0, model, megatron_args(arch))
    return tokens.tolist()


def generate_with_transformers(hf_dir: str) -> None:
    """Step 3, in its own process: plain transformers, no megatron_gatednorm, no Megatron."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, dtype=torch.float32).eval()
    print(f"loaded {type(model).__name__} from {type(model).__module__} "
          f"({sum(p.numel() for p in model.parameters()):,} parameters)")
    norm = model.model.layers[0].input_layernorm
    print(f"layer 0 input norm: {type(norm).__name__} with {sorted(n for n, _ in norm.named_parameters())}")
    out = model.generate(torch.tensor(PROMPT), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    print(f"transformers generated: {out[0, len(PROMPT[0]):].tolist()}")
    print(f"megatron_gatednorm imported: {'megatron_gatednorm' in sys.modules}, megatron imported: {'megatron' in sys.modules}")
    print("RESULT " + json.dumps(out.tolist()))


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "exported_gatednorm").resolve()
    ckpt, hf = out / "megatron", out / "hf"

    print("1. Megatron checkpoint")
    megatron_tokens = make_megatron_checkpoint(ckpt)
    print(f"   saved {ckpt} (iteration 0); Megatron's greedy continuation: {megatron_tokens[0][len(PROMPT[0]):]}")

    print(f"2. mgn convert to-hf --load {ckpt} --out {hf} --overwrite")
    from megatron_gatednorm.cli import main as mgn

    assert mgn(["convert", "to-hf", "--load", str(ckpt), "--out", str(hf), "--overwrite", "--no-progress"]) == 0
    config = json.loads((hf / "config.json").read_text())
    print(f"   architectures={config['architectures']} norm_variant={config['norm_variant']} "
          f"files={sorted(p.name for p in hf.iterdir())}")

    print("3. AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True) in a fresh process")
    env = dict(os.environ,
               HF_HUB_OFFLINE="1",                          # nothing to download
               HF_MODULES_CACHE=str(out / "hf_modules"))     # transformers copies remote code here
    proc = subprocess.run([sys.executable, __file__, "--generate", str(hf)], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"transformers process failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.splitlines()
    print("\n".join("   " + line for line in lines if not line.startswith("RESULT ")))
    hf_tokens = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT "):])
    same = hf_tokens == megatron_tokens
    print(f"greedy tokens identical in Megatron and transformers: {same}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--generate":
        generate_with_transformers(sys.argv[2])
    else:
        main()
