"""Recipe → validated layout → Megatron argv → sbatch script. Imports neither torch nor
Megatron, so ``mgn launch`` runs on a login node.

One concern per module:

* :mod:`.recipes` — YAML recipes with ``base:`` inheritance, ``+`` overlays and ``key=value``
  overrides (type coercion, unknown keys rejected with close matches); the ``launch:``/``slurm:``
  sections are the dataclasses ``LaunchSection``/``SlurmSection``, and every section is checked;
* :mod:`.megatron_flags` — the valid ``megatron:`` keys (megatron.training 0.19.2's flags, shipped
  as ``megatron_0_19_2_flags.txt``) and their value types, choices and ranges;
* :mod:`.validate` — parallel layout, batch, sequence, token budget → iterations, parameter
  counts, runtime and chained jobs; every error is a ValueError naming the field and what would fit;
* :mod:`.memory` — the per-GPU memory estimate (weights, gradients, optimizer, activations) and
  its formulas;
* :mod:`.argv` — the resolved recipe as Megatron-LM command-line flags (Megatron's own names,
  plugin flags from :data:`megatron_gatednorm.norm_flags.FLAGS`);
* :mod:`.sbatch` — the sbatch script (srun-native or torchrun, signal → save → requeue,
  resume, dependent-job chains), rendered from ``templates/job.sbatch``, and submission;
* :mod:`.plan` — the entry point: recipe name → (plan, script), and the plan's summary;
* :mod:`.ranks` — Slurm's task variables as torch.distributed's.

The checks every rank runs inside the job (``mgn preflight``) are
:mod:`megatron_gatednorm.training.preflight`.
"""

from megatron_gatednorm.launch.recipes import Recipe, load_recipe, recipe_dir

__all__ = ["Recipe", "load_recipe", "recipe_dir"]
