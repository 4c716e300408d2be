"""Megatron-LM checkpoints (torch_dist): the format, read and written — the one place that knows it.

Layout, as ``megatron.training`` writes and ``--load`` reads it::

    <dir>/latest_checkpointed_iteration.txt      # "<iteration>"            (paths)
    <dir>/iter_0000100/                          # dist_checkpointing (torch_dist)
        common.pt                                # args, iteration, checkpoint_version (common_state)
        metadata.json, .metadata, __*_*.distcp   # model tensors under their global keys (layout)

(megatron-core >= 0.19 writes no ``common.pt``: the same dict is the ``common_state`` object in
the torch_dist files; both are read.)

Modules, each one concern:

* :mod:`.paths` — tracker file and iteration folders;
* :mod:`.common_state` — the pickled ``args``, read leniently across megatron-core versions;
* :mod:`.arch` — ``args`` ⇄ :class:`Arch` (model shape, norm config, Megatron's extra fields);
* :mod:`.layout` — stacked/sharded dist-ckpt keys ⇄ per-layer, per-expert names (Gated DeltaNet parts);
* :mod:`.read` / :mod:`.write` — offline and live-model reading and writing;
* :mod:`.atomic_dir` — output folders that appear whole or not at all, outside their inputs;
* :mod:`.manifest` — the integrity record (``.mgn-manifest.json``: size + sha256 per file)
  written into every folder the project makes, checked on read and before ``--overwrite``.

Training (``megatron_gatednorm.training``) and conversion (``megatron_gatednorm.convert``) both
depend on this package; it depends on neither.
"""

from megatron_gatednorm.checkpoint.arch import Arch, arch_from_args, megatron_args
from megatron_gatednorm.checkpoint.atomic_dir import atomic_output_dir, check_outside_inputs
from megatron_gatednorm.checkpoint.errors import CheckpointError
from megatron_gatednorm.checkpoint.layout import Tensors, stack, unstack
from megatron_gatednorm.checkpoint.manifest import MANIFEST, verify_manifest, write_manifest
from megatron_gatednorm.checkpoint.paths import TRACKER, iteration_dir, iteration_path
from megatron_gatednorm.checkpoint.read import load_megatron_checkpoint, read_checkpoint
from megatron_gatednorm.checkpoint.write import commit, save_checkpoint, save_model, write_checkpoint

__all__ = [
    "Arch", "CheckpointError", "MANIFEST", "TRACKER", "Tensors", "arch_from_args", "atomic_output_dir",
    "check_outside_inputs", "commit", "iteration_dir", "iteration_path", "load_megatron_checkpoint",
    "megatron_args", "read_checkpoint", "save_checkpoint", "save_model", "stack", "unstack",
    "verify_manifest", "write_checkpoint", "write_manifest",
]
