"""The package as a user gets it: build a wheel, install it into a fresh venv, and run ``mgn`` from
another directory — the launch recipes must come from the installed package data
(``megatron_gatednorm/recipes``), not from this checkout.

Dependencies: by default the venv reuses the packages of the interpreter running the tests (torch,
megatron-core, pyyaml, numpy …) through a ``.pth`` file listing its site-packages directories,
appended after the venv's own site-packages, so the wheel's ``megatron_gatednorm`` wins over this
checkout's editable install (asserted). ``--system-site-packages`` is not used: when the tests run
in a venv (``make test``: ``.venv``) it would expose the *base* interpreter's packages, not the
venv's. ``MGN_WHEEL_TEST_ISOLATED=1`` instead installs the wheel with its declared dependencies
(``[megatron]`` extra, ``torch==2.13.0``) from the package index — slower, and it checks the
declared dependencies too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ISOLATED = os.environ.get("MGN_WHEEL_TEST_ISOLATED") == "1"
TORCH_PIN = "torch==2.13.0"


def _run(cmd, cwd, env=None, timeout=600, check=True):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _clean_env():
    """The environment for the installed ``mgn``: nothing that points back at this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MGN_RECIPE_DIR", "PYTHONHOME")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources: an in-place build would reuse ``build/`` (stale files of
    renamed modules) and race with other builds of this checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "megatron_gatednorm", src / "megatron_gatednorm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src],
         cwd=tmp_path)
    (wheel,) = dist.glob("megatron_gatednorm-*.whl")
    return wheel


def _site_dirs():
    """Site-packages directories of the interpreter running the tests, in sys.path order."""
    dirs = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    purelib = sysconfig.get_paths()["purelib"]
    return dirs if purelib in dirs else dirs + [purelib]


def _install(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    if ISOLATED:
        _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
        _run([py, "-m", "pip", "install", "-q", TORCH_PIN, f"{wheel}[megatron]"], cwd=tmp_path, env=_clean_env())
        return venv
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    # pip of this interpreter, installing into the venv (pip >= 22.3); before the .pth below exists,
    # so pip does not see this checkout's editable install as "already satisfied".
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel],
         cwd=tmp_path, env=_clean_env())
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([py, "-c", purelib], cwd=tmp_path).stdout.strip())
    # Plain path lines: appended to sys.path after the venv's site-packages; .pth files in those
    # directories (e.g. the editable install's finder) are not processed.
    (site / "zz_mgn_test_deps.pth").write_text("\n".join(_site_dirs()) + "\n")
    return venv


@pytest.mark.slow
def test_wheel_install_runs_launch_and_params_from_package_data(tmp_path):
    t0 = time.perf_counter()
    wheel = _build_wheel(tmp_path)
    venv = _install(tmp_path, wheel)
    t_install = time.perf_counter() - t0
    mgn, py = venv / "bin" / "mgn", venv / "bin" / "python"
    work = tmp_path / "work"  # another directory: neither the checkout nor the venv
    work.mkdir()
    env = _clean_env()

    where = _run([py, "-c", "import megatron_gatednorm, sys; print(megatron_gatednorm.__file__); "
                            "from megatron_gatednorm.launch.recipes import recipe_dir; print(recipe_dir())"],
                 cwd=work, env=env).stdout.split()
    pkg = Path(where[0]).resolve()
    assert venv.resolve() in pkg.parents, f"imported {pkg}, not the wheel's package in {venv}"
    assert Path(where[1]).resolve() == pkg.parent / "recipes"

    # mgn launch: the built-in recipe from the installed package data; no torch/Megatron import
    out = _run([mgn, "launch", "tiny", "--nodes", "1", "--dry-run", "launch.device=cpu", "launch.gpus_per_node=2"],
               cwd=work, env=env).stdout
    tiny = pkg.parent / "recipes" / "tiny.yaml"
    assert f"# recipe        tiny  ({tiny})" in out.splitlines(), out[:2000]
    assert "#SBATCH --ntasks-per-node=2" in out.splitlines()
    code = ("import sys; from megatron_gatednorm.commands import launch; from megatron_gatednorm.cli import main; "
            "rc = main(['launch', 'dense2b_gatednorm+clip100', '--nodes', '4', 'data_path=/d']); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'triton')]; "
            "sys.exit(rc or (3 if bad else 0))")
    _run([py, "-c", code], cwd=work, env=env)

    # a user's recipe directory: it extends a built-in recipe; a typo'd name is one line, exit 2
    user = tmp_path / "my_recipes"
    user.mkdir()
    user = user.resolve()
    (user / "tiny_lr.yaml").write_text("base: tiny\nmegatron: {lr: 3.0e-4}\n")
    out = _run([mgn, "launch", "tiny_lr+clip100", "--recipe-dir", user, "--nodes", "1", "--dry-run",
                "launch.device=cpu"], cwd=work, env=env).stdout
    assert f"({tiny} + {user / 'tiny_lr.yaml'} + {pkg.parent / 'recipes' / 'overlays' / 'clip100.yaml'})" in out
    assert " --lr 0.0003 " in out
    bad = _run([mgn, "launch", "tiny_rl", "--recipe-dir", user, "--nodes", "1", "--dry-run"],
               cwd=work, env=env, check=False)
    assert bad.returncode == 2 and bad.stdout == "", bad.stdout + bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mgn launch: error: invalid recipe='tiny_rl': no such file in "), lines
    assert f"{user} (--recipe-dir)" in lines[0] and f"{pkg.parent / 'recipes'} (built-in)" in lines[0]
    assert "did you mean tiny_lr" in lines[0]

    # mgn params: builds the paper's 2B model with Megatron on the meta device
    out = _run([mgn, "params", "--variants", "gatednorm"], cwd=work, env=env).stdout
    assert "model dense-2b: baseline (RMSNorm) 1,779,302,400 parameters" in out, out[-2000:]
    row = next(line.split() for line in out.splitlines() if line.startswith("gatednorm "))
    assert row[4] == row[-1] == "1,779,253,248", row  # analytic params == built count

    print(f"wheel build + venv install {t_install:.1f} s, total {time.perf_counter() - t0:.1f} s "
          f"({'isolated' if ISOLATED else 'reusing the test interpreter packages'})")
