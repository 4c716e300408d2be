#!/usr/bin/env bash
# Start a real single-node Slurm (munged, slurmctld, slurmd) on localhost, without systemd.
# Installs Debian's slurm-wlm + munge if missing. Idempotent: a no-op when slurm.conf is
# unchanged and the three daemons are alive. Prints "SLURM_PIDS munged=.. slurmctld=.. slurmd=.."
# last. Environment: MGN_SLURM_NODE (default: hostname -s), MGN_SLURM_WAIT (default 60 s).
set -euo pipefail
NODE="${MGN_SLURM_NODE:-$(hostname -s)}"
WAIT="${MGN_SLURM_WAIT:-60}"
CONF=/etc/slurm/slurm.conf
start=$(date +%s.%N)

alive() {  # alive PIDFILE COMM
  [ -s "$1" ] || return 1
  local pid; pid=$(cat "$1")
  [ -d "/proc/$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$2" ]
}

stop_pid() {  # stop_pid PIDFILE COMM (by PID, after checking /proc/PID/comm)
  alive "$1" "$2" || return 0
  local pid; pid=$(cat "$1"); kill -TERM "$pid"
  for _ in $(seq 150); do [ -d "/proc/$pid" ] || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created_policy=1
  fi
  if ! apt-cache policy slurmctld 2>/dev/null | grep -q 'Candidate: [0-9]'; then apt-get update -qq; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold slurm-wlm slurmctld slurmd slurm-client munge >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# munge
[ -s /etc/munge/munge.key ] || { mungekey --create; chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key; }
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /var/lib/munge /var/log/munge
if ! alive /run/munge/munged.pid munged; then
  runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null

# slurm.conf from slurmd -C (CPU topology) and MemAvailable.
# proctrack/pgid: a step's processes are its tasks' process groups, so a killed rank's orphans
#   (megatron-core's spawned checkpoint-queue Manager and resource tracker) die with the step, as
#   under a cluster's proctrack/cgroup; linuxproc loses them once orphaned, they keep the step's
#   output open and slurmstepd waits 60 s before abandoning it.
# KillWait < MessageTimeout: slurmd answers a step's SIGTERM-then-SIGKILL request only after
#   KillWait; were that longer than MessageTimeout, slurmctld would retry the request later and
#   the retry would cancel the requeued job's step of the same id (seen with 30 s / 10 s).
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm
topo=$(slurmd -C | head -1 | grep -o 'CPUs=[0-9]* Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' | sed 's/Boards=[0-9]* //')
mem=$(awk '/MemAvailable/ {printf "%d", $2/1024*0.9}' /proc/meminfo)
new=$(mktemp)
cat > "$new" <<CONFEOF
# written by .ci/slurm_up.sh (megatron-gatednorm tests)
ClusterName=localcluster
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MessageTimeout=30
MinJobAge=300
Waittime=0
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 $topo RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONFEOF
strip_mem() { sed 's/RealMemory=[0-9]*//' "$1" 2>/dev/null; }
changed=1
[ -f "$CONF" ] && [ "$(strip_mem "$CONF")" = "$(strip_mem "$new")" ] && changed=0
if [ "$changed" = 1 ]; then
  cp "$new" "$CONF"
  stop_pid /run/slurmd.pid slurmd
  stop_pid /run/slurmctld.pid slurmctld
fi
rm -f "$new"

alive /run/slurmctld.pid slurmctld || slurmctld -i
for _ in $(seq $((WAIT * 10))); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
alive /run/slurmd.pid slurmd || slurmd -N "$NODE"

deadline=$(( $(date +%s) + WAIT ))
while :; do
  state=$(sinfo -h -n "$NODE" -o '%t' 2>/dev/null || true)
  case "$state" in
    idle|mix|alloc) break ;;
    drain*|drng*|down*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "slurm_up: node $NODE not idle after ${WAIT}s (state '$state')" >&2
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    exit 1
  fi
  sleep 0.2
done
printf 'slurm_up: node %s %s in %.1f s\n' "$NODE" "$state" "$(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo 0)"
echo "SLURM_PIDS munged=$(cat /run/munge/munged.pid) slurmctld=$(cat /run/slurmctld.pid) slurmd=$(cat /run/slurmd.pid)"
