"""The sbatch script of a :class:`~.validate.Plan`, and its submission.

The script's text is the template ``templates/job.sbatch`` (package data); :func:`render` computes
the values (``#SBATCH`` header, srun/torchrun commands, environment, Megatron argv, resolved
recipe) and fills its ``@{name}`` placeholders. What the script does, in order:

1. ``#SBATCH`` header: nodes, one task per GPU (srun-native) or per node (torchrun), GPUs,
   ``--time``, ``--signal=B:<SIG>@<lead>`` (to the batch shell only), ``--requeue``,
   ``--open-mode=append`` (a requeued run appends to the same log);
2. ``MASTER_ADDR`` = first host of ``scontrol show hostnames``; ``MASTER_PORT`` = 20000 +
   job id mod 20000 (no collisions between jobs sharing a node); ``MGN_DEVICE`` = ``launch.device``
   (the tasks fail on a node whose CUDA is broken instead of falling back to the CPU);
3. writes the resolved recipe to ``$RUN_DIR/recipe.json`` (read by ``mgn preflight``);
4. resume: reports the iteration in ``$SAVE/latest_checkpointed_iteration.txt`` (Megatron's
   tracker; ``--load`` is ``--save``) and exits at once if it already reached ``train_iters``;
5. ``mgn preflight`` on every rank (rendezvous, layout, parameter count on the meta device);
6. training in the background (``wait`` returns when the trap fires). On the signal the trap
   sends SIGTERM to the job steps (``scancel --signal=TERM``: a SIGTERM to ``srun`` itself would
   kill the tasks; ``slurmstepd`` logs "STEP CANCELLED" but sends no SIGKILL after KillWait: a
   task kept running 45 s after it with KillWait=30 on slurm 22.05); Megatron's ``--exit-signal-handler`` saves a checkpoint and
   exits; the script then requeues the job (up to ``launch.max_requeues``) if the run is not
   finished. Longer runs are also covered by a chain of ``--dependency=afterany`` jobs.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import shlex
import string
import subprocess
from typing import Dict, List, Optional, Union

from megatron_gatednorm.device import DEVICE_ENV
from megatron_gatednorm.launch.argv import megatron_argv

DEFAULT_ENV = {
    # Megatron's overlap of TP communication with compute needs a single hardware queue.
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "NCCL_DEBUG": "WARN",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "PYTHONFAULTHANDLER": "1",
    "OMP_NUM_THREADS": "1",
}

TEMPLATE = "job.sbatch"  # in megatron_gatednorm/launch/templates/


def _q(value) -> str:
    return shlex.quote(str(value))


def _slurm_q(value, always: bool = False) -> str:
    """``value`` as an ``#SBATCH`` argument: sbatch splits those lines on blanks and strips double
    quotes (no ``$`` expansion, no escapes), so a value with a blank (or any path, ``always``) is
    double-quoted; a double quote or a line break cannot be written there."""
    text = str(value)
    if '"' in text or "\n" in text or "\r" in text:
        raise ValueError(f"invalid #SBATCH value {text!r}: contains a double quote or a line break; "
                         "valid: a value without them")
    return f'"{text}"' if always or any(c.isspace() for c in text) else text


def _slurm_path(path: str) -> str:
    """A literal path in an ``#SBATCH --output`` pattern: ``%`` is Slurm's placeholder, ``%%`` a literal."""
    return path.replace("%", "%%")


def header_lines(plan) -> List[str]:
    r, launch, slurm = plan.recipe, plan.recipe.launch, plan.recipe.slurm
    tasks = launch["gpus_per_node"] if launch["launcher"] == "srun" else 1
    run_dir = plan.derived["run_dir"]
    lines = [
        f"--job-name={_slurm_q(slurm.get('job_name') or r.name)}",
        f"--nodes={plan.nodes}",
        f"--ntasks-per-node={tasks}",
    ]
    if launch["device"] == "cuda":
        lines.append(f"--gpus-per-node={launch['gpus_per_node']}")
    if slurm.get("cpus_per_task"):
        lines.append(f"--cpus-per-task={slurm['cpus_per_task']}")
    if slurm.get("mem") is not None:
        lines.append(f"--mem={_slurm_q(slurm['mem'])}")
    lines.append(f"--time={_slurm_q(slurm['time'])}")
    for key in ("partition", "account", "qos"):
        if slurm.get(key):
            lines.append(f"--{key}={_slurm_q(slurm[key])}")
    if slurm.get("exclusive"):
        lines.append("--exclusive")
    lines += [
        f"--signal=B:{launch['signal']}@{int(launch['signal_lead_s'])}",
        "--requeue",
        "--open-mode=append",
        "--output=" + _slurm_q(f"{_slurm_path(run_dir)}/logs/%x-%j.out", always=True),
    ]
    lines += [str(x) for x in slurm.get("extra") or []]
    return [f"#SBATCH {line}" for line in lines]


