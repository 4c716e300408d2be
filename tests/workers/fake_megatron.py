"""Stand-in training step for tests/test_slurm.py, which checks the launcher's torchrun job plumbing
(Megatron's real pretrain() runs under Slurm in tests/test_slurm_pretrain.py).

It behaves like Megatron-LM with ``--exit-signal-handler``: on SIGTERM it saves a "checkpoint"
(``latest_checkpointed_iteration.txt`` in ``--save``, written by rank 0) and exits 0; when
``--load`` holds a checkpoint it reports the iteration it resumes from and finishes the run.
``FAKE_ITER_S`` is the time per iteration.
"""

import argparse
import os
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--save")
parser.add_argument("--load")
parser.add_argument("--train-iters", type=int)
args, _ = parser.parse_known_args()
rank = os.environ.get("SLURM_PROCID", "0")
tracker = os.path.join(args.save, "latest_checkpointed_iteration.txt")
load_tracker = os.path.join(args.load, "latest_checkpointed_iteration.txt")
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))


def say(message):
    sys.stdout.write(message + "\n")  # one write per line: both ranks append to the same log
    sys.stdout.flush()


def save(iteration):
    if rank == "0":
        with open(tracker, "w") as f:
            f.write(str(iteration))


start = 0
if os.path.exists(load_tracker):
    start = int(open(load_tracker).read())
    say(f"fake-megatron: rank {rank} resumed from {args.load} at iteration {start}")
    save(args.train_iters)  # the resumed run finishes
    sys.exit(0)
say(f"fake-megatron: rank {rank} started (save={args.save} load={args.load} load_eq_save={args.load == args.save})")
for it in range(start + 1, args.train_iters + 1):
    time.sleep(float(os.environ.get("FAKE_ITER_S", "0.05")))
    if stop:
        save(it)
        say(f"fake-megatron: rank {rank} got SIGTERM, saved iteration {it}")
        sys.exit(0)
save(args.train_iters)
say(f"fake-megatron: rank {rank} finished {args.train_iters} iterations")
