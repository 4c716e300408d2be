"""The rendered sbatch script, submission of dependent-job chains, and the dry-run's parameter
count against the plugin's own model-building count."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_gatednorm.launch.argv import megatron_argv
from megatron_gatednorm.launch.plan import build
from megatron_gatednorm.launch.sbatch import submit

ROOT = Path(__file__).resolve().parents[1]


def script_of(spec, overrides=(), nodes=1):
    return build(spec, ["data_path=/d", "launch.run_dir=/runs/x"] + list(overrides), nodes)[1]


def test_script_header_and_resume_logic():
    s = script_of("dense2b_gatednorm", nodes=4)
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --time=04:00:00", "#SBATCH --signal=B:USR1@600", "#SBATCH --requeue",
                 "#SBATCH --open-mode=append", '#SBATCH --output="/runs/x/logs/%x-%j.out"', "#SBATCH --exclusive",
                 'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                 "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))", "export CUDA_DEVICE_MAX_CONNECTIONS=1",
                 "SAVE=/runs/x/checkpoints", "TRAIN_ITERS=57221", "trap 'on_signal USR1' USR1",
                 '  scancel --signal=TERM "$SLURM_JOB_ID"', '  scontrol requeue "$SLURM_JOB_ID"',
                 "srun --kill-on-bad-exit=1 --ntasks-per-node=8 python3 -m megatron_gatednorm.cli preflight "
                 "--recipe-json \"$RUN_DIR/recipe.json\" || { echo \"mgn: preflight failed\"; exit 3; }",
                 'srun --kill-on-bad-exit=1 --ntasks-per-node=8 python3 -m megatron_gatednorm.training.pretrain "${MEGATRON_ARGS[@]}" &',
                 "  --load", "  /runs/x/checkpoints", "  --exit-signal-handler"):
        assert line in s.splitlines(), line
    assert "--partition" not in s and "--container-image" not in s


def test_script_is_valid_bash_and_carries_the_recipe():
    s = script_of("moe7b_a2b_gatednorm+clip100", nodes=16)
    subprocess.run(["bash", "-n"], input=s, text=True, check=True)
    blob = s.split("<<'MGN_RECIPE_EOF'\n")[1].split("\nMGN_RECIPE_EOF")[0]
    data = json.loads(blob)
    assert data["nodes"] == 16 and data["recipe"]["gatednorm"]["residual_clip"] == 100.0



def test_template_fills_every_placeholder_and_keeps_bash_literal():
    from megatron_gatednorm.launch.sbatch import fill, job_template

    assert "@{run_dir}" in job_template()  # the package data, not an inline copy
    assert "@{" not in script_of("dense2b_gatednorm")
    assert "@{" not in build("tiny", ["launch.device=cpu", "launch.preflight=false"], 1)[1]
    # a list fills its line with zero or more lines; a string fills in place; "$" and "[@]" stay
    assert fill("a\n@{xs}\nb @{y} ${Z[@]}\n", dict(xs=[], y="1")) == "a\nb 1 ${Z[@]}\n"
    assert fill("@{xs}\n", dict(xs=["p", "q"])) == "p\nq\n"
    with pytest.raises(KeyError):
        fill("@{missing}\n", {})
    with pytest.raises(ValueError):
        fill("@{Bad name}\n", {})

def test_script_options():
    s = script_of("dense2b", ["launch.launcher=torchrun", "launch.container_image=/img/mgn.sqsh",
                              "launch.container_mounts=/data:/data", "slurm.partition=gpu", "slurm.account=proj",
                              "slurm.extra=[--exclude=n[1-2]]", "env.NCCL_SOCKET_IFNAME=ib0",
                              "launch.megatron_lm_path=/opt/Megatron-LM", "launch.wandb_project=p"], nodes=4)
    lines = s.splitlines()
    assert "#SBATCH --ntasks-per-node=1" in lines and "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --account=proj" in lines and "#SBATCH --exclude=n[1-2]" in lines
    assert "export NCCL_SOCKET_IFNAME=ib0" in lines
    assert 'export PYTHONPATH=/opt/Megatron-LM"${PYTHONPATH:+:$PYTHONPATH}"' in lines
    train = next(l for l in lines if l.startswith("srun") and "megatron_gatednorm.training.pretrain" in l)
    assert train.startswith("srun --kill-on-bad-exit=1 --ntasks-per-node=1 --container-image=/img/mgn.sqsh "
                            "--container-mounts=/data:/data --container-workdir=\"$PWD\" python3 -m torch.distributed.run "
                            "--nnodes=$SLURM_NNODES --nproc-per-node=8 --rdzv-backend=c10d")
    assert "  --wandb-project" in lines
    cpu = build("tiny", ["launch.device=cpu", "launch.gpus_per_node=2", "launch.preflight=false"], 1)[1]
    cpu_lines = [l for l in cpu.splitlines() if not l.startswith(("{", "#!", "# "))]
    assert not [l for l in cpu_lines if "--gpus-per-node" in l or "CUDA_DEVICE_MAX_CONNECTIONS" in l or "preflight" in l]
    assert "#SBATCH --ntasks-per-node=2" in cpu_lines


def _fake_sbatch(tmp_path):
    fake = tmp_path / "sbatch"
    fake.write_text('#!/bin/bash\necho "$@" >> "$(dirname "$0")/calls"\nn=$(wc -l < "$(dirname "$0")/calls")\n'
                    'echo "$((100 + n));cluster"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_chain_of_dependent_jobs(tmp_path):
    plan, script = build("dense2b", ["data_path=/d", f"launch.run_dir={tmp_path}/run", "launch.chain_jobs=3"], 1)
    ids = submit(plan, script, sbatch=str(_fake_sbatch(tmp_path)))
    assert ids == ["101", "102", "103"]
    path = f"{tmp_path}/run/sbatch/dense2b.sbatch"
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"--parsable {path}", f"--parsable --dependency=afterany:101 {path}",
        f"--parsable --dependency=afterany:102 {path}"]
    assert Path(path).read_text() == script


def test_chain_length_from_runtime_estimate():
    plan, _ = build("dense2b", ["data_path=/d"], 16)
    d = plan.derived
    assert d["chain_jobs"] == -(-d["estimated_hours"] // 4) and d["chain_jobs"] > 1
    assert build("dense2b", ["slurm.time=30-00:00:00"], 16)[0].derived["chain_jobs"] == 1


def test_submit_command_prints_job_id(tmp_path):
    _fake_sbatch(tmp_path)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "megatron_gatednorm.cli", "launch", "tiny", "--nodes", "1", "--submit",
                          f"launch.run_dir={tmp_path}/run"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "submitted job 101"
    bad = subprocess.run([sys.executable, "-m", "megatron_gatednorm.cli", "launch", "dense2b", "--nodes", "1",
                          "--submit"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 2 and "data_path=None: required for --submit" in bad.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == 1  # nothing submitted for the bad one


def test_dry_run_prints_script_numbers_and_command():
    out = subprocess.run([sys.executable, "-m", "megatron_gatednorm.cli", "launch", "dense2b_preaffine", "--nodes", "4",
                          "--dry-run", "data_path=/d"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert "# ---- derived ----" in out and "# ---- megatron command ----" in out and "#!/bin/bash" in out
    assert "# parity        ffn_hidden_size 6144 -> " in out and "dp=32" in out
    assert "# ---- choices (hyper-parameters the paper does not state; override with key=value) ----" in out
    assert "# rotary_base: 1e6 as in Qwen3; not stated" in out
    assert "# python3 -m megatron_gatednorm.training.pretrain --num-layers 28" in out


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["rmsnorm", "preaffine", "gatednorm", "preaffine_gatednorm"])
def test_dense2b_dry_run_params_within_1pct_of_built_count(variant, built_2b):
    recipe = "dense2b" if variant == "rmsnorm" else "dense2b_gatednorm"
    out = subprocess.run([sys.executable, "-m", "megatron_gatednorm.cli", "launch", recipe, "--nodes", "1",
                          "--dry-run", "--json", f"gatednorm.norm_variant={variant}"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         check=True)
    reported = json.loads(out.stdout)["derived"]["params_total"]
    built = built_2b[variant]
    assert abs(reported - built) <= 0.01 * built, (reported, built)


@pytest.fixture(scope="module")
def built_2b():
    """``mgn params --json``: each variant's GPTModel built with the plugin's specs (meta device)."""
    out = subprocess.run([sys.executable, "-m", "megatron_gatednorm.cli", "params", "--model", "dense-2b", "--json",
                          "--variants", "rmsnorm,preaffine,gatednorm,preaffine_gatednorm"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    return {row["variant"]: row["built_params"] for row in json.loads(out.stdout)["variants"]}


def test_submit_errors_are_value_errors(tmp_path):
    plan, script = build("tiny", [f"launch.run_dir={tmp_path}/run"], 1)
    with pytest.raises(ValueError, match=r"sbatch='/nonexistent/sbatch' not found; valid: run --submit where"):
        submit(plan, script, sbatch="/nonexistent/sbatch")
    failing = tmp_path / "sbatch"
    failing.write_text("#!/bin/bash\necho 'sbatch: error: invalid partition specified: gpux' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(ValueError, match=r"failed \(rc 1\): sbatch: error: invalid partition specified: gpux"):
        submit(plan, script, sbatch=str(failing))


SPECIAL_RUN_DIR = "/tmp/a b/$x"


def _assignments(script: str) -> str:
    """The script's top-level variable and array assignments (RUN_DIR=…, SAVE=…, MEGATRON_ARGS=(…))."""
    out, lines, i = [], script.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(("RUN_DIR=", "SAVE=", "TRAIN_ITERS=", "MAX_REQUEUES=")):
            out.append(line)
        elif line == "MEGATRON_ARGS=(":
            j = lines.index(")", i)
            out += lines[i:j + 1]
            i = j
        i += 1
    return "\n".join(out) + "\n"


