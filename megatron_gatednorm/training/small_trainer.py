"""A small, deterministic trainer on megatron-core with the plugin's specs (CPU or one GPU).

For small experiments and CPU smoke runs; production training is ``megatron.training``
(``mgn train``). It takes Megatron-LM's own flag names for everything it supports, so the same
recipe argv drives both; production-only flags it does not implement are refused unless listed
in ``_IGNORED`` (then reported as ignored). Device: ``$MGN_DEVICE`` (``cuda|cpu``; an ``mgn launch``
job exports its recipe's ``launch.device``), else cuda where available; ``MGN_DEVICE=cuda`` on a
node with broken CUDA is an error, never a CPU run (:mod:`megatron_gatednorm.device`).

What it does per iteration: ``global_batch / (micro_batch · DP)`` micro-batches from Megatron's
``GPTDataset`` (the production sampler: seeded shuffle over ``--data-path`` .bin/.idx), forward/
backward of ``GPTModel``, gradient finalisation (TP/SP norm all-reduce as Megatron does it,
then a data-parallel average: dense parameters over DP, expert parameters over expert-DP),
global-norm clipping, AdamW with linear warm-up then cosine/linear/constant decay (Megatron's
weight-decay rule: none on biases and 1-D parameters). Pipeline parallelism is not supported.
``--bf16``: mixed precision as Megatron-LM's ``--bf16`` does it — the model (parameters,
activations, gradients) in bf16, fp32 main parameters beside it that AdamW steps (its moments
fp32 too) and that are copied back, rounded, after every step; the checkpoint holds the bf16
model, the rank's optimizer state the fp32 main parameters (a resume continues exactly).

Checkpoints (``--save``/``--load``): Megatron-LM torch_dist layout (see :mod:`megatron_gatednorm.checkpoint`),
readable by ``mgn convert`` and ``megatron.training``; per-rank optimizer state beside it.
``--exit-signal-handler``: SIGTERM/SIGUSR1 make it save at the end of the iteration and exit 0.
A NaN/Inf loss or gradient norm stops it before that optimizer step (exit 3, the last checkpoint
untouched) unless ``--no-check-for-nan-in-loss-and-grad``, as Megatron-LM does.
Logs: one JSON line per ``--log-interval`` to stdout and ``<save>/train_log.jsonl``: loss, lr,
grad norm, and every ``--outlier-log-interval`` the per-layer peak |h| (also to TensorBoard
with ``--tensorboard-dir``).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from megatron_gatednorm.norm_flags import add_gatednorm_args
from megatron_gatednorm.user_input import OneLineArgumentParser
from megatron_gatednorm.model_shape import add_flags, flags_from_extras, flags_from_shape

# Production flags with no effect on this trainer's math (accepted, reported as ignored).
_IGNORED = (
    "use_distributed_optimizer", "overlap_grad_reduce", "overlap_param_gather", "use_flash_attn",
    "no_gradient_accumulation_fusion", "no_masked_softmax_fusion", "no_bias_swiglu_fusion",
    "no_bias_dropout_fusion", "no_rope_fusion", "no_persist_layer_norm", "ckpt_format",
    "attention_backend", "transformer_impl", "distributed_backend", "use_mcore_models",
)


# Where the small trainer's default differs from Megatron-LM's: the only value the plugin
# supports (its checkpoints must convert; model_shape.check_supported refuses the rest).
_DEFAULTS = dict(normalization="RMSNorm", position_embedding_type="rope")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="mgn small-train", description=__doc__.split("\n")[0])
    g = p.add_argument_group("model", "Megatron-LM's model flags (megatron_gatednorm.model_shape.MEGATRON_FLAGS)")
    add_flags(g, defaults=_DEFAULTS)
    g.add_argument("--seq-length", type=int, required=True)
    g.add_argument("--init-method-std", type=float, default=0.02)
    g.add_argument("--moe-aux-loss-coeff", type=float, default=0.0)
    g.add_argument("--attention-dropout", type=float, default=0.0)
    g.add_argument("--hidden-dropout", type=float, default=0.0)
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, choices=(1,))
    g.add_argument("--context-parallel-size", type=int, default=1, choices=(1,))
    g.add_argument("--expert-model-parallel-size", type=int, default=1)
    g.add_argument("--sequence-parallel", action="store_true")
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, required=True)
    g.add_argument("--global-batch-size", type=int, required=True)
    g.add_argument("--train-iters", type=int, required=True)
    g.add_argument("--lr", type=float, required=True)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-decay-style", default="cosine", choices=("cosine", "linear", "constant"))
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--bf16", action="store_true", help="bf16 model, fp32 main parameters and optimizer (module doc)")
    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="+", default=None, help="train .bin/.idx prefix")
    g.add_argument("--valid-data-path", nargs="+", default=None, help="held-out .bin/.idx prefix")
    g.add_argument("--mock-data", action="store_true", help="Megatron's MockGPTDataset (smoke runs)")
    g.add_argument("--tokenizer-type", default="HuggingFaceTokenizer", choices=("HuggingFaceTokenizer", "NullTokenizer"))
    g.add_argument("--tokenizer-model", default=None, help="HF tokenizer folder (HuggingFaceTokenizer)")
    g.add_argument("--vocab-size", type=int, default=None, help="vocabulary without EOD (NullTokenizer)")
    g.add_argument("--data-cache-path", default=None)
    g = p.add_argument_group("checkpointing and logging")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--exit-signal-handler", action="store_true")
    g.add_argument("--no-check-for-nan-in-loss-and-grad", action="store_false", dest="check_for_nan_in_loss_and_grad",
                   help="do not stop on a non-finite loss or gradient norm (Megatron-LM's flag; checking is the default)")
    g.add_argument("--log-interval", type=int, default=1)
    g.add_argument("--eval-interval", type=int, default=None)
    g.add_argument("--eval-iters", type=int, default=4)
    g.add_argument("--outlier-log-interval", type=int, default=0,
                   help="every N iterations, record the per-layer peak |h| (0: off)")
    g.add_argument("--tensorboard-dir", default=None)
    for name in _IGNORED:
        p.add_argument("--" + name.replace("_", "-"), nargs="?", const=True, default=None, help=argparse.SUPPRESS)
    add_gatednorm_args(p)
    return p


class _Tokenizer:
    """What Megatron's GPTDataset needs of a tokenizer: an HF tokenizer folder, or Megatron's
    NullTokenizer convention (ids 0..vocab_size-1, EOD = vocab_size) for mock data."""

    def __init__(self, args):
        if args.tokenizer_type == "NullTokenizer":
            if args.vocab_size is None:
                raise ValueError("--tokenizer-type NullTokenizer needs --vocab-size")
            self.eod = args.vocab_size
            self.vocab_size = args.vocab_size + 1
            self.unique_identifiers = {"class": "NullTokenizer", "vocab_size": args.vocab_size}
            return
        from megatron_gatednorm.data.tokenizer import TextTokenizer

        if args.tokenizer_model is None:
            raise ValueError("--tokenizer-type HuggingFaceTokenizer needs --tokenizer-model (an HF tokenizer folder)")
        text = TextTokenizer(args.tokenizer_model)
        self.eod = text.eod
        self.vocab_size = text.vocab_size
        self.unique_identifiers = {"class": "TextTokenizer", "folder": str(Path(args.tokenizer_model).resolve())}


def _datasets(args, tokenizer, train_samples: int, valid_samples: int):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    from megatron_gatednorm.data.build import identity_cache_path

    if args.mock_data == bool(args.data_path):
        raise ValueError("give exactly one of --data-path and --mock-data")
    valid = (args.valid_data_path, None) if args.valid_data_path and valid_samples else None
    blend = dict(blend_per_split=[(args.data_path, None), valid, None]) if args.data_path else dict(split="1,0,0")
    config = GPTDatasetConfig(
        random_seed=args.seed, sequence_length=args.seq_length, tokenizer=tokenizer,
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        path_to_cache=args.data_cache_path or identity_cache_path(args.data_path), mmap_bin_files=True, **blend,
    )
    sizes = [train_samples, valid_samples if valid else None, None]
    cls = MockGPTDataset if args.mock_data else GPTDataset
    train, valid_ds, _ = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()
    return train, valid_ds


def _lr_at(args, it: int) -> float:
    if args.lr_warmup_iters and it < args.lr_warmup_iters:
        return args.lr * (it + 1) / args.lr_warmup_iters
    if args.lr_decay_style == "constant":
        return args.lr
    span = max(1, args.train_iters - args.lr_warmup_iters)
    frac = min(1.0, (it - args.lr_warmup_iters) / span)
    if args.lr_decay_style == "linear":
        return args.min_lr + (args.lr - args.min_lr) * (1 - frac)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * frac))


def _param_groups(model, weight_decay: float, main: Optional["_MainParams"] = None):
    """AdamW's groups (no decay on biases and 1-D parameters) of the model's parameters, or of
    their fp32 main copies ``main``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(main.of(p) if main else p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


class _MainParams:
    """fp32 main copies of a bf16 model's parameters (``--bf16``, module doc)."""

    def __init__(self, model):
        self.pairs = [(p, p.detach().float().clone()) for p in model.parameters()]
        self._main = {id(p): m for p, m in self.pairs}

    def of(self, p):
        return self._main[id(p)]

    def grads_to_main(self) -> None:
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.float()

    def main_to_model(self) -> None:
        import torch

        with torch.no_grad():
            for p, m in self.pairs:
                p.copy_(m)

    def state(self) -> list:
        return [m for _, m in self.pairs]

    def load(self, tensors: list) -> None:
        import torch

        assert len(tensors) == len(self.pairs), (len(tensors), len(self.pairs))
        with torch.no_grad():
            for (_, m), t in zip(self.pairs, tensors):
                m.copy_(t)
        self.main_to_model()


def _clip_grad_norm(model, max_norm: float, device) -> float:
    """Global grad norm over the model-parallel group (TP duplicates counted once), clipped.
    The sums stay on ``device`` (NCCL reduces only CUDA tensors; one host sync in all)."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    squares = torch.zeros(2, dtype=torch.float64, device=device)  # [dense, expert]
    grads = []
    for p in model.parameters():
        if p.grad is None:
            continue
        grads.append(p.grad)
        if param_is_not_tensor_parallel_duplicate(p):
            squares[0 if getattr(p, "allreduce", True) else 1] += p.grad.double().pow(2).sum()
    dist.all_reduce(squares[:1], group=parallel_state.get_model_parallel_group())
    dist.all_reduce(squares[1:], group=parallel_state.get_expert_tensor_model_pipeline_parallel_group())
    norm = float(squares.sum().sqrt())
    if max_norm > 0 and norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))
    return norm


class _SignalFlag:
    def __init__(self, enabled: bool):
        self.received: Optional[int] = None
        if enabled:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signum

    def any_rank(self, device) -> bool:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _rank_state_path(root, iteration: int, rank: int) -> Path:
    from megatron_gatednorm.checkpoint import iteration_path

    return iteration_path(root, iteration) / "small_trainer" / f"rank_{rank:05d}.pt"


def _layout(args) -> dict:
    import torch.distributed as dist

    return dict(world=dist.get_world_size(), tp=args.tensor_model_parallel_size, ep=args.expert_model_parallel_size)


def _save(args, iteration, model, optimizer, main, log) -> None:
    import torch
    import torch.distributed as dist

    from megatron_gatednorm.checkpoint import commit, save_model

    folder = save_model(args.save, iteration, model, args)
    path = _rank_state_path(args.save, iteration, dist.get_rank())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(optimizer=optimizer.state_dict(), layout=_layout(args), main_params=main.state() if main else None), path)
    commit(args.save, iteration)
    log(dict(event="save", iteration=iteration, path=str(folder)))


def _resume(args, model, optimizer, main, log) -> int:
    import torch
    import torch.distributed as dist

    from megatron_gatednorm.checkpoint import TRACKER, iteration_path
    from megatron_gatednorm.checkpoint import load_megatron_checkpoint

    if not args.load or not (Path(args.load) / TRACKER).exists():
        if args.load:
            log(dict(event="no_checkpoint", load=args.load))
        return 0
    text = (Path(args.load) / TRACKER).read_text().strip()
    try:
        iteration = int(text)
    except ValueError:
        raise ValueError(f"--load {args.load}: {TRACKER} holds {text!r}, not an iteration number; the checkpoint "
                         "is corrupted: fix or remove that file") from None
    load_megatron_checkpoint(model, args.load)
    rank_state = _rank_state_path(args.load, iteration, dist.get_rank())
    if not rank_state.exists():
        raise ValueError(f"cannot resume from {iteration_path(args.load, iteration)}: no small-trainer "
                         "optimizer state (a megatron.training checkpoint? start a new run from it instead)")
    state = torch.load(rank_state, map_location="cpu", weights_only=False)
    if state["layout"] != _layout(args):
        raise ValueError(f"cannot resume: checkpoint layout {state['layout']} != this run's {_layout(args)}")
    if (state.get("main_params") is not None) != bool(main):
        raise ValueError(f"cannot resume from {iteration_path(args.load, iteration)}: it was trained "
                         f"{'with' if state.get('main_params') is not None else 'without'} --bf16; resume it the same way")
    optimizer.load_state_dict(state["optimizer"])
    if main:
        main.load(state["main_params"])
    log(dict(event="resume", iteration=iteration, path=str(iteration_path(args.load, iteration))))
    return iteration


class NonFiniteError(RuntimeError):
    """A loss or gradient norm that is NaN or infinite: training stops before the optimizer step."""


class _Log:
    """Records as JSON lines on rank 0: stdout, ``<save>/train_log.jsonl`` and TensorBoard scalars."""

    def __init__(self, args, rank: int):
        self.rank = rank
        self.path = Path(args.save) / "train_log.jsonl" if args.save and rank == 0 else None
        self.writer = None
        if args.tensorboard_dir and rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError(f"--tensorboard-dir needs the tensorboard package ({e}); pip install tensorboard") from None
            self.writer = SummaryWriter(args.tensorboard_dir)

    def __call__(self, record: dict) -> None:
        if self.rank != 0:
            return
        line = json.dumps(record)
        print(line, flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def scalar(self, tag: str, value: float, iteration: int) -> None:
        if self.writer:
            self.writer.add_scalar(tag, value, iteration)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


@dataclass
class _Run:
    """Everything one run holds between iterations (built by :func:`_setup`)."""

    args: argparse.Namespace
    device: str
    model: object
    config: object
    optimizer: object
    main: Optional[_MainParams]
    train_ds: object
    valid_ds: object
    dp: int
    dp_rank: int
    n_micro: int
    start: int
    log: _Log
    monitor: object
    summary: dict


def _setup(args) -> _Run:
    """Process groups, model, optimizer (resumed from ``--load``), datasets and logging."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_gatednorm.analysis.peak_monitor import PeakActivationMonitor
    from megatron_gatednorm.checkpoint import arch_from_args
    from megatron_gatednorm.distributed import init_distributed
    from megatron_gatednorm.model import build_gpt_model, transformer_config
    from megatron_gatednorm.norm_flags import norm_config_from_args
    from megatron_gatednorm.parity import padded_vocab

    ignored = [n for n in _IGNORED if getattr(args, n) is not None]
    nc = norm_config_from_args(args)
    # The device: $MGN_DEVICE (a recipe's launch.device), else cuda where available; a broken CUDA
    # under MGN_DEVICE=cuda stops here instead of training on the CPU.
    device = init_distributed(args.tensor_model_parallel_size, 1, args.expert_model_parallel_size, seed=args.seed)
    dp = parallel_state.get_data_parallel_world_size()
    if args.global_batch_size % (args.micro_batch_size * dp):
        raise ValueError(f"invalid --global-batch-size={args.global_batch_size}: not divisible by "
                         f"micro-batch-size x data-parallel size = {args.micro_batch_size * dp}")
    log = _Log(args, dist.get_rank())
    if ignored:
        log(dict(event="ignored_flags", flags=ignored))
    tokenizer = _Tokenizer(args)
    args.padded_vocab_size = padded_vocab(tokenizer.vocab_size, args.make_vocab_size_divisible_by,
                                          args.tensor_model_parallel_size)
    arch = arch_from_args(args, where="small-train flags")
    shape = arch.shape
    # saved with the derived values (as Megatron-LM's validate_args does) and under 0.16's names too
    vars(args).update(flags_from_shape(shape), **flags_from_extras(arch.extras()))
    config = transformer_config(
        shape, nc, **arch.transformer_config_overrides(), bf16=args.bf16, sequence_parallel=args.sequence_parallel,
        init_method_std=args.init_method_std, use_cpu_initialization=device == "cpu",
        moe_aux_loss_coeff=args.moe_aux_loss_coeff, attention_dropout=args.attention_dropout,
        hidden_dropout=args.hidden_dropout,
    )
    model = build_gpt_model(shape, config, max_sequence_length=args.seq_length, rotary_percent=arch.rotary_percent,
                            rotary_base=arch.rotary_base)
    main = _MainParams(model) if args.bf16 else None
    optimizer = torch.optim.AdamW(
        _param_groups(model, args.weight_decay, main), lr=args.lr, betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_eps,
    )
    start = _resume(args, model, optimizer, main, log)
    evals = args.train_iters // args.eval_interval + 1 if args.eval_interval else 1
    train_ds, valid_ds = _datasets(
        args, tokenizer, args.train_iters * args.global_batch_size,
        evals * args.eval_iters * args.micro_batch_size * dp,
    )
    return _Run(
        args=args, device=device, model=model, config=config, optimizer=optimizer, main=main, train_ds=train_ds,
        valid_ds=valid_ds, dp=dp, dp_rank=parallel_state.get_data_parallel_rank(),
        n_micro=args.global_batch_size // (args.micro_batch_size * dp), start=start, log=log,
        monitor=PeakActivationMonitor(model),
        summary=dict(variant=nc.variant, params=sum(p.numel() for p in model.parameters())),
    )


def _micro_loss(run: _Run, ds, first_sample: int):
    """Mean loss over the loss mask of ``micro_batch_size`` samples from ``first_sample`` on."""
    import torch

    args, device = run.args, run.device
    samples = [ds[first_sample + i] for i in range(args.micro_batch_size)]
    tokens, labels, mask = (torch.stack([torch.as_tensor(s[k]) for s in samples]).to(device)
                            for k in ("tokens", "labels", "loss_mask"))
    positions = torch.arange(args.seq_length, device=device).unsqueeze(0).expand_as(tokens)
    losses = run.model(tokens, positions, None, labels=labels)
    return (losses.float() * mask).sum() / mask.sum()


def _evaluate(run: _Run, iteration: int) -> None:
    """Held-out loss over ``--eval-iters`` micro-batches per data-parallel rank."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    args = run.args
    if run.valid_ds is None or args.eval_iters == 0:
        return
    run.model.eval()
    total = torch.zeros(1, device=run.device)
    with torch.no_grad():
        for i in range(args.eval_iters):
            total += _micro_loss(run, run.valid_ds, (i * run.dp + run.dp_rank) * args.micro_batch_size)
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    run.model.train()
    value = float(total) / (args.eval_iters * run.dp)
    run.log(dict(event="eval", iteration=iteration, heldout_loss=value))
    run.summary["heldout_loss"] = value
    run.log.scalar("heldout/loss", value, iteration)


def _train_step(run: _Run, iteration: int) -> dict:
    """One optimizer step (iteration ``iteration`` → ``iteration + 1``); returns its log record.
    Raises :class:`NonFiniteError` before the step if the loss or gradient norm is not finite."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_gatednorm.distributed import finalize_grads

    args, optimizer = run.args, run.optimizer
    lr = _lr_at(args, iteration)
    for group in optimizer.param_groups:
        group["lr"] = lr
    run.model.zero_grad(set_to_none=True)
    track = args.outlier_log_interval and (iteration + 1) % args.outlier_log_interval == 0
    total = torch.zeros(1, device=run.device)
    for m in range(run.n_micro):
        if track and m == run.n_micro - 1:
            run.monitor.arm()
        first = iteration * args.global_batch_size + (run.dp_rank * run.n_micro + m) * args.micro_batch_size
        loss = _micro_loss(run, run.train_ds, first)
        (loss / run.n_micro).backward()
        total += loss.detach().float()
    finalize_grads(run.model, run.config)
    grad_norm = _clip_grad_norm(run.model, args.clip_grad, run.device)
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    loss_value = float(total) / (run.n_micro * run.dp)
    # the same values on every rank (DP-reduced loss, model-parallel-reduced norm): all stop together
    if args.check_for_nan_in_loss_and_grad and not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        raise NonFiniteError(
            f"non-finite values at iteration {iteration + 1}: loss {loss_value}, grad norm {grad_norm}; "
            "stopped before the optimizer step, no checkpoint written for it (lower --lr or raise --lr-warmup-iters, "
            "then resume from the last checkpoint)")
    if run.main:
        run.main.grads_to_main()
    optimizer.step()
    if run.main:
        run.main.main_to_model()
    record = dict(event="train", iteration=iteration + 1, loss=loss_value, lr=lr, grad_norm=grad_norm)
    if track:
        peaks = run.monitor.collect()
        record["peak_activation"] = max(peaks.values())
        record["peak_activation_per_layer"] = peaks
        for name, value in peaks.items():
            run.log.scalar(f"outliers/peak_abs_{name}", value, iteration + 1)
    run.log.scalar("train/loss", loss_value, iteration + 1)
    run.log.scalar("train/grad_norm", grad_norm, iteration + 1)
    return record


def _due(interval: Optional[int], iteration: int) -> bool:
    return bool(interval) and iteration % interval == 0


def check_inputs(args) -> None:
    """The files and numbers of the command line, before any process group or model: a
    ``ValueError`` naming the flag (one line through ``mgn small-train``, exit 2)."""
    from megatron_gatednorm.user_input import at_least, check_output_dir, existing_dir

    for flag in ("--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length", "--micro-batch-size",
                 "--global-batch-size", "--tensor-model-parallel-size", "--expert-model-parallel-size"):
        at_least(getattr(args, flag[2:].replace("-", "_")), 1, flag)
    at_least(args.train_iters, 0, "--train-iters")
    if args.lr < 0:
        raise ValueError(f"--lr={args.lr}: expected a number >= 0")
    if not args.mock_data:
        from megatron_gatednorm.data.windows import open_indexed_dataset

        for flag, paths in (("--data-path", args.data_path), ("--valid-data-path", args.valid_data_path)):
            for prefix in paths or ():
                try:
                    float(prefix)  # a blend weight
                except ValueError:
                    open_indexed_dataset(prefix, flag)
    if args.save:
        check_output_dir(args.save, "--save", contains=False)
    if args.load and Path(args.load).exists():
        existing_dir(args.load, "--load", "checkpoint folder")
    if args.data_cache_path:
        check_output_dir(args.data_cache_path, "--data-cache-path", contains=False)


def train(argv: Optional[List[str]] = None) -> dict:
    """Run the trainer; returns the final summary (also logged)."""
    args = build_parser().parse_args(argv)
    check_inputs(args)
    run = _setup(args)
    log, summary = run.log, run.summary
    flag = _SignalFlag(args.exit_signal_handler)
    log(dict(event="start", iteration=run.start, layout=_layout(args), dp=run.dp, micro_batches=run.n_micro, **summary))
    run.model.train()
    iteration, loss_value, t0 = run.start, None, time.time()
    while iteration < args.train_iters:
        try:
            record = _train_step(run, iteration)
        except NonFiniteError as e:
            log(dict(event="non_finite", iteration=iteration + 1, message=str(e)))
            raise
        iteration, loss_value = record["iteration"], record["loss"]
        if _due(args.log_interval, iteration) or "peak_activation" in record:
            log(record)
        if _due(args.eval_interval, iteration):
            _evaluate(run, iteration)
        stop = flag.any_rank(run.device) if args.exit_signal_handler else False
        if args.save and (_due(args.save_interval, iteration) or stop):
            _save(args, iteration, run.model, run.optimizer, run.main, log)
        if stop:
            log(dict(event="exit_on_signal", iteration=iteration))
            summary.update(exited_on_signal=True, iteration=iteration)
            return summary
    if not _due(args.eval_interval, iteration):
        _evaluate(run, iteration)
    if args.save and not _due(args.save_interval, iteration) and iteration > run.start:
        _save(args, iteration, run.model, run.optimizer, run.main, log)
    from megatron_gatednorm.norms import impl_decisions

    summary.update(iteration=iteration, final_loss=loss_value, seconds=time.time() - t0,
                   norm_paths=impl_decisions(run.model))
    log(dict(event="done", **summary))
    log.close()
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    try:
        train(argv)
    except ValueError as e:
        print(f"small-train: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"small-train: error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
