"""Helpers of ``benchmarks/gpu_check.sh``, one per step; each runs as a script
(``python3 benchmarks/gpu_check/<helper>.py``) and imports as ``benchmarks.gpu_check.<helper>``."""