def _srun_prefix(plan) -> List[str]:
    launch = plan.recipe.launch
    srun = ["srun", "--kill-on-bad-exit=1"]
    if launch["launcher"] == "srun":
        srun.append(f"--ntasks-per-node={launch['gpus_per_node']}")
    else:
        srun.append("--ntasks-per-node=1")
    if launch.get("container_image"):
        srun.append(f"--container-image={_q(launch['container_image'])}")
        if launch.get("container_mounts"):
            srun.append(f"--container-mounts={_q(launch['container_mounts'])}")
        workdir = launch.get("container_workdir")
        srun.append(f"--container-workdir={_q(workdir)}" if workdir else '--container-workdir="$PWD"')
    return srun


def _python_cmd(plan, module_args: List[str]) -> List[str]:
    """The per-task command: srun-native runs Python directly; torchrun starts the ranks."""
    launch = plan.recipe.launch
    py = _q(launch["python"])
    if launch["launcher"] == "srun":
        return [py] + module_args
    return [py, "-m", "torch.distributed.run", "--nnodes=$SLURM_NNODES",
            f"--nproc-per-node={launch['gpus_per_node']}", "--rdzv-backend=c10d",
            '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"', '--rdzv-id="$SLURM_JOB_ID"'] + module_args


class ScriptTemplate(string.Template):
    """``@{name}`` placeholders, so that bash's own ``$`` stays literal (``@`` followed by anything
    but ``{`` is literal too: ``"${ARGS[@]}"``); ``@{`` not followed by a name and ``}`` is an error."""

    delimiter = "@"
    pattern = r"@(?:(?P<escaped>(?!))|(?P<named>(?!))|\{(?P<braced>[a-z_]+)\}|(?P<invalid>\{))"


@functools.lru_cache(maxsize=None)
def job_template() -> str:
    """The job script template, package data ``megatron_gatednorm/launch/templates/job.sbatch``."""
    return (importlib.resources.files("megatron_gatednorm.launch") / "templates" / TEMPLATE).read_text(encoding="utf-8")


def fill(template: str, values: Dict[str, Union[str, List[str]]]) -> str:
    """``template`` with its placeholders filled: a line that is only ``@{name}`` with a list value
    becomes those lines (none: the line is dropped); string values are substituted in place."""
    scalars = {k: v for k, v in values.items() if isinstance(v, str)}
    out: List[str] = []
    for line in template.splitlines():
        block = values.get(line[2:-1]) if line.startswith("@{") and line.endswith("}") else None
        if isinstance(block, list):
            out += block
        else:
            out.append(ScriptTemplate(line).substitute(scalars))
    return "\n".join(out) + "\n"


