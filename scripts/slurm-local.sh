#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for trying the SLURM launcher and for the tests
# marked `slurm`:
#   sudo bash scripts/slurm-local.sh start    # installs what is missing (apt), starts, waits
#   export SLURM_CONF=/tmp/cifar-lightning-slurm/slurm.conf   # the line `start` prints
#   bash scripts/slurm-local.sh status
#   sudo bash scripts/slurm-local.sh stop     # stops only the daemons `start` started
# munged, MariaDB, slurmdbd, slurmctld and slurmd run as root with every file (configs, key,
# sockets, database, state, logs, pid files) under one folder, SLURM_LOCAL_DIR (default: $TMPDIR
# or /tmp, then cifar-lightning-slurm), so a system's own SLURM, munge or database is never
# touched. One node (this host, `slurmd -C`'s CPUs, 90 % of its memory), one partition `debug`,
# JobRequeue=1, and job accounting (slurmdbd on MariaDB), as most real clusters have: submitit
# reads job states with sacct only, and without accounting a cancelled job is never seen to end.
# Ports on 127.0.0.1: SLURM_LOCAL_PORT (slurmctld, default 6817) and the next three (slurmd,
# MariaDB, slurmdbd). Packages: slurm-wlm, munge, slurmdbd, mariadb-server (Debian's names).
set -euo pipefail

dir=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/cifar-lightning-slurm}
port=${SLURM_LOCAL_PORT:-6817}
db_port=$((port + 2))
dbd_port=$((port + 3))
export SLURM_CONF=$dir/slurm.conf
PACKAGES="slurm-wlm munge slurmdbd mariadb-server"
DAEMONS="munged mysqld slurmdbd slurmctld slurmd"  # in start order; stopped in reverse

die() { echo "error: $*" >&2; exit 1; }

alive() {  # alive NAME: the daemon this script started from this folder is running
  # /proc, not kill -0, so that `status` works for other users too; the process's name must be
  # the daemon's, so that a stale pid file whose number was reused names no other process.
  local pid comm
  pid=$(cat "$dir/$1.pid" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == "$1" || ($1 == mysqld && $comm == mariadbd) ]]
}
all_alive() { local n; for n in $DAEMONS; do alive "$n" || return 1; done; }
any_alive() { local n; for n in $DAEMONS; do alive "$n" && return 0; done; return 1; }

# `|| true`: while slurmctld starts, sinfo fails, and under pipefail that would end the script.
node_state() { sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | head -n1 || true; }

install_packages() {
  local cmd missing=0
  for cmd in munged slurmctld slurmd slurmdbd sinfo sacct mariadbd mariadb-install-db; do
    command -v "$cmd" >/dev/null || missing=1
  done
  [[ $missing -eq 0 ]] && return
  command -v apt-get >/dev/null \
    || die "SLURM is not installed and there is no apt-get here: install slurmctld, slurmd, slurmdbd, SLURM's client commands, munge and MariaDB with this system's package manager, then run this again"
  echo "installing $PACKAGES (apt-get, about a minute) ..."
  # shellcheck disable=SC2086  # the package names are words
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES; } \
    >"$dir/apt.log" 2>&1 || die "apt-get install $PACKAGES failed; see $dir/apt.log"
}

write_configs() {
  local host node mem
  host=$(hostname -s)
  # slurmd -C prints this host's CPUs, sockets, cores, threads and memory (MB) as slurm.conf
  # wants them; the node keeps 10 % of the memory for the system.
  node=$(slurmd -C | head -n1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  node=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<<"$node")
  rm -f "$dir/slurm.conf.tmp" "$dir/slurmdbd.conf.tmp"  # never write through a planted link
  cat >"$dir/slurm.conf.tmp" <<CONF
# Written by scripts/slurm-local.sh: a one-node cluster on $host, every file under $dir.
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
# For slurmdbd connections this names the munge socket (AuthInfo covers the other messages).
AccountingStoragePass=$dir/munge.socket
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# A test cluster, not a shared one: a finished job stays visible to squeue for MinJobAge
# seconds; KillWait is the grace between SIGTERM and SIGKILL at a time limit.
MinJobAge=300
KillWait=10
SlurmdTimeout=60
InactiveLimit=0
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  mv "$dir/slurm.conf.tmp" "$dir/slurm.conf"
  # slurmdbd refuses a config that others can read (it holds the database password).
  install -m 0600 /dev/null "$dir/slurmdbd.conf.tmp"
  cat >"$dir/slurmdbd.conf.tmp" <<CONF
# Written by scripts/slurm-local.sh: job accounting of the one-node cluster, in MariaDB.
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$dir/slurmdbd.pid
LogFile=$dir/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=local
StorageLoc=slurm_acct_db
CONF
  mv "$dir/slurmdbd.conf.tmp" "$dir/slurmdbd.conf"
}

