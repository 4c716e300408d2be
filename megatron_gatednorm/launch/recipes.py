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
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

SECTIONS = ("megatron", "gatednorm", "launch", "slurm", "env")
TOP_KEYS = ("base", "description", "paper_model", "layouts", "choices") + SECTIONS

def _setting(default, doc: str = "", *, choices: Tuple[Any, ...] = (), min: Optional[float] = None,
             max: Optional[float] = None):
    """A section field: its default and what the check accepts (``choices``, ``min``/``max``)."""
    meta = dict(choices=choices, min=min, max=max)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class LaunchSection:
    """The ``launch:`` section: launcher settings. The defaults here are the only ones; a recipe's
    ``launch:`` overrides them. Each field's docstring: meaning, type, valid values."""

    gpus_per_node: int = _setting(8, min=1)
    """Ranks per node, one per GPU. int >= 1."""
    device: str = _setting("cuda", choices=("cuda", "cpu"))
    """cuda or cpu (cpu: no GPU request, gloo; for smoke tests). str, one of cuda, cpu."""
    model: str = _setting("gpt", choices=("gpt", "hybrid"))
    """gpt: Megatron's ``GPTModel`` (the Gated DeltaNet hybrid through ``experimental_attention_variant``);
    hybrid: megatron-core >= 0.18's ``HybridModel`` with ``megatron.hybrid_layer_pattern``, or, where
    that is unset, the pattern of the recipe's GPT layers (each a mixer and an FFN layer; one ``|``
    segment per pipeline stage or virtual stage). str, one of gpt, hybrid."""
    launcher: str = _setting("srun", choices=("srun", "torchrun"))
    """srun (one task per GPU) or torchrun (one task per node). str, one of srun, torchrun."""
    train_tokens: Optional[float] = _setting(None, min=1)
    """Token budget → ``train_iters`` (unless ``megatron.train_iters`` is set). number >= 1, or null."""
    parameter_parity: bool = _setting(True)
    """Lower the FFN width so the variant has the baseline's parameter count. bool."""
    gpu_memory_gb: float = _setting(80.0, min=0)
    """Memory per GPU the estimate is checked against, GiB. number > 0."""
    activation_memory_factor: float = _setting(1.0, min=0)
    """Scale on the activation-memory estimate (calibrate per cluster). number >= 0."""
    run_dir: str = _setting("runs/{name}")
    """Checkpoints, logs, TensorBoard; ``{name}`` is the recipe name; relative → to the cwd. str (a path)."""
    python: str = _setting("python3")
    """Interpreter on the compute nodes. str (a command or path)."""
    entrypoint: str = _setting("-m megatron_gatednorm.training.pretrain")
    """What the interpreter runs (split like a shell would). str."""
    preflight: bool = _setting(True)
    """Run ``mgn preflight`` on every rank before training. bool."""
    megatron_lm_path: Optional[str] = _setting(None)
    """Optional: a Megatron-LM checkout prepended to PYTHONPATH, only for a megatron-core without
    ``megatron.training`` (< 0.17). str (a path) or null."""
    pythonpath: Optional[str] = _setting(None)
    """Extra PYTHONPATH entries (e.g. this checkout). str or null."""
    container_image: Optional[str] = _setting(None)
    """pyxis/enroot image (.sqsh path or registry reference). str or null."""
    container_mounts: Optional[str] = _setting(None)
    """pyxis mounts, ``src:dst,src:dst``. str or null."""
    container_workdir: Optional[str] = _setting(None)
    """Working directory in the container (null: the submission directory). str or null."""
    signal: str = _setting("USR1")
    """Signal sent to the batch shell before the time limit (Slurm name without SIG). str."""
    signal_lead_s: int = _setting(600, min=0)
    """… this many seconds ahead (Slurm may send it up to 60 s early). int >= 0, < slurm.time."""
    max_requeues: int = _setting(20, min=0)
    """Requeue after a signalled save at most this many times. int >= 0."""
    chain_jobs: Union[int, str] = _setting("auto", choices=("auto",))
    """Dependent jobs (afterany): ``auto`` = estimated hours / time limit. auto or an int >= 1 (the
    range is checked with the runtime estimate)."""
    tflops_per_gpu: float = _setting(300.0, min=0)
    """Effective throughput for the runtime estimate, TFLOP/s (H100 bf16: 300). number > 0."""
    wandb_project: Optional[str] = _setting(None)
    """Set → ``--wandb-project``/``--wandb-exp-name`` (needs WANDB_API_KEY on the nodes). str or null."""
    wandb_exp_name: Optional[str] = _setting(None)
    """W&B run name (null: the recipe name). str or null."""


