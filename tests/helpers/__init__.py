"""Helpers shared by the test modules (imported as ``helpers.<module>``; tests/ is on sys.path):

* :mod:`.processes` — free ports and running the torchrun workers of ``tests/workers``;
* :mod:`.small_runs` — the small trainer's flags for the 2-layer test model;
* :mod:`.slurm_cluster` — the local Slurm cluster the Slurm tests submit to;
* :mod:`.mcore019` — setup shared by the workers that run in .venv-mcore019;
* :mod:`.interpreter_traffic` — the bytes a kernel moves, counted in Triton's interpreter.

Multi-process workers live in ``tests/workers``; fixtures in ``tests/conftest.py``.
"""
