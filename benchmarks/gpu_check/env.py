"""Step 1 of gpu_check.sh: the machine the check ran on. Records Python, torch (and its CUDA),
Triton, whether CUDA is usable, the GPU (name, compute capability, SMs, memory, L2), the
driver and clocks from nvidia-smi, the kernel release (Firecracker vs gVisor decides whether ncu
can read counters), ncu and nvcc versions, and which optional packages are importable
(Transformer Engine and apex are expected absent, megatron-core absent until step 2).
``--requirements DIST`` (step 2) checks that an installed distribution's requirements are there.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys

try:  # imported as benchmarks.gpu_check.<helper> (the tests)
    from . import _common as C
except ImportError:  # run as a script: its folder is sys.path[0]
    import _common as C


def _run(cmd, timeout=20):
    """First lines of a command's output, or why it did not run."""
    if not shutil.which(cmd[0]):
        return f"absent: {cmd[0]} not on PATH"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"failed: {type(e).__name__}: {e}"
    text = (p.stdout or p.stderr).strip()
    return text if p.returncode == 0 else f"rc {p.returncode}: {text[-500:]}"


# distribution name -> module name
PACKAGES = {"triton": "triton", "megatron-core": "megatron.core", "transformer-engine": "transformer_engine",
            "apex": "apex", "numpy": "numpy"}


def _package(dist, module):
    """The installed version, None if the module is not importable."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except ImportError:  # a missing parent package
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "importable (no metadata)"


def collect():
    import torch

    info = {
        "python": sys.version.split()[0], "executable": sys.executable,
        "kernel_release": platform.release(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda": {"available": torch.cuda.is_available()},
        "packages": {d: _package(d, m) for d, m in PACKAGES.items()},
        "nvidia_smi": _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,"
                            "clocks.max.mem", "--format=csv,noheader"]),
        "ncu": _run(["ncu", "--version"]).splitlines()[-1:],
        "nvcc": _run(["nvcc", "--version"]).splitlines()[-1:],
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("TRITON_", "MGN_", "CUDA_", "GPU_CHECK_")) or k == "PYTHONPATH"},
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["cuda"].update(
            name=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1), l2_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1),
        )
    else:
        info["cuda"]["reason"] = C.cuda_or_reason()
    return info


def requirements(dist) -> int:
    """Print a NOTE line: ``dist``'s version and each of its requirements (METADATA Requires-Dist,
    extras left out) with the installed version; rc 1 if one is not installed."""
    try:
        meta = importlib.metadata.metadata(dist)
    except importlib.metadata.PackageNotFoundError:
        print(f"NOTE: {dist} is not installed")
        return 1
    found, missing = [], 0
    for req in meta.get_all("Requires-Dist") or []:
        if "extra ==" in req:
            continue
        spec = req.split(";")[0].strip()
        name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
        try:
            found.append(f"{spec}: {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{spec}: MISSING")
            missing += 1
    print(f"NOTE: {dist} {meta['Version']}; requires " + (", ".join(found) or "nothing"))
    return 1 if missing else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="JSON file to write")
    p.add_argument("--requirements", metavar="DIST", help="only check that DIST's requirements are installed")
    args = p.parse_args(argv)
    if args.requirements:
        return requirements(args.requirements)
    if not args.out:
        p.error("--out or --requirements is required")
    info = collect()
    with open(args.out, "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))
    gpu = info["cuda"].get("name") or "no CUDA device"
    print(f"NOTE: {gpu}, torch {info['torch']} (CUDA {info['torch_cuda']}), triton {info['packages']['triton']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
