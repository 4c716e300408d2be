#!/usr/bin/env bash
# Stop what .ci/slurm_up.sh started: cancel jobs, then slurmd, slurmctld, munged, each by
# the PID in its pid file after checking /proc/PID/comm. MGN_SLURM_PURGE=1 also empties the
# spool directories (job ids restart at 1).
set -uo pipefail
stop_pid() {  # stop_pid PIDFILE COMM
  [ -s "$1" ] || { echo "slurm_down: $2 not running"; return 0; }
  local pid; pid=$(cat "$1")
  if [ ! -d "/proc/$pid" ] || [ "$(cat /proc/$pid/comm 2>/dev/null)" != "$2" ]; then
    echo "slurm_down: $2 not running"; return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 150); do [ -d "/proc/$pid" ] || { echo "slurm_down: stopped $2 ($pid)"; return 0; }; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null; echo "slurm_down: killed $2 ($pid)"
}
if command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q 'is UP'; then
  scancel --full --quiet $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
  for _ in $(seq 350); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
fi
stop_pid /run/slurmd.pid slurmd
stop_pid /run/slurmctld.pid slurmctld
stop_pid /run/munge/munged.pid munged
if [ "${MGN_SLURM_PURGE:-0}" = 1 ]; then rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*; fi
exit 0
