"""Training: the production adapter around Megatron-LM's ``pretrain()`` and a small trainer.

* :mod:`.pretrain` — production: ``mgn train`` / ``python -m megatron_gatednorm.training.pretrain``,
  Megatron-LM's own loop with the plugin's model provider and flags;
* :mod:`.flags` — the flags that entry point adds to Megatron's parser (torch-free: the
  launcher validates recipes against them);
* :mod:`.small_trainer` — a tool for small runs (tests, ``mgn experiment``, CPU demos): a plain
  torch loop over the same model code, not Megatron-LM's.
* :mod:`.preflight` — the checks every rank of an ``mgn launch`` job runs before training
  (``mgn preflight``): world size, device, rendezvous, meta-device shard, parameter total, fused norms.

Imports nothing at package import, so ``mgn launch`` can read :mod:`.flags` without torch.
"""
