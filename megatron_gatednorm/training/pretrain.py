"""Training entry point: ``python -m megatron_gatednorm.training.pretrain <Megatron-LM flags>`` (or ``mgn train``).

Wraps ``megatron.training.pretrain`` with

* ``extra_args_provider`` = :func:`megatron_gatednorm.training.flags.add_train_args` (the plugin's
  ``--norm-variant``, ``--gatednorm-*`` … flags), and
* :func:`model_provider`, which builds a ``GPTModel`` from Megatron's parsed arguments with the
  plugin's block spec (:func:`megatron_gatednorm.specs.get_gatednorm_block_spec`), or, where they
  carry ``--hybrid-layer-pattern`` (megatron-core >= 0.18), a ``HybridModel`` with the plugin's
  hybrid stack spec (:func:`megatron_gatednorm.hybrid_specs.build_hybrid_model`; upstream's
  ``pretrain_hybrid.py`` path with the plugin's specs instead of ``--spec``).

The GPT ``forward_step`` and dataset provider (the same for both models) are the plugin's own
(:mod:`megatron_gatednorm.training.gpt_step`, on megatron-core's dataset and broadcast APIs).
``megatron.training`` itself ships in megatron-core wheels from 0.17 on; with 0.16 it comes from
a Megatron-LM checkout on ``PYTHONPATH``.

It runs on CUDA unless ``MGN_DEVICE=cpu`` (an ``mgn launch`` job exports its recipe's
``launch.device``): a node whose CUDA is broken stops before Megatron initialises, naming why.
A CPU process gets :func:`megatron_gatednorm.cpu_shim.apply_pretrain_cpu_shim` (gloo, no CUDA
bookkeeping) before ``pretrain`` starts.

``pretrain()`` changed shape twice; :func:`main` picks the call by its signature:

* ≤ 0.17: ``pretrain(datasets_provider, model_provider, model_type, forward_step,
  extra_args_provider=..., args_defaults=...)``;
* ≥ 0.18: ``parse_and_validate_args(extra_args_provider=...)``, then
  ``pretrain(cfg_container, datasets_provider, model_type, forward_step, model_provider=...)``.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import List, Optional

from megatron_gatednorm.hybrid_pattern import GPT_ONLY_FLAGS, gpt_only_value_set
from megatron_gatednorm.device import backend
from megatron_gatednorm.launch.ranks import torch_env_from_slurm
from megatron_gatednorm.training.flags import add_train_args

ARGS_DEFAULTS = {"tokenizer_type": "GPT2BPETokenizer"}  # as upstream pretrain_gpt.py


def model_provider(pre_process: bool = True, post_process: bool = True, vp_stage: Optional[int] = None,
                   config=None, pg_collection=None):
    """This pipeline (and virtual pipeline) stage's model with the plugin's norms: a ``GPTModel``,
    or with ``--hybrid-layer-pattern`` (megatron-core >= 0.18) a ``HybridModel``
    (:func:`megatron_gatednorm.hybrid_specs.build_hybrid_model`).

    Accepts every call shape of Megatron-LM's ``get_model`` (0.16: ``pre_process,
    post_process, vp_stage``; 0.19: also ``config`` and ``pg_collection``).
    """
    import torch
    from megatron.training import get_args, print_rank_0
    from megatron.training.arguments import core_transformer_config_from_args

    from megatron_gatednorm.norm_flags import norm_config_from_args

    args = get_args()
    pattern = getattr(args, "hybrid_layer_pattern", None)
    check_model_args(args)
    nc = norm_config_from_args(args)
    if config is None:
        config = core_transformer_config_from_args(args)
    config.norm_config = nc
    if getattr(args, "ffn_activation", "swiglu") == "glu":
        if not config.gated_linear_unit:
            raise ValueError("invalid --ffn-activation=glu without --swiglu: GLU needs a gated FFN; add --swiglu")
        config.activation_func = torch.sigmoid
        config.bias_activation_fusion = False
    use_te = args.transformer_impl == "transformer_engine"
    print_rank_0(f"building {'HybridModel' if pattern else 'GPT model'} with megatron-gatednorm ({nc.variant}, rank "
                 f"{nc.rank}, placement {','.join(nc.placement)}, {'TE' if use_te else 'local'} layers)")
    kwargs = dict(
        pre_process=pre_process,
        post_process=post_process,
        fp16_lm_cross_entropy=args.fp16_lm_cross_entropy,
        parallel_output=True,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
    )
    if pg_collection is not None:
        kwargs["pg_collection"] = pg_collection
    if pattern:
        from megatron_gatednorm.hybrid_specs import build_hybrid_model

        return build_hybrid_model(config, pattern, args.padded_vocab_size, args.max_position_embeddings, nc,
                                  use_transformer_engine=use_te, vp_stage=vp_stage, **kwargs)
    return _gpt_model(config, nc, use_te, vp_stage, args, kwargs)


def _gpt_model(config, nc, use_te: bool, vp_stage: Optional[int], args, kwargs: dict):
    """The ``GPTModel`` of :func:`model_provider` (``kwargs``: the arguments both models take)."""
    from megatron.core.models.gpt import GPTModel

    from megatron_gatednorm.specs import get_gatednorm_block_spec

    spec = get_gatednorm_block_spec(config, nc, use_transformer_engine=use_te, vp_stage=vp_stage)
    kwargs = dict(kwargs, config=config, transformer_layer_spec=spec, vocab_size=args.padded_vocab_size,
                  max_sequence_length=args.max_position_embeddings, rope_scaling=args.use_rope_scaling)
    accepted = inspect.signature(GPTModel.__init__).parameters
    if "vp_stage" in accepted:
        kwargs["vp_stage"] = vp_stage
    if "pg_collection" not in accepted:
        kwargs.pop("pg_collection", None)
    return GPTModel(**kwargs)


def check_model_args(args) -> None:
    """Refuse what the model :func:`model_provider` would build cannot honour: with
    ``--hybrid-layer-pattern``, GPTModel-only switches (ValueError naming the flag)."""
    pattern = getattr(args, "hybrid_layer_pattern", None)
    if not pattern:
        return
    for name, why in GPT_ONLY_FLAGS.items():
        value, flag = getattr(args, name, None), "--" + name.replace("_", "-")
        if gpt_only_value_set(name, value):
            raise ValueError(f"invalid {flag}={value!r} with --hybrid-layer-pattern={pattern!r}: {why}; valid: "
                             f"omit {flag} (or omit the pattern for a GPTModel)")


def check_hybrid_available(argv: List[str]) -> None:
    """``--hybrid-layer-pattern`` on a megatron-core without ``HybridModel`` (< 0.18): one line
    naming the requirement, before Megatron's parser rejects the flag it does not know."""
    import importlib.util

    if not any(a == "--hybrid-layer-pattern" or a.startswith("--hybrid-layer-pattern=") for a in argv):
        return
    if importlib.util.find_spec("megatron.core.models.hybrid") is not None:
        return
    from megatron.core import package_info

    raise ValueError(f"invalid --hybrid-layer-pattern with megatron-core {package_info.__version__}: HybridModel "
                     "needs megatron-core >= 0.18 (pip install 'megatron-core>=0.18'); valid here: no pattern "
                     "(launch.model=gpt, the GPTModel hybrid with --experimental-attention-variant gated_delta_net)")


