#!/usr/bin/env bash
# A real Slurm cluster on this machine, for the tests and for trying slurm/*.sh without a cluster: one controller and
# two emulated compute nodes (n1, n2: each a slurmd on its own port, each offering all CPUs), with a private munge
# daemon, all state under .local-slurm/ (git-ignored). Debian/Ubuntu's slurmctld, slurmd, slurm-client and munge
# (Slurm 22.05 on Debian 12) are installed with apt when missing. Needs root; no systemd.
#   scripts/local_slurm.sh start     # idempotent: a running cluster is left as it is
#   source .local-slurm/env.sh       # SLURM_CONF for sbatch, srun, squeue, sinfo, scancel, scontrol
#   scripts/local_slurm.sh status
#   scripts/local_slurm.sh stop
# Environment: LOCAL_SLURM_DIR (state directory, default <repo>/.local-slurm), LOCAL_SLURM_NODES (default 2).
set -euo pipefail

DIR=${LOCAL_SLURM_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.local-slurm}
NODES=${LOCAL_SLURM_NODES:-2}
CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/run/munge.socket.2
export SLURM_CONF=$CONF

node_names() { seq -f 'n%g' 1 "$NODES"; }

# The process named by a pid file is alive (and not a zombie).
running() {
  local pid
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

stop_daemons() {
  local f pid
  for f in "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid" "$DIR/munge/run/munged.pid"; do
    [ -e "$f" ] || continue
    if running "$f"; then
      pid=$(cat "$f") && kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do running "$f" || break; sleep 0.1; done
    fi
    rm -f "$f"
  done
}

cluster_up() {
  local f
  for f in "$DIR/munge/run/munged.pid" "$DIR/run/slurmctld.pid"; do running "$f" || return 1; done
  for n in $(node_names); do running "$DIR/run/slurmd-$n.pid" || return 1; done
  sinfo -h >/dev/null 2>&1
}

install_packages() {
  local pkgs="slurmctld slurmd slurm-client munge"
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  echo "installing $pkgs with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # without recommends: ~8 packages instead of ~40
  apt-get install -y -q --no-install-recommends $pkgs >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $pkgs >/dev/null; }
}

start_munge() {
  # A private key and socket: /etc/munge and /run/munge are left alone.
  mkdir -p "$DIR"/munge/{etc,run,log,lib}
  [ -s "$DIR/munge/etc/munge.key" ] || dd if=/dev/urandom of="$DIR/munge/etc/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$DIR/munge"
  chmod 700 "$DIR/munge/etc" && chmod 400 "$DIR/munge/etc/munge.key"
  chmod 755 "$DIR" "$DIR/munge" "$DIR/munge/run"
  runuser -u munge -- /usr/sbin/munged --key-file="$DIR/munge/etc/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$DIR/munge/run/munged.pid" --seed-file="$DIR/munge/lib/munged.seed" \
    --log-file="$DIR/munge/log/munged.log"
  munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET" >/dev/null
}

write_conf() {
  local host cpus mem i
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10 / NODES ))   # MB per node
  mkdir -p "$DIR"/{etc,run,log,spool/ctld}
  cat > "$CONF" <<EOF
# Written by scripts/local_slurm.sh: a single-machine test cluster (no cgroups, no accounting, root as SlurmUser).
ClusterName=r1lab-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
# Fast turnaround: finished jobs leave the controller after 5 s, so "sbatch --wait" polls every 2 s (with the
# default 300 s it backs off to 10, 42, 74 s), and batch jobs start at once instead of being batched for 3 s.
MinJobAge=5
SchedulerParameters=batch_sched_delay=0
EOF
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$cpus RealMemory=$mem" \
         "State=UNKNOWN"
  done >> "$CONF"
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
  chmod 644 "$CONF"
  echo "export SLURM_CONF=$CONF" > "$DIR/env.sh"
}

# Node names resolve to this machine, as a real cluster's do (Lightning and torch.distributed connect to the first
# node of the job by name); the line is tagged so that `stop` removes it.
HOSTS_TAG="# r1lab local slurm"
add_hosts() {
  grep -q "$HOSTS_TAG" /etc/hosts || echo "127.0.0.1 $(node_names | tr '\n' ' ')$HOSTS_TAG" >> /etc/hosts
}
remove_hosts() {
  if grep -q "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
    local kept; kept=$(grep -v "$HOSTS_TAG" /etc/hosts)
    printf '%s\n' "$kept" > /etc/hosts   # rewritten in place: /etc/hosts may be a mount point
  fi
}

start() {
  [ "$(id -u)" = 0 ] || { echo "local_slurm.sh start must run as root (sudo)" >&2; exit 1; }
  install_packages
  if cluster_up; then add_hosts; echo "local Slurm already running; source $DIR/env.sh"; return 0; fi
  stop_daemons   # leftovers of a half-started or killed cluster
  start_munge
  write_conf
  add_hosts
  slurmctld -f "$CONF"                                      # the daemons fork into the background themselves
  for n in $(node_names); do slurmd -f "$CONF" -N "$n"; done
  local state=""
  for _ in $(seq 120); do
    state=$(sinfo -h -o %t 2>/dev/null | sort -u || true)
    if [ "$state" = idle ]; then
      sinfo -N
      echo "local Slurm up ($NODES nodes); to use it: source $DIR/env.sh"
      return 0
    fi
    sleep 0.5
  done
  echo "local Slurm did not come up (node state: '${state}'); logs in $DIR/log" >&2
  tail -n 20 "$DIR"/log/*.log >&2
  exit 1
}

case "${1:-start}" in
  start) start ;;
  stop) stop_daemons; remove_hosts; echo "local Slurm stopped" ;;
  status)
    if cluster_up; then sinfo -N; squeue; else echo "local Slurm not running"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
