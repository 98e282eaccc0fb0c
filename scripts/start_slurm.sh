#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian, as root), so the SLURM launcher is
# tested against a real slurmctld/slurmd rather than a mock. Safe to run again: a cluster that
# is already up is only checked, which takes about a second.
#
# No cgroups, no accounting: both fail or need extra services inside containers, and the tests
# need neither.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm
NODE=$(hostname -s)

log() { echo "start_slurm: $*" >&2; }

pid_alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) && kill -0 "$pid" 2>/dev/null
}

install_packages() {
    local tool missing=0
    for tool in slurmctld slurmd srun sbatch squeue scancel munged; do
        command -v "$tool" >/dev/null || missing=1
    done
    if ((missing)); then
        log "installing slurm-wlm and munge"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null ||
            { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; }
    fi
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    if ! pid_alive /run/munge/munged.pid; then
        log "starting munged"
        runuser -u munge -- munged --force
    fi
}

# Writes slurm.conf from this machine's real CPU count and memory; prints "changed" when the
# file is new or differs, so running daemons know to restart.
write_config() {
    local hardware cpus memory conf
    hardware=$(slurmd -C | head -n 1)
    cpus=$(grep -o 'CPUs=[0-9]*' <<<"$hardware" | cut -d= -f2)
    memory=$(grep -o 'RealMemory=[0-9]*' <<<"$hardware" | cut -d= -f2)
    conf=$(cat <<EOF
# Written by scripts/start_slurm.sh: a one-node cluster for tests and single-machine runs.
ClusterName=neurosam
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
ReturnToService=2
KillWait=5
# sbatch --wait polls every 2 s only while MinJobAge/2 <= 2; the default (300) backs off to 32 s.
MinJobAge=4
SchedulerParameters=sched_interval=1
NodeName=$NODE CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
    mkdir -p "$CONF_DIR"
    if [[ ! -f $CONF_DIR/slurm.conf ]] || [[ $(cat "$CONF_DIR/slurm.conf") != "$conf" ]]; then
        printf '%s\n' "$conf" >"$CONF_DIR/slurm.conf"
        echo changed
    fi
}

stop_daemon() {
    local pidfile=$1
    if pid_alive "$pidfile"; then
        kill "$(cat "$pidfile")"
        while pid_alive "$pidfile"; do sleep 0.2; done
    fi
}

start_daemons() {
    mkdir -p "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR"
    if ! pid_alive /run/slurmctld.pid; then
        log "starting slurmctld"
        slurmctld
    fi
    if ! pid_alive /run/slurmd.pid; then
        log "starting slurmd"
        slurmd
    fi
}

wait_until_idle() {
    local state
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        case $state in
        idle | mixed | allocated) return 0 ;;
        down* | drain* | fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    log "node $NODE did not become idle (state: ${state:-unknown}); see $LOG_DIR"
    return 1
}

install_packages
start_munge
if [[ $(write_config) == changed ]]; then
    log "slurm.conf written; (re)starting daemons"
    stop_daemon /run/slurmd.pid
    stop_daemon /run/slurmctld.pid
fi
start_daemons
wait_until_idle
if ! timeout 60 srun -N1 hostname >/dev/null; then
    log "srun -N1 hostname failed; see $LOG_DIR"
    exit 1
fi
log "one-node cluster up: partition debug on $NODE"