def test_paths_with_space_and_dollar_are_quoted():
    plan, s = build("tiny", [f"launch.run_dir={SPECIAL_RUN_DIR}", "launch.launcher=torchrun",
                             f"launch.pythonpath={SPECIAL_RUN_DIR}/src"], 1)
    subprocess.run(["bash", "-n"], input=s, text=True, check=True)
    assert f'#SBATCH --output="{SPECIAL_RUN_DIR}/logs/%x-%j.out"' in s.splitlines()
    printed = subprocess.run(["bash", "-c", _assignments(s) + 'printf "%s\\n" "$RUN_DIR" "$SAVE" "${MEGATRON_ARGS[@]}"'],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert printed[:2] == [SPECIAL_RUN_DIR, f"{SPECIAL_RUN_DIR}/checkpoints"]
    assert printed[2:] == megatron_argv(plan)
    assert f"{SPECIAL_RUN_DIR}/tensorboard" in printed
    # '%' is Slurm's --output placeholder: a literal one is doubled
    pct = build("tiny", ["launch.run_dir=/r/100%"], 1)[1]
    assert '#SBATCH --output="/r/100%%/logs/%x-%j.out"' in pct.splitlines()


def _stub_bin(tmp_path):
    """srun, scontrol, scancel stubs that log their argv (one argument per line, a blank line after)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    for name in ("srun", "scontrol", "scancel"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/bash\n{{ echo {name}; printf "%s\\n" "$@"; echo; }} >> {shlex.quote(str(log))}\n'
                        + ('[ "$1" = show ] && echo node1\n' if name == "scontrol" else "") + "exit 0\n")
        stub.chmod(0o755)
    return bin_dir, log


def test_script_runs_with_a_special_run_dir(tmp_path):
    """The whole script under bash with srun/scontrol/scancel stubbed: every path arrives intact."""
    run_dir = f"{tmp_path}/a b/$x"
    plan, s = build("tiny", [f"launch.run_dir={run_dir}"], 1)
    bin_dir, log = _stub_bin(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1"}
    out = subprocess.run(["bash", "-c", s], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    calls = [c.splitlines() for c in log.read_text().split("\n\n") if c.strip()]
    preflight = next(c for c in calls if c[0] == "srun" and "preflight" in c)
    assert preflight[preflight.index("--recipe-json") + 1] == f"{run_dir}/recipe.json"
    train = next(c for c in calls if c[0] == "srun" and "megatron_gatednorm.training.pretrain" in c)
    assert train[train.index("megatron_gatednorm.training.pretrain") + 1:] == megatron_argv(plan)
    assert json.loads(Path(run_dir, "recipe.json").read_text())["recipe"]["launch"]["run_dir"] == run_dir
    assert Path(run_dir, "logs").is_dir() and Path(run_dir, "checkpoints").is_dir()
    assert not (tmp_path / "a b" / "x").exists()  # "$x" was never expanded


def _mgn(args, **kw):
    return subprocess.run([sys.executable, "-m", "megatron_gatednorm.cli", "launch"] + args, capture_output=True,
                          text=True, cwd=kw.pop("cwd", ROOT), env={**os.environ, "PYTHONPATH": str(ROOT), **kw.pop("env", {})})


def test_script_only_prints_exactly_the_submitted_script(tmp_path):
    run_dir = f"{tmp_path}/a b/$x"
    args = ["tiny", "--nodes", "1", f"launch.run_dir={run_dir}"]
    out = _mgn(args + ["--dry-run", "--script-only"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#!/bin/bash\n")
    subprocess.run(["bash", "-n"], input=out.stdout, text=True, check=True)
    assert _mgn(args + ["--script-only"]).stdout == out.stdout  # --dry-run is implied
    assert not Path(run_dir).exists()  # a dry run writes nothing
    _fake_sbatch(tmp_path)
    sub = _mgn(args + ["--submit"], env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert sub.returncode == 0, sub.stderr
    assert Path(run_dir, "sbatch", "tiny.sbatch").read_text() == out.stdout
    bad = _mgn(args + ["--submit", "--script-only"])
    assert bad.returncode == 2 and bad.stderr.startswith("mgn launch: error: invalid --script-only with --submit")
    assert "--script-only" in _mgn(["--help"]).stdout


def _snapshot(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


@pytest.mark.parametrize("existing", [False, True])
def test_refused_submission_leaves_nothing_behind(tmp_path, existing):
    work = tmp_path / "work"
    work.mkdir()
    run_dir = work / "runs" / "a b"
    if existing:  # a resubmission: the run directory and an older script are there already
        (run_dir / "sbatch").mkdir(parents=True)
        (run_dir / "sbatch" / "tiny.sbatch").write_text("old\n")
    before = _snapshot(work)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    refuse = bin_dir / "sbatch"
    refuse.write_text("#!/bin/bash\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\n"
                      "echo 'sbatch: error: second line' >&2\nexit 1\n")
    refuse.chmod(0o755)
    out = _mgn(["tiny", "--nodes", "1", "--submit", f"launch.run_dir={run_dir}"],
               env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, cwd=work)
    assert out.returncode == 2 and out.stdout == "", out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mgn launch: error: ") and "failed (rc 1): sbatch: error: Batch job submission " \
        "failed: Invalid account sbatch: error: second line" in lines[0]
    assert _snapshot(work) == before
    if existing:
        assert (run_dir / "sbatch" / "tiny.sbatch").read_text() == "old\n"
