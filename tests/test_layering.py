"""The package's architecture, checked: which modules may import which (every import, also
those inside functions), and what the launcher side loads at run time.

Layers, bottom to top: ``ops`` (kernels + eager reference) ← ``norms`` ← ``specs`` ← ``model`` ←
``training``; ``checkpoint`` is below both ``training`` and ``convert``; ``commands`` and
``cli`` are the top and nothing imports them; ``hf`` (the exported modeling code) is
self-contained; ``launch`` imports neither torch nor Megatron.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "megatron_gatednorm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


MODULES = {_module_name(p): set(_imports(p)) for p in sorted(PKG.rglob("*.py"))}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# (importer prefix, forbidden import prefixes, why)
RULES = [
    ("megatron_gatednorm.ops", ["megatron_gatednorm.norms", "megatron_gatednorm.specs", "megatron_gatednorm.model",
                                "megatron_gatednorm.training", "megatron", "megatron_gatednorm.checkpoint"],
     "kernels and their eager reference depend on nothing above them"),
    ("megatron_gatednorm.norms", ["megatron_gatednorm.specs", "megatron_gatednorm.model", "megatron_gatednorm.training"],
     "norm modules sit below the specs"),
    ("megatron_gatednorm.specs", ["megatron_gatednorm.model", "megatron_gatednorm.training",
                                  "megatron_gatednorm.convert", "megatron_gatednorm.checkpoint"],
     "specs sit below model building and training"),
    ("megatron_gatednorm.checkpoint", ["megatron_gatednorm.training", "megatron_gatednorm.convert"],
     "training and conversion both depend on the checkpoint format, not it on them"),
    ("megatron_gatednorm.training", ["megatron_gatednorm.convert"], "training does not need the converters"),
    ("megatron_gatednorm.hf", ["megatron_gatednorm", "megatron"],
     "the exported modeling code is self-contained (it is copied into every HF folder)"),
    ("megatron_gatednorm.launch", ["torch", "megatron", "triton"], "mgn launch runs on a login node"),
]


@pytest.mark.parametrize("importer, forbidden, why", RULES, ids=[r[0].split(".", 1)[-1] for r in RULES])
def test_import_direction(importer, forbidden, why):
    bad = sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items() if _within(module, importer)
        for name in names
        if any(_within(name, f) for f in forbidden) and not _within(name, importer)
    )
    assert not bad, f"{why}:\n" + "\n".join(bad)


def test_nothing_imports_the_command_line():
    """``commands`` parse and print; library code never calls back into them or into ``cli``."""
    bad = sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if not (_within(module, "megatron_gatednorm.commands") or module == "megatron_gatednorm.cli")
        for name in names
        if _within(name, "megatron_gatednorm.commands") or _within(name, "megatron_gatednorm.cli")
    )
    assert not bad, "\n".join(bad)


def test_commands_do_not_call_the_cli():
    bad = sorted(module for module, names in MODULES.items()
                 if _within(module, "megatron_gatednorm.commands") and any(_within(n, "megatron_gatednorm.cli") for n in names))
    assert not bad, bad


def test_launcher_side_loads_neither_torch_nor_megatron():
    """At run time, not only statically: the torch-free modules, then a whole ``mgn launch --dry-run``."""
    code = (
        "import sys, io, contextlib, megatron_gatednorm, megatron_gatednorm.norm_flags, megatron_gatednorm.norm_config, "
        "megatron_gatednorm.model_shape, megatron_gatednorm.parity, megatron_gatednorm.paper, "
        "megatron_gatednorm.training.flags, megatron_gatednorm.launch, megatron_gatednorm.launch.validate, "
        "megatron_gatednorm.launch.argv, megatron_gatednorm.launch.sbatch, megatron_gatednorm.launch.ranks, "
        "megatron_gatednorm.launch.memory, megatron_gatednorm.launch.plan, megatron_gatednorm.training.preflight, "
        "megatron_gatednorm.cli\n"
        "from megatron_gatednorm.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['launch', 'dense2b_gatednorm+clip100', '--nodes', '4', '--dry-run', 'data_path=/d'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'triton'))\n"
        "print(rc, bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "0 []", out.stdout + out.stderr


def test_building_the_parser_imports_no_torch():
    """``mgn --help`` (every subcommand's parser) stays cheap: no torch, Megatron, transformers or numpy."""
    code = (
        "import sys; from megatron_gatednorm.cli import build_parser; build_parser(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'transformers', 'numpy')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
