"""Recipe → validated layout → Megatron argv → sbatch script. Imports neither torch nor
Megatron, so ``mgn launch`` runs on a login node.

One concern per module:

* :mod:`.recipes` — YAML recipes with ``base:`` inheritance, ``+`` overlays and ``key=value``
  overrides (type coercion, unknown keys rejected with close matches);
* :mod:`.validate` — parallel layout, batch, sequence, token budget → iterations, parameter and
  per-GPU memory estimates; every error is a ValueError naming the field and what would fit;
* :mod:`.argv` — the resolved recipe as Megatron-LM command-line flags (Megatron's own names,
  plugin flags from :data:`megatron_gatednorm.norm_flags.FLAGS`);
* :mod:`.sbatch` — the sbatch script (srun-native or torchrun, signal → save → requeue,
  resume, dependent-job chains) and submission.
"""

from megatron_gatednorm.launch.recipes import Recipe, load_recipe, recipe_dir  # noqa: F401