@dataclass
class SlurmSection:
    """The ``slurm:`` section: sbatch fields (defaults here only)."""

    job_name: Optional[str] = _setting(None)
    """``--job-name`` (null: the recipe name). str or null."""
    time: str = _setting("04:00:00")
    """``--time``: MM, HH:MM:SS or D-HH:MM:SS (quote it in YAML: 04:00:00 unquoted is a number). str."""
    partition: Optional[str] = _setting(None)
    """``--partition``. str or null."""
    account: Optional[str] = _setting(None)
    """``--account``. str or null."""
    qos: Optional[str] = _setting(None)
    """``--qos``. str or null."""
    exclusive: bool = _setting(True)
    """``--exclusive`` (whole nodes). bool."""
    cpus_per_task: Optional[int] = _setting(None, min=1)
    """``--cpus-per-task`` (null: the cluster's default). int >= 1 or null."""
    mem: Optional[Union[str, int]] = _setting(None)
    """``--mem``, e.g. "0" for all of a node's memory. str, int or null."""
    extra: List[str] = _setting([])
    """Raw ``#SBATCH`` arguments, e.g. ["--exclude=node[1-2]"]. list of str."""


def section_defaults(cls) -> Dict[str, Any]:
    """``{field: default}`` of a section dataclass (a fresh copy)."""
    return dataclasses.asdict(cls())


SECTION_CLASSES = {"launch": LaunchSection, "slurm": SlurmSection}


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


class _StrictLoader(yaml.SafeLoader):
    """yaml's SafeLoader, but a mapping with a key twice is an error (yaml keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: Dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: yaml's own error below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(path) -> Any:
    """A recipe file's YAML (duplicate keys refused); ValueError ``invalid YAML in <file> line N: <problem>``."""
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        context = getattr(e, "context", None)
        if context and "duplicate" not in problem:
            problem = f"{' '.join(str(context).split())}: {problem}"
        raise ValueError(f"invalid YAML in {path}{where}: {problem}") from None


def _note_origins(data: dict, path, origins: Dict[str, str]) -> None:
    """Record ``section.key`` (and ``layouts.N.key``) → the file that set it."""
    for section in SECTIONS:
        if isinstance(data.get(section), dict):
            for key in data[section]:
                origins[f"{section}.{key}"] = str(path)
    if isinstance(data.get("layouts"), dict):
        for n, layout in data["layouts"].items():
            for key in (layout if isinstance(layout, dict) else {}):
                origins[f"layouts.{n}.{key}"] = str(path)


