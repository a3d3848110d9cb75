#!/usr/bin/env bash
# A real Slurm on this machine for the Slurm backend's tests and `make up BACKEND=slurm`:
# munged, slurmctld and two slurmd (compute nodes n1 and n2, emulated on this host with a port
# each), all run as processes (no systemd needed), configured and logged under $SLURM_DIR.
#
#   scripts/slurm.sh up       install (apt) when missing, configure, start; waits until both nodes are idle
#   scripts/slurm.sh down     stop what `up` started (by pidfile; munged, shared by the machine, stays)
#   scripts/slurm.sh down-controller   stop slurmctld alone (an outage; `up` brings it back)
#   scripts/slurm.sh status   sinfo
#   scripts/slurm.sh env      the SLURM_CONF line to use it
#
# SLURM_DIR (default .state/slurm) holds slurm.conf, the state, the logs and the staging path
# (staging/) the gateway shares with the compute nodes. Ports (SLURM_PORT, default 16817, and
# the next two for the nodes) keep clear of a site's own Slurm. Facts: ../shared/notes/slurm.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SLURM_DIR=$(realpath -m "${SLURM_DIR:-.state/slurm}")
PORT=${SLURM_PORT:-16817}
CONF=$SLURM_DIR/slurm.conf
export SLURM_CONF=$CONF
NODES=(n1 n2)
# The service accounts clusters run as (slurm.run_as = "pool": slurm.uid_min/uid_count).
POOL_UID_MIN=${SLURM_POOL_UID_MIN:-1897000000}
POOL_COUNT=${SLURM_POOL_COUNT:-16}

install_packages() {
    local need=()
    for pair in slurmctld:/usr/sbin/slurmctld slurmd:/usr/sbin/slurmd slurm-client:/usr/bin/sbatch munge:/usr/sbin/munged; do
        [ -e "${pair#*:}" ] || need+=("${pair%%:*}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "slurm: apt-get install ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    # One munged per machine (its socket is /run/munge): reuse a running one.
    if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null >/dev/null 2>&1; then return; fi
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    [ -f /etc/munge/munge.key ] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return; sleep 0.1; done
    echo "slurm: munged did not start" >&2; exit 1
}

write_conf() {
    mkdir -p "$SLURM_DIR"/{state,log,run,staging} "${NODES[@]/#/$SLURM_DIR/spool/}"
    # The staging path is shared with the compute nodes: each cluster's directory in it is
    # readable by that cluster only; the root lists nothing.
    chmod 0711 "$SLURM_DIR" "$SLURM_DIR/staging"
    # slurmd puts each job's script under its spool dir: the jobs' accounts must reach it.
    chmod 0711 "$SLURM_DIR/spool" "${NODES[@]/#/$SLURM_DIR/spool/}"
    chmod 0700 "$SLURM_DIR/state" "$SLURM_DIR/log" "$SLURM_DIR/run"
    local host; host=$(hostname -s)
    cat >"$CONF" <<EOF
# Written by scripts/slurm.sh: a local Slurm for gatewayha's tests and make up BACKEND=slurm.
ClusterName=gatewayha-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool/%n
SlurmctldPidFile=$SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The nodes' CPUs and memory as written here, not as probed: two emulated nodes share 2 cores.
SlurmdParameters=config_overrides
DefMemPerCPU=256
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_DIR/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
# Finished jobs stay in squeue -t all this long (their end state is the stop reason).
MinJobAge=600
JobRequeue=0
# Limits a job breaks are refused at submission (not left pending forever).
EnforcePartLimits=ALL
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
GresTypes=gpu
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + 1)) CPUs=16 RealMemory=32000 Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + 2)) CPUs=16 RealMemory=32000 Gres=gpu:2 State=UNKNOWN
PartitionName=dask Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=short Nodes=n1,n2 MaxTime=00:10:00 State=UP OverSubscribe=FORCE:4
EOF
    # Emulated GPUs: Slurm drops a GPU without a device file; plain files stand in for them.
    mkdir -p "$SLURM_DIR/dev"
    touch "$SLURM_DIR/dev/gpu0" "$SLURM_DIR/dev/gpu1"
    printf "NodeName=%s Name=gpu File=$SLURM_DIR/dev/gpu[0-1]\n" "${NODES[@]}" >"$SLURM_DIR/gres.conf"
}

pool_accounts() {
    local i uid
    for ((i = 0; i < POOL_COUNT; i++)); do
        uid=$((POOL_UID_MIN + i))
        getent passwd "$uid" >/dev/null && continue
        getent group "$uid" >/dev/null || groupadd -g "$uid" "gwdask-$i"
        useradd -u "$uid" -g "$uid" -M -d /nonexistent -s /usr/sbin/nologin -c "gatewayha Dask cluster" "gwdask-$i" 2>/dev/null
    done
}

up() {
    install_packages
    pool_accounts
    start_munge
    write_conf
    alive "$SLURM_DIR/run/slurmctld.pid" || /usr/sbin/slurmctld -i -f "$CONF"
    for n in "${NODES[@]}"; do
        alive "$SLURM_DIR/run/slurmd-$n.pid" || /usr/sbin/slurmd -N "$n" -f "$CONF"
    done
    for _ in $(seq 150); do
        if [ "$(sinfo -h -N -p dask -o '%N %t' 2>/dev/null | grep -cE ' (idle|mix|alloc)$')" = "${#NODES[@]}" ]; then
            echo "slurm: up (SLURM_CONF=$CONF)"; return
        fi
        sleep 0.2
    done
    echo "slurm: nodes not idle after 30 s:" >&2; sinfo -N >&2 || true; tail -n 5 "$SLURM_DIR"/log/*.log >&2; exit 1
}

down() {
    for f in "$SLURM_DIR"/run/slurmd-*.pid "$SLURM_DIR/run/slurmctld.pid"; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

down_controller() {  # slurmctld only (an outage): the nodes and their jobs keep running
    local f=$SLURM_DIR/run/slurmctld.pid pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    # SIGTERM: it saves its state (the jobs) and goes; a kill -9 loses what it had not saved yet.
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$f"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    down-controller) down_controller ;;
    status) sinfo -N ;;
    env) echo "SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
