"""YAML recipes: base + overlays + ``key=value`` overrides → one resolved :class:`Recipe`.

A recipe file has these sections (all optional except where a base provides them):

``base``       name (or path) of the recipe it extends; sections are deep-merged.
``megatron``   Megatron-LM flags in snake_case (``num_layers`` → ``--num-layers``).
``gatednorm``  plugin flags (``norm_variant``, ``gatednorm_rank`` … from ``args.FLAGS``).
``layouts``    node count → parallel settings (Megatron keys) for 1, 4, 16, 64 nodes.
``launch``     launcher settings (token budget, GPUs per node, memory, run directory …).
``slurm``      sbatch fields (``time``, ``partition``, ``account`` …).
``env``        environment variables exported in the job.
``choices``    for each hyper-parameter the paper does not state: the choice and its source.

``mgn launch dense2b_gatednorm+clip100`` applies the overlay ``overlays/clip100.yaml`` on top
of the recipe.

Where recipes are looked for (first match wins): a name that is a file path; then each
``--recipe-dir DIR`` in the order given, each entry of ``MGN_RECIPE_DIR`` (``os.pathsep``-separated),
and the built-in recipes shipped as package data (``megatron_gatednorm/recipes``, read with
:func:`importlib.resources.files`). In each directory ``NAME``, ``NAME.yaml``, ``overlays/NAME`` and
``overlays/NAME.yaml`` are tried. A ``base:`` is looked for next to the file that names it, then in
that file's recipe directory, then like a name on the command line — so a user recipe may extend a
built-in one (``base: dense2b``) or use a built-in overlay, and a built-in recipe's base always
resolves to the built-in one.

Overrides ``key=value`` (or ``section.key=value``) are applied last; a bare key must name an
existing key of exactly one section, and its value is coerced to the type of the value it replaces.
New keys need the explicit section (``megatron.use_flash_attn=true``, ``env.NCCL_DEBUG=INFO``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

SECTIONS = ("megatron", "gatednorm", "launch", "slurm", "env")
TOP_KEYS = ("base", "description", "paper_model", "layouts", "choices") + SECTIONS

# Launcher settings and their defaults (a recipe's ``launch:`` section overrides them).
LAUNCH_DEFAULTS: Dict[str, Any] = dict(
    gpus_per_node=8,            # ranks per node (one per GPU)
    device="cuda",              # cuda | cpu (cpu: no GPU request, gloo; for smoke tests)
    launcher="srun",            # srun (one task per GPU) | torchrun (one task per node)
    train_tokens=None,          # token budget → train_iters (unless megatron.train_iters is set)
    parameter_parity=True,      # lower the FFN width so the variant has the baseline's params
    gpu_memory_gb=80.0,         # memory per GPU the estimate is checked against
    activation_memory_factor=1.0,  # scale on the activation estimate (calibrate per cluster)
    run_dir="runs/{name}",      # checkpoints, logs, tensorboard; relative → to the cwd
    python="python3",           # interpreter on the compute nodes
    entrypoint="-m megatron_gatednorm.training.pretrain",
    preflight=True,             # run `mgn preflight` on every rank before training
    megatron_lm_path=None,      # optional: Megatron-LM checkout on PYTHONPATH (megatron-core < 0.17 only)
    pythonpath=None,            # extra PYTHONPATH entries (e.g. this checkout)
    container_image=None,       # pyxis/enroot image (.sqsh path or registry ref)
    container_mounts=None,      # "src:dst,src:dst"
    container_workdir=None,
    signal="USR1",              # sent to the batch shell before the time limit …
    signal_lead_s=600,          # … this many seconds ahead (Slurm may send it up to 60 s early)
    max_requeues=20,            # requeue after a signalled save at most this many times
    chain_jobs="auto",          # dependent jobs (afterany): auto = estimated hours / time limit
    tflops_per_gpu=300.0,       # effective throughput for the runtime estimate (H100 bf16)
    wandb_project=None,         # set → --wandb-project/--wandb-exp-name (needs WANDB_API_KEY)
    wandb_exp_name=None,
)

SLURM_DEFAULTS: Dict[str, Any] = dict(
    job_name=None,              # default: the recipe name
    time="04:00:00",
    partition=None,
    account=None,
    qos=None,
    exclusive=True,
    cpus_per_task=None,         # default: 16 // ranks? left to the cluster when None
    mem=None,                   # e.g. "0" for all node memory
    extra=[],                   # raw "#SBATCH" arguments, e.g. ["--exclude=node[1-2]"]
)


RECIPE_DIR_ENV = "MGN_RECIPE_DIR"


def recipe_dir():
    """The built-in recipes: package data ``megatron_gatednorm/recipes`` (with ``base/`` and
    ``overlays/``), as an :mod:`importlib.resources` Traversable — a :class:`~pathlib.Path` for a
    regular or editable install."""
    return importlib.resources.files("megatron_gatednorm") / "recipes"


def user_recipe_dirs(recipe_dirs: Sequence[str] = ()) -> List[Tuple[str, Path]]:
    """``(origin, dir)`` of the user's recipe directories, searched before the built-in ones:
    ``recipe_dirs`` (``--recipe-dir``, in order), then the entries of ``MGN_RECIPE_DIR``."""
    given = [("--recipe-dir", d) for d in recipe_dirs]
    given += [(RECIPE_DIR_ENV, d) for d in os.environ.get(RECIPE_DIR_ENV, "").split(os.pathsep) if d]
    out = []
    for origin, d in given:
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise ValueError(f"invalid {origin}={str(d)!r}: not a directory")
        out.append((origin, path))
    return out


def search_dirs(recipe_dirs: Sequence[str] = ()) -> List[Tuple[str, Any]]:
    """``(origin, dir)`` in search order: the user's directories, then ``built-in``."""
    return user_recipe_dirs(recipe_dirs) + [("built-in", recipe_dir())]