def _read(path, root, dirs, sources: List[str], depth: int = 0, origins: Optional[Dict[str, str]] = None) -> dict:
    if depth > 8:
        raise ValueError(f"invalid base in {path}: inheritance deeper than 8 (a cycle?)")
    data = load_yaml(path) or {}
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
        merged = _read(base_path, base_root, dirs, sources, depth + 1, origins)
    for key in SECTIONS + ("layouts", "choices"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ValueError(f"invalid {key} in {path}: expected a mapping (key: value lines), got "
                             f"{type(data[key]).__name__}")
    if origins is not None:
        _note_origins(data, path, origins)
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
    origins: Dict[str, str] = {}
    data = _read(*_find(parts[0], dirs), dirs, sources, origins=origins)
    for overlay in parts[1:]:
        body = _read(*_find(overlay, dirs), dirs, sources, origins=origins)
        if "layouts" in body:
            data.pop("layouts", None)
        data = _merge(data, body)
    sections = {s: dict(data.get(s) or {}) for s in SECTIONS}
    for name, cls in SECTION_CLASSES.items():
        sections[name] = {**section_defaults(cls), **sections[name]}
    _check_gatednorm_keys(sections["gatednorm"], "recipe")
    for name, cls in SECTION_CLASSES.items():
        _check_keys(sections[name], section_defaults(cls), name, "recipe")
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
        layout = select_layout(recipe, nodes)
        n = max(k for k in recipe.layouts if k <= nodes) if layout else None
        for key in layout:
            origins[f"megatron.{key}"] = origins.get(f"layouts.{n}.{key}", "layouts")
        recipe.megatron.update(layout)
    for item in overrides:
        apply_override(recipe, item)
        key = item.split("=", 1)[0].strip()
        for where in [key] + [f"{s}.{key}" for s in SECTIONS]:
            origins[where] = f"override {item}"
    check_recipe(recipe, origins)
    return recipe


def _origin(origins: Dict[str, str], key: str) -> str:
    return origins.get(key) or "the defaults"


def _field_error(key: str, value: Any, origin: str, problem: str) -> ValueError:
    """``invalid key=value<problem> (in <file>)``; ``problem`` starts with ``: `` or ``; valid: ``."""
    return ValueError(f"invalid {key}={value!r}{problem} (in {origin})")


def _check_typed(section_name: str, values: Dict[str, Any], cls, origins: Dict[str, str]) -> None:
    """Each value of a ``launch:``/``slurm:`` section against its dataclass field: type, choices, range."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, value = f"{section_name}.{f.name}", values.get(f.name)
        problem = _typed_problem(value, hints[f.name], f.metadata)
        if problem:
            raise _field_error(key, value, _origin(origins, key), problem)


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(tp) in (list, List):
        return f"a list of {_type_name(args[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _typed_problem(value: Any, tp, meta) -> Optional[str]:
    """None if ``value`` fits type ``tp`` and the field's ``choices``/``min``/``max``, else the problem."""
    choices, lo, hi = meta.get("choices") or (), meta.get("min"), meta.get("max")
    bounds = (f" >= {lo:g}" if lo is not None else "") + (f" <= {hi:g}" if hi is not None else "")
    valid = " or ".join([", ".join(map(str, choices))] * bool(choices) + [_type_name(tp) + bounds])
    only_choices = choices and int not in typing.get_args(tp)
    if typing.get_origin(tp) is Union and type(None) in typing.get_args(tp) and value is None:
        return None
    alternatives = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is Union else [tp]
    for alt in alternatives:
        if alt is bool and isinstance(value, bool):
            return None
        if typing.get_origin(alt) in (list, List):
            if isinstance(value, list) and all(isinstance(x, str) for x in value):
                return None
            continue
        if alt is str and isinstance(value, str):
            if only_choices and value not in choices:
                return f"; valid: {', '.join(map(str, choices))}"
            if choices and value not in choices and not value.strip().isdigit():
                continue
            return None
        if alt in (int, float) and not isinstance(value, bool):
            number = value
            if isinstance(value, str):  # YAML reads 1e9 as a string; Megatron-style parsing
                try:
                    number = alt(value)
                except ValueError:
                    continue
            if alt is int and not (isinstance(number, int) or (isinstance(value, str) and number == int(number))):
                continue
            if alt is float and not isinstance(number, (int, float)):
                continue
            if (lo is not None and number < lo) or (hi is not None and number > hi):
                return f": must be{bounds}"
            return None
    return f": expected {_type_name(tp)}; valid: {valid}"


def _check_megatron(key_prefix: str, values: Dict[str, Any], flags, origins: Dict[str, str]) -> None:
    from megatron_gatednorm.launch.megatron_flags import check_value, unknown_flag_hint

    for name, value in values.items():
        key = f"{key_prefix}.{name}"
        origin = _origin(origins, key)
        if name not in flags:
            raise ValueError(f"invalid {key}: not a Megatron-LM flag (in {origin}); {unknown_flag_hint(name, flags)}")
        problem = check_value(name, value, flags[name])
        if problem:
            raise _field_error(key, value, origin, problem)


def check_recipe(recipe: Recipe, origins: Optional[Dict[str, str]] = None) -> None:
    """Every section before anything is rendered: ``megatron:`` (and each layout) keys are Megatron
    flags (:mod:`.megatron_flags`: the shipped megatron.training 0.19.2 list, no Megatron import) with
    values its parser accepts; ``launch:``/``slurm:`` values fit their dataclass fields; ``env:`` names
    are environment variable names. Raises ValueError ``invalid <section.key>=<value> (in <file>): …``."""
    from megatron_gatednorm.launch.megatron_flags import known_flags

    origins = origins or {}
    flags = known_flags()
    _check_megatron("megatron", recipe.megatron, flags, origins)
    for n, layout in recipe.layouts.items():
        _check_megatron(f"layouts.{n}", layout, flags, origins)
    for name, cls in SECTION_CLASSES.items():
        _check_typed(name, getattr(recipe, name), cls, origins)
    for name, value in recipe.env.items():
        origin = _origin(origins, f"env.{name}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            raise ValueError(f"invalid env.{name}: not an environment variable name (in {origin}); valid: "
                             "letters, digits and _, not starting with a digit")
        if isinstance(value, (dict, list)):
            raise _field_error(f"env.{name}", value, origin, ": expected a string, number, true/false or null")


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