start_munge() {
  # munge authenticates every SLURM message; a key of this cluster's own.
  if [[ ! -f $dir/munge.key ]]; then  # written whole, then renamed: never half a key
    dd if=/dev/urandom of="$dir/munge.key.tmp" bs=1024 count=1 2>/dev/null
    chmod 0400 "$dir/munge.key.tmp" && mv "$dir/munge.key.tmp" "$dir/munge.key"
  fi
  munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" \
    || die "munged did not start; see $dir/munged.log"
}

start_database() {
  # MariaDB for slurmdbd: its own data folder, socket and port, and a database user.
  if [[ ! -d $dir/mysql ]]; then  # installed beside, then renamed: a failed install is redone
    rm -rf "$dir/mysql.tmp"
    mariadb-install-db --user=root --datadir="$dir/mysql.tmp" --auth-root-authentication-method=normal \
      --skip-test-db >"$dir/mysql-install.log" 2>&1 || die "mariadb-install-db failed; see $dir/mysql-install.log"
    mv "$dir/mysql.tmp" "$dir/mysql"
  fi
  # mariadbd stays in the foreground: setsid detaches it from this shell and its terminal.
  setsid mariadbd --user=root --datadir="$dir/mysql" --socket="$dir/mysqld.sock" \
    --pid-file="$dir/mysqld.pid" --bind-address=127.0.0.1 --port="$db_port" \
    --log-error="$dir/mysqld.log" --skip-name-resolve --innodb-buffer-pool-size=64M \
    </dev/null >/dev/null 2>&1 &
  for _ in $(seq 60); do
    mariadb -S "$dir/mysqld.sock" -uroot -e "select 1" >/dev/null 2>&1 && break
    sleep 0.5
  done
  chmod a+r "$dir/mysqld.pid" 2>/dev/null || true  # for `status` run by other users
  mariadb -S "$dir/mysqld.sock" -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1'
    IDENTIFIED BY 'local'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
    || die "MariaDB did not start; see $dir/mysqld.log"
}

start_accounting() {
  # slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF.
  slurmdbd || die "slurmdbd did not start; see $dir/slurmdbd.log"
  # The cluster must be known to the database before slurmctld registers with it.
  for _ in $(seq 60); do
    sacctmgr -n list cluster format=cluster 2>/dev/null | grep -qw local && return
    sacctmgr -i add cluster local >/dev/null 2>&1 || true
    sleep 0.5
  done
  die "slurmdbd does not answer after 30 s; see $dir/slurmdbd.log"
}

wait_for_node() {
  local state=""
  for _ in $(seq 60); do
    state=$(node_state)
    [[ $state == idle* || $state == mixed* || $state == allocated* ]] && return
    # A node left down or drained by an earlier cluster in this folder is brought back.
    if [[ $state == down* || $state == drain* ]]; then
      scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
    fi
    sleep 1
  done
  die "the node is not up after 60 s (sinfo: ${state:-no answer}); see $dir/slurmctld.log and $dir/slurmd.log"
}

start() {
  [[ $(id -u) -eq 0 ]] || die "start needs root (it installs packages and starts the daemons as root): sudo bash $0 start"
  # Root works in this folder: it must be root's own, not a link or a folder another user
  # made first in a shared /tmp (they could plant the munge key, configs or pid files).
  [[ -e $dir ]] || mkdir -p -m 0755 "$dir"
  [[ ! -L $dir && -O $dir ]] \
    || die "$dir is not a folder of root's own (a link, or made by another user): remove it or set SLURM_LOCAL_DIR"
  chmod go-w "$dir"
  mkdir -p "$dir/state" "$dir/spool"
  install_packages
  if all_alive; then
    echo "already running ($dir)"
  else
    if any_alive; then stop_daemons; fi  # half a cluster from an earlier start: begin again
    write_configs
    start_munge
    start_database
    start_accounting
    slurmctld -f "$SLURM_CONF" || die "slurmctld did not start; see $dir/slurmctld.log"
    slurmd -f "$SLURM_CONF" || die "slurmd did not start; see $dir/slurmd.log"
  fi
  wait_for_node
  echo "SLURM is up: node $(hostname -s) $(node_state), partition debug, accounting on. For its commands:"
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop_daemons() {
  local name pid
  for name in $(tr ' ' '\n' <<<"$DAEMONS" | tac); do
    if alive "$name"; then
      pid=$(<"$dir/$name.pid")
      kill "$pid" 2>/dev/null || true  # it may have ended by itself meanwhile
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
      echo "stopped $name ($pid)"
    fi
    rm -f "$dir/$name.pid"
  done
}

stop() {
  [[ $(id -u) -eq 0 ]] || die "stop needs root (the daemons run as root): sudo bash $0 stop"
  if any_alive; then stop_daemons; else echo "not running ($dir)"; fi
}

status() {
  local name up=0
  for name in $DAEMONS; do
    if alive "$name"; then echo "$name: running (pid $(cat "$dir/$name.pid"))"
    else echo "$name: not running"; up=1; fi
  done
  if [[ $up -eq 0 ]]; then
    echo "node: $(node_state)"
    echo "export SLURM_CONF=$SLURM_CONF"
  fi
  return $up
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status   (files under $dir)" >&2; exit 2 ;;
esac