def _yaml_stems(d) -> List[str]:
    try:
        return [p.name[: -len(".yaml")] for p in d.iterdir() if p.name.endswith(".yaml") and p.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def available(recipe_dirs: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """(recipe names, overlay names) over all search directories, sorted, without duplicates."""
    dirs = [d for _, d in search_dirs(recipe_dirs)]
    recipes = sorted({n for d in dirs for n in _yaml_stems(d)})
    overlays = sorted({n for d in dirs for n in _yaml_stems(d / "overlays")})
    return recipes, overlays


@dataclass
class Recipe:
    """A recipe after base, overlays and overrides (before layout and validation)."""

    name: str
    megatron: Dict[str, Any]
    gatednorm: Dict[str, Any]
    launch: Dict[str, Any]
    slurm: Dict[str, Any]
    env: Dict[str, Any]
    layouts: Dict[int, Dict[str, Any]]
    choices: Dict[str, str] = field(default_factory=dict)
    paper_model: Optional[str] = None
    description: str = ""
    sources: List[str] = field(default_factory=list)
    overrides: List[str] = field(default_factory=list)
    recipe_dirs: List[str] = field(default_factory=list)  # user recipe directories searched (absolute)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        d = dict(d)
        d["layouts"] = {int(k): v for k, v in d.get("layouts", {}).items()}
        return cls(**d)


def _candidates(d, name: str) -> list:
    return [d / name, d / f"{name}.yaml", d / "overlays" / name, d / "overlays" / f"{name}.yaml"]


def _find(name: str, dirs: Sequence[Tuple[str, Any]], first: Sequence[Any] = ()) -> Tuple[Any, Any]:
    """``(file, recipe directory it was found in)`` for a recipe/overlay/base ``name``.

    ``first``: directories tried before anything else (for a ``base:``, the naming file's folder
    and recipe directory). Raises ValueError naming the recipe, where it was looked for and close
    matches."""
    for d in first:
        if d is not None:
            for c in _candidates(d, name):
                if c.is_file():
                    return c, d
    if Path(name).is_file():
        return Path(name), None
    for _, d in dirs:
        for c in _candidates(d, name):
            if c.is_file():
                return c, d
    known = (sorted({n for _, d in dirs for n in _yaml_stems(d)})
             + sorted({n for _, d in dirs for n in _yaml_stems(d / "overlays")}))
    close = difflib.get_close_matches(Path(name).stem, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(known)}"
    where = ", ".join(f"{d} ({origin})" for origin, d in dirs)
    raise ValueError(f"invalid recipe={name!r}: no such file in {where}{hint}")


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read(path, root, dirs, sources: List[str], depth: int = 0) -> dict:
    if depth > 8:
        raise ValueError(f"invalid base in {path}: inheritance deeper than 8 (a cycle?)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"invalid recipe file {path}: top level must be a mapping")
    for key in data:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(key, TOP_KEYS, n=2)
            raise ValueError(
                f"invalid key {key!r} in {path}: valid top-level keys: {', '.join(TOP_KEYS)}"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
            )
    merged: dict = {}
    if data.get("base"):
        base_path, base_root = _find(str(data["base"]), dirs, first=(path.parent, root))
        merged = _read(base_path, base_root, dirs, sources, depth + 1)
    sources.append(str(path))
    body = {k: v for k, v in data.items() if k != "base"}
    if "layouts" in body:  # a recipe's layouts replace the base's whole table
        merged.pop("layouts", None)
    return _merge(merged, body)


def select_layout(recipe: Recipe, nodes: int) -> Dict[str, Any]:
    """The layout for ``nodes``: the entry with the largest node count <= nodes."""
    if not recipe.layouts:
        return {}
    usable = [n for n in recipe.layouts if n <= nodes]
    if not usable:
        raise ValueError(f"nodes={nodes}: recipe {recipe.name} has layouts for {', '.join(map(str, sorted(recipe.layouts)))} nodes; "
                         f"valid: nodes >= {min(recipe.layouts)}")
    return dict(recipe.layouts[max(usable)])


def load_recipe(spec: str, overrides: Sequence[str] = (), nodes: Optional[int] = None,
                recipe_dirs: Sequence[str] = ()) -> Recipe:
    """Load ``spec`` (``name`` or ``name+overlay+overlay``), merge the layout for ``nodes``
    (if given) into ``megatron``, then apply ``key=value`` overrides (which win over both).
    ``recipe_dirs`` (``--recipe-dir``) and ``MGN_RECIPE_DIR`` are searched before the built-in
    recipes (see the module doc).

    Raises:
        ValueError: unknown recipe/overlay/key (with close matches) or a value of the wrong type.
    """
    parts = [p for p in spec.split("+") if p]
    if not parts:
        raise ValueError(f"invalid recipe={spec!r}: empty")
    dirs = search_dirs(recipe_dirs)
    sources: List[str] = []
    data = _read(*_find(parts[0], dirs), dirs, sources)
    for overlay in parts[1:]:
        body = _read(*_find(overlay, dirs), dirs, sources)
        if "layouts" in body:
            data.pop("layouts", None)
        data = _merge(data, body)
    sections = {s: dict(data.get(s) or {}) for s in SECTIONS}
    sections["launch"] = {**LAUNCH_DEFAULTS, **sections["launch"]}
    sections["slurm"] = {**SLURM_DEFAULTS, **sections["slurm"]}
    _check_gatednorm_keys(sections["gatednorm"], "recipe")
    _check_keys(sections["launch"], LAUNCH_DEFAULTS, "launch", "recipe")
    _check_keys(sections["slurm"], SLURM_DEFAULTS, "slurm", "recipe")
    name = "+".join(Path(p).stem for p in parts)
    recipe = Recipe(
        name=name,
        layouts={int(k): dict(v) for k, v in (data.get("layouts") or {}).items()},
        choices=dict(data.get("choices") or {}),
        paper_model=data.get("paper_model"),
        description=(data.get("description") or "").strip(),
        sources=sources,
        overrides=list(overrides),
        recipe_dirs=[str(d) for origin, d in dirs if origin != "built-in"],
        **sections,
    )
    if nodes is not None:  # the layout's parallel settings, then the overrides on top
        recipe.megatron.update(select_layout(recipe, nodes))
    for item in overrides:
        apply_override(recipe, item)
    return recipe


def _check_keys(section: dict, valid: dict, section_name: str, where: str) -> None:
    for key in section:
        if key not in valid:
            raise unknown_key_error(f"{section_name}.{key}", [f"{section_name}.{k}" for k in valid], where)


def _check_gatednorm_keys(section: dict, where: str) -> None:
    from megatron_gatednorm.training.flags import plugin_flag_dests

    _check_keys(section, dict.fromkeys(plugin_flag_dests()), "gatednorm", where)


def unknown_key_error(key: str, known: Sequence[str], where: str = "override") -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    if not close:  # also try the last component (bare keys vs section.key)
        tail = {k.split(".")[-1]: k for k in known}
        close = [tail[c] for c in difflib.get_close_matches(key.split(".")[-1], list(tail), n=3, cutoff=0.6)]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"invalid {where} key {key!r}: unknown{hint}")


def _yaml_or_str(text: str) -> Any:
    """An untyped override value: YAML scalars/lists, else the text itself (``([0]*3+[1])*12``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(key: str, text: str, like: Any) -> Any:
    """``text`` as the type of ``like`` (the value it replaces); YAML rules when untyped."""
    low = text.strip().lower()
    if low in ("null", "none", "~"):
        return None
    try:
        if isinstance(like, bool):
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if isinstance(like, int):
            value = float(text)
            if value != int(value):
                raise ValueError
            return int(value)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, list):
            value = _yaml_or_str(text)
            if isinstance(value, list):
                return value
            inner = text.strip()
            if inner.startswith("[") and inner.endswith("]"):  # [a,b[1-2]]: not YAML, still a list
                inner = inner[1:-1]
            return [v.strip() for v in inner.split(",") if v.strip()]
        if isinstance(like, str):
            return text
    except ValueError:
        raise ValueError(
            f"invalid {key}={text!r}: expected {type(like).__name__} like the recipe's value {like!r}"
        ) from None
    return _yaml_or_str(text)


def _plugin_defaults() -> Dict[str, Any]:
    """Plugin flag dest → its default (NormConfig's, or TRAIN_FLAGS'), for typing overrides."""
    from megatron_gatednorm.norm_flags import FLAGS, _default
    from megatron_gatednorm.training.flags import TRAIN_FLAGS, dest

    out = {dest(f): _default(field_name) for f, field_name, _ in FLAGS}
    out.update({dest(f): kw.get("default") for f, kw in TRAIN_FLAGS})
    return out


def _known(recipe: Recipe, section_name: str) -> List[str]:
    if section_name == "gatednorm":
        return list(_plugin_defaults())
    return list(getattr(recipe, section_name))


def _all_keys(recipe: Recipe) -> List[str]:
    return [f"{s}.{k}" for s in SECTIONS for k in _known(recipe, s)]


def apply_override(recipe: Recipe, item: str) -> None:
    """Apply one ``key=value`` / ``section.key=value`` / ``layouts.N.key=value`` override."""
    if "=" not in item:
        raise ValueError(f"invalid override {item!r}: expected key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if parts[0] == "layouts":
        if len(parts) != 3 or not parts[1].isdigit():
            raise ValueError(f"invalid override {key!r}: expected layouts.<nodes>.<key>=value")
        layout = recipe.layouts.setdefault(int(parts[1]), {})
        layout[parts[2]] = coerce(key, text, layout.get(parts[2]))
        return
    if parts[0] in SECTIONS and len(parts) >= 2:
        section_name, name = parts[0], ".".join(parts[1:])
        if section_name in ("launch", "slurm", "gatednorm") and name not in _known(recipe, section_name):
            raise unknown_key_error(key, _all_keys(recipe))
    else:
        owners = [s for s in SECTIONS if key in _known(recipe, s)]
        if not owners:
            raise unknown_key_error(key, _all_keys(recipe))
        if len(owners) > 1:
            raise ValueError(
                f"invalid override key {key!r}: ambiguous; use one of "
                + ", ".join(f"{s}.{key}" for s in owners)
            )
        section_name, name = owners[0], key
    section = getattr(recipe, section_name)
    like = section.get(name)
    if like is None and section_name == "gatednorm":
        like = _plugin_defaults().get(name)
    section[name] = coerce(key, text, like) if like is not None else _yaml_or_str(text)
    if section_name == "gatednorm":
        _check_gatednorm_keys(section, "override")
