#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the Slurm tests (run as root, no systemd needed).
#
#   scripts/slurm_cluster.sh start    install slurm-wlm + munge from Debian when missing, then start
#                                     munged, slurmctld and slurmd (idempotent: a running cluster is kept)
#   scripts/slurm_cluster.sh stop     stop the three daemons
#   scripts/slurm_cluster.sh status   exit 0 when `sinfo` answers
#
# The node gets this machine's cores and 80% of its memory; one partition `debug` (default). No
# accounting daemon: `sacct` is not available, job states come from `squeue` and submitit's result files.
set -euo pipefail

cmd="${1:-start}"
host="$(hostname -s)"
state=/var/spool/slurmctld
conf=/etc/slurm/slurm.conf

up() { timeout 5 sinfo -h >/dev/null 2>&1; }

start() {
  if [ "$(id -u)" != 0 ]; then echo "slurm_cluster.sh: must run as root (installs packages, starts daemons)" >&2; exit 2; fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  if up; then echo "slurm: already up on $host"; return 0; fi
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge "$state" /var/spool/slurmd /var/log/slurm
  if [ ! -s /etc/munge/munge.key ]; then dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0700 /etc/munge
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  local cpus mem
  cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc obeys OMP_NUM_THREADS, the suite sets it
  mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
  cat >"$conf" <<EOF
ClusterName=svbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  # -c: a cluster this script starts begins with an empty queue (jobs a stopped earlier cluster held are dropped)
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -c
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
  for _ in $(seq 1 60); do
    if up && sinfo -h -o %T | grep -qE "idle|mix|alloc"; then echo "slurm: up on $host ($cpus CPUs, $mem MB)"; return 0; fi
    sleep 0.5
  done
  echo "slurm_cluster.sh: the cluster did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
  exit 1
}

stop() {
  pkill -x slurmd || true
  pkill -x slurmctld || true
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) up ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
