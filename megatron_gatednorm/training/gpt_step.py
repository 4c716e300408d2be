"""The GPT pieces ``megatron.training.pretrain`` needs besides the model: :func:`forward_step`
(one micro-batch through the model, with its loss function) and
:func:`train_valid_test_datasets_provider` (Megatron's ``GPTDataset``/``MockGPTDataset`` through
``BlendedMegatronDatasetBuilder``), written against megatron-core's APIs so ``mgn train`` needs
no Megatron-LM checkout.

Supported: tensor/data parallelism (with sequence parallelism), no pipeline or context
parallelism, no packed sequences (``cu_seqlens``), no multi-token prediction.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Iterator, Optional

import torch

_INT_KEYS = ("tokens", "labels", "position_ids")


def _is_data_rank() -> bool:
    """The dataset and data loader live on tensor-parallel rank 0; the other TP ranks receive
    each micro-batch by broadcast (:func:`get_batch`)."""
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_rank() == 0


def get_batch(data_iterator: Optional[Iterator]) -> Dict[str, torch.Tensor]:
    """The next micro-batch on every rank of the tensor-parallel group: read on TP rank 0,
    broadcast to the others (``tensor_parallel.broadcast_data``)."""
    from megatron.core import tensor_parallel

    data = next(data_iterator) if _is_data_rank() else None
    batch = tensor_parallel.broadcast_data(list(_INT_KEYS), data, torch.int64)
    batch.update(tensor_parallel.broadcast_data(["loss_mask"], data, torch.float32))
    return batch


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Sum of the masked per-token losses, the token count, and ``{'lm loss': [sum, count]}``:
    the 3-tuple form, so Megatron averages over the tokens of the whole global batch."""
    from megatron.core.rerun_state_machine import get_rerun_state_machine
    from megatron.training import get_args

    losses = output_tensor.view(-1).float()
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    if get_args().check_for_nan_in_loss_and_grad:
        machine = get_rerun_state_machine()
        machine.validate_result(result=loss, rejection_func=torch.isnan,
                                message="found NaN in local forward loss calculation",
                                tolerance=0.0, fatal=True)
        machine.validate_result(result=loss, rejection_func=torch.isinf,
                                message="found Inf in local forward loss calculation",
                                tolerance=0.0, fatal=True)
    reporting = torch.stack([loss.detach().clone(), num_tokens.to(loss.dtype)])
    return loss, num_tokens, {"lm loss": reporting}


def forward_step(data_iterator, model):
    """One micro-batch: the model's per-token losses and the loss function that reduces them."""
    from megatron.training import get_timers

    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    batch = get_batch(data_iterator)
    timers("batch-generator").stop()
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"])


def _dataset_config(args):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    from megatron.training import get_tokenizer
    from megatron.training.utils import get_blend_and_blend_per_split

    from megatron_gatednorm.data.build import identity_cache_path

    blend, blend_per_split = get_blend_and_blend_per_split(args)
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=args.split,
        num_dataset_builder_threads=args.num_dataset_builder_threads,
        path_to_cache=args.data_cache_path or identity_cache_path(
            args.data_path or (args.train_data_path or []) + (args.valid_data_path or []) + (args.test_data_path or [])),
        mmap_bin_files=args.mmap_bin_files,
        tokenizer=get_tokenizer(),
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=False,  # causal masks are built in the attention layers
        mid_level_dataset_surplus=args.mid_level_dataset_surplus,
    )


def train_valid_test_datasets_provider(train_val_test_num_samples):
    """Megatron's GPT datasets (mock with ``--mock-data``), built on TP rank 0 only."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, MockGPTDataset
    from megatron.training import get_args, print_rank_0

    args = get_args()
    unsupported = dict(pipeline_model_parallel_size=1, context_parallel_size=1)
    for name, value in unsupported.items():
        if getattr(args, name) != value:
            raise ValueError(f"invalid --{name.replace('_', '-')}={getattr(args, name)}: "
                             f"megatron_gatednorm's forward_step supports only {value}")
    cls = MockGPTDataset if args.mock_data else GPTDataset
    print_rank_0(f"> building {cls.__name__} train, validation and test datasets ...")
    train, valid, test = BlendedMegatronDatasetBuilder(
        cls, train_val_test_num_samples, _is_data_rank, _dataset_config(args)).build()
    return train, valid, test


train_valid_test_datasets_provider.is_distributed = True  # every rank calls it (builds on TP rank 0)