def pretrain_call_style(pretrain) -> str:
    """``"legacy"`` (≤ 0.17, args parsed inside pretrain) or ``"container"`` (≥ 0.18)."""
    params = inspect.signature(pretrain).parameters
    return "container" if "cfg_container" in params else "legacy"


def _check_device() -> str:
    """Megatron-LM training runs on CUDA: unless ``MGN_DEVICE=cpu`` asks for the CPU, a node
    whose CUDA is broken (or shows fewer GPUs than local ranks) stops here with the reason,
    before Megatron initialises NCCL. Returns the device."""
    from megatron_gatednorm.device import check_device, requested_device

    device, setting = requested_device(default="cuda")
    check_device(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), setting)
    return device


def _use_prebuilt_dataset_helpers() -> None:
    """megatron-core wheels ship the dataset index helpers compiled (``helpers_cpp``) but not their
    Makefile, and ``initialize._compile_dependencies`` runs ``make`` there on rank 0 and exits when
    it fails: where the compiled module imports, there is nothing to build."""
    try:
        from megatron.core.datasets import helpers_cpp  # noqa: F401
    except ImportError:
        return
    from megatron.core.datasets import utils

    utils.compile_helpers = lambda: None


INSTALL_MEGATRON_TRAINING = (
    "install megatron-core >= 0.17 (it ships megatron.training: pip install 'megatron-core>=0.17'), or put a "
    "Megatron-LM checkout on PYTHONPATH (megatron-core 0.16)")