def render(plan) -> str:
    """The sbatch script (bash) for ``plan``: :func:`job_template` filled with the plan's values."""
    r, launch = plan.recipe, plan.recipe.launch
    m = plan.megatron
    run_dir = plan.derived["run_dir"]
    argv = megatron_argv(plan)
    # MGN_DEVICE: every task (preflight, small trainer, mgn train) runs on the recipe's device or fails.
    env = {**DEFAULT_ENV, **{k: str(v) for k, v in r.env.items() if v is not None}, DEVICE_ENV: launch["device"]}
    if launch["device"] == "cpu":
        env.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    pythonpath = [p for p in (launch.get("megatron_lm_path"), launch.get("pythonpath")) if p]
    exports = [f"export {k}={_q(v)}" for k, v in env.items()]
    if pythonpath:
        exports.append(f'export PYTHONPATH={_q(":".join(pythonpath))}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    resolved = r.to_dict()
    resolved["launch"]["run_dir"] = run_dir  # absolute: ranks may start in another directory
    recipe_json = json.dumps(dict(recipe=resolved, nodes=plan.nodes,
                                  gpu_memory_gb=plan.derived["gpu_memory_gb"]), sort_keys=True)
    entry = [_q(a) for a in shlex.split(launch["entrypoint"])]
    srun = " ".join(_srun_prefix(plan))
    preflight: List[str] = []
    if launch["preflight"]:
        cmd = _python_cmd(plan, ["-m", "megatron_gatednorm.cli", "preflight", "--recipe-json", '"$RUN_DIR/recipe.json"'])
        preflight = [
            "# Preflight on every rank: rendezvous, layout, parameter count (fails fast, naming the rank).",
            f"{srun} {' '.join(cmd)} || {{ echo \"mgn: preflight failed\"; exit 3; }}",
            "",
        ]
    train = _python_cmd(plan, entry + ['"${MEGATRON_ARGS[@]}"'])
    return fill(job_template(), dict(
        name=r.name,
        overrides=" ".join(shlex.quote(o) for o in r.overrides),
        nodes=str(plan.nodes),
        recipe_dir_flags="".join(f" --recipe-dir {shlex.quote(d)}" for d in r.recipe_dirs),
        sbatch_header=header_lines(plan),
        run_dir=_q(run_dir),
        save=_q(m["save"]),
        train_iters=str(int(m["train_iters"])),
        max_requeues=str(int(launch["max_requeues"])),
        exports=exports,
        recipe_json=recipe_json,
        preflight=preflight,
        megatron_args=[f"  {_q(a)}" for a in argv],
        signal=str(launch["signal"]),
        srun=srun,
        train=" ".join(train),
    ))


def _prepare(run_dir: str, path: str, script: str):
    """Create the run directory's ``sbatch/`` and ``logs/`` (Slurm opens ``--output`` before the
    script runs) and write the script; returns an undo function that puts back what was there."""
    created: List[str] = []
    for d in (os.path.join(run_dir, "sbatch"), os.path.join(run_dir, "logs")):
        missing = []
        while not os.path.isdir(d):
            missing.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        for m in reversed(missing):
            os.mkdir(m)
            created.append(m)
    old: Optional[bytes] = None
    if os.path.isfile(path):
        with open(path, "rb") as f:
            old = f.read()
    with open(path, "w") as f:
        f.write(script)

    def undo() -> None:
        if old is None:
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(old)
        for d in reversed(created):
            try:
                os.rmdir(d)
            except OSError:  # not empty: something else wrote there meanwhile
                pass

    return undo


def submit(plan, script: str, sbatch: str = "sbatch") -> List[str]:
    """Write the script under ``$RUN_DIR/sbatch/`` (and create ``$RUN_DIR/logs/``) and submit
    ``chain_jobs`` jobs, each depending (afterany) on the previous one. Returns the job ids.

    If the first submission fails, the directories and the script file are removed again (a
    script that was there before gets its old content back): a refused job leaves nothing behind.
    """
    run_dir = plan.derived["run_dir"]
    path = os.path.join(run_dir, "sbatch", f"{plan.recipe.name}.sbatch")
    undo = _prepare(run_dir, path, script)
    ids: List[str] = []
    previous: Optional[str] = None
    for _ in range(plan.derived["chain_jobs"]):
        cmd = [sbatch, "--parsable"]
        if previous:
            cmd.append(f"--dependency=afterany:{previous}")
        cmd.append(path)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            if not ids:
                undo()
            raise ValueError(f"sbatch={sbatch!r} not found; valid: run --submit where Slurm's sbatch is on PATH "
                             f"(or --dry-run here)") from None
        if out.returncode != 0:
            if not ids:
                undo()
            done = f" (already submitted: {', '.join(ids)})" if ids else ""
            message = " ".join(out.stderr.split()) or " ".join(out.stdout.split()) or "no message"
            raise ValueError(f"{' '.join(cmd)} failed (rc {out.returncode}): {message}{done}")
        previous = out.stdout.strip().split(";")[0]
        ids.append(previous)
    return ids
