"""Run by tests/test_train_entry.py inside .venv-mcore019: megatron.training's own checkpoint
code around ``mgn convert``. The tiny GatedNorm recipe in fp32 with zero-centred gamma is built
through ``megatron_gatednorm.training.pretrain.model_provider`` from Megatron-LM's parsed args.

``save DIR OUT``: move every weight off its initial value and save with
``megatron.training.checkpointing.save_checkpoint`` (iteration 7, no optimizer/RNG);
``finetune DIR OUT`` / ``resume DIR OUT``: build a model from another seed and load DIR with
``load_checkpoint``, as ``--finetune`` does and as a start point without it (the checkpoint's args
are then checked against the run's). Under ``torchrun --nproc-per-node 2`` the model is built and
loaded at TP=2. Rank 0 writes the (gathered) logits on fixed tokens and the loaded iteration as
JSON to OUT."""

import json
import os
import sys

from helpers.mcore019 import init_single_process, parse  # noqa: E402
from workers._common import perturb  # noqa: E402

TOKENS, VOCAB = 16, 256


def main():
    mode, ckpt, out_path = sys.argv[1:4]
    import torch
    import torch.distributed as dist
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
    from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator
    from megatron.training import arguments as megatron_arguments
    from megatron.training import checkpointing
    from megatron.training.global_vars import set_args

    from megatron_gatednorm.training import pretrain as train
    from megatron_gatednorm.launch.plan import build
    from megatron_gatednorm.launch.argv import megatron_argv

    tp = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" in os.environ:  # torchrun: the whole world is one tensor-parallel group
        from megatron_gatednorm.distributed import init_distributed

        init_distributed(tensor_model_parallel_size=tp, device="cpu")
    else:
        init_single_process()
    rank_env = {k: os.environ[k] for k in ("RANK", "LOCAL_RANK") if k in os.environ}
    plan, _ = build("tiny+cpu", ["launch.gpus_per_node=1", "global_batch_size=4",
                             f"launch.run_dir={ckpt}.run", "megatron.bf16=false",
                             "megatron.apply_layernorm_1p=true"], 1)
    # validate_args reads the GPU's compute capability for TP > 1 (a CUDA_DEVICE_MAX_CONNECTIONS
    # hint, which Blackwell does not need); there is no GPU here
    megatron_arguments.get_device_arch_version = lambda: 10
    args = parse(megatron_argv(plan) + ["--tensor-model-parallel-size", str(tp)], tp, True)
    os.environ.update(rank_env)  # parse() poses as rank 0
    args.rank = dist.get_rank()
    args.padded_vocab_size = plan.derived["padded_vocab_size"]
    args.save = args.load = ckpt
    args.no_save_optim = args.no_save_rng = args.no_load_optim = args.no_load_rng = True
    args.finetune = mode == "finetune"
    args.async_save = False
    set_args(args)
    init_num_microbatches_calculator(0, None, args.global_batch_size, args.micro_batch_size, args.data_parallel_size)
    torch.manual_seed(1 if mode == "save" else 2)
    model = train.model_provider(pre_process=True, post_process=True)
    model.eval()
    if mode == "save":
        perturb(model)
        checkpointing.save_checkpoint(7, [model], None, None, 0)
        iteration = 7
    else:
        iteration, _ = checkpointing.load_checkpoint([model], None, None)
    tokens = (torch.arange(TOKENS) * 7 % VOCAB).unsqueeze(0)
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(model(tokens, torch.arange(TOKENS).unsqueeze(0), None))
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(dict(logits=logits.tolist(), iteration=iteration, tokens=tokens.tolist(), tp=tp), f)
    # every rank leaves together with gloo's threads joined (a CI run once saw rank 1 abort in
    # interpreter teardown: "terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":  # the checkpoint writer's helper processes re-import this module
    main()