def _megatron_training_missing() -> Optional[str]:
    """Why ``megatron.training`` cannot be imported, or None when it can."""
    import importlib

    try:
        importlib.import_module("megatron.training")
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _plugin_help() -> str:
    """``mgn train --help`` where megatron.training is missing: the plugin's flags and what to install."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="mgn train", add_help=False, usage="mgn train <Megatron-LM flags> [plugin flags]",
        description="Megatron-LM's pretrain() with the plugin's layer specs; every argument goes to Megatron-LM's "
                    "parser. Megatron-LM's own flags are listed by 'mgn train --help' once megatron.training "
                    f"is importable; here it is not: {INSTALL_MEGATRON_TRAINING}.")
    add_train_args(parser)
    return parser.format_help()


def _megatron_help() -> str:
    """Megatron-LM's parser with the plugin's flags, formatted. A help string with a bare ``%``
    (megatron-core 0.19.2 has one) is escaped instead of failing the whole help."""
    import argparse

    from megatron.training.arguments import add_megatron_arguments

    parser = argparse.ArgumentParser(prog="mgn train", description="Megatron-LM Arguments (+ megatron-gatednorm)",
                                     allow_abbrev=False)
    parser = add_train_args(add_megatron_arguments(parser))
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            try:
                formatter._expand_help(action)
            except (ValueError, TypeError, KeyError):
                action.help = action.help.replace("%", "%%")
    return parser.format_help()


def main(argv: Optional[List[str]] = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    missing = _megatron_training_missing()
    if any(a in ("-h", "--help") for a in sys.argv[1:]):  # no device needed
        print(_plugin_help() if missing else _megatron_help(), end="")
        return 0
    torch_env_from_slurm()
    device = _check_device()  # a broken CUDA node is named first, before anything else is needed
    if missing:
        raise ValueError(f"mgn train needs megatron.training, which cannot be imported ({missing}); "
                         f"{INSTALL_MEGATRON_TRAINING}")
    check_hybrid_available(sys.argv[1:])
    if "--distributed-backend" not in sys.argv:  # the collectives follow the device: gloo for CPU tensors
        sys.argv += ["--distributed-backend", backend(device)]
    if device == "cpu":
        from megatron_gatednorm.cpu_shim import apply_pretrain_cpu_shim

        apply_pretrain_cpu_shim()
    from megatron.core.enums import ModelType
    from megatron.training import pretrain

    from megatron_gatednorm.training import gpt_step as gpt

    _use_prebuilt_dataset_helpers()

    datasets_provider = gpt.train_valid_test_datasets_provider
    if pretrain_call_style(pretrain) == "legacy":
        pretrain(
            train_valid_test_dataset_provider=datasets_provider,
            model_provider=model_provider,
            model_type=ModelType.encoder_or_decoder,
            forward_step_func=gpt.forward_step,
            extra_args_provider=add_train_args,
            args_defaults=ARGS_DEFAULTS,
        )
        return 0
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.arguments import parse_and_validate_args

    args = parse_and_validate_args(extra_args_provider=add_train_args, args_defaults=ARGS_DEFAULTS)
    check_model_args(args)  # before pretrain() initialises anything
    cfg = pretrain_cfg_container_from_args(args, None)  # no model config: model_provider builds
    pretrain(cfg, train_valid_test_dataset_provider=datasets_provider, model_type=ModelType.encoder_or_decoder,
             forward_step_func=gpt.forward_step, model_provider=model_provider)
    return 0


if __name__ == "__main__":
    sys.exit(main())
