"""Stand-in training step for tests/test_slurm.py, which checks the launcher's torchrun job plumbing
(Megatron's real pretrain() runs under Slurm — signal, save, requeue, resume — in
tests/test_slurm_pretrain.py).

It takes Megatron-LM's ``--save`` and ``--train-iters`` (other flags are ignored), sleeps
``FAKE_ITER_S`` per iteration, writes ``latest_checkpointed_iteration.txt`` in ``--save`` (rank 0)
and says which rank finished how many iterations.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--save")
parser.add_argument("--train-iters", type=int)
args, _ = parser.parse_known_args()
rank = os.environ.get("SLURM_PROCID", "0")
for _ in range(args.train_iters):
    time.sleep(float(os.environ.get("FAKE_ITER_S", "0.05")))
if rank == "0":
    with open(os.path.join(args.save, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(args.train_iters))
sys.stdout.write(f"fake-megatron: rank {rank} finished {args.train_iters} iterations\n")  # one write: a shared log
sys.stdout.flush()
