"""Fake quantization for low-bit robustness evaluation (NVFP4 W4A4, INT4/INT8, SmoothQuant)."""
