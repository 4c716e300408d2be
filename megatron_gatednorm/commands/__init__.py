"""Subcommands of ``mgn`` (see megatron_gatednorm.cli)."""
