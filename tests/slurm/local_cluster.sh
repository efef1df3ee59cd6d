#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for tests: tests/slurm/local_cluster.sh {start|stop|status}
#
#   start   install slurmctld/slurmd/slurm-client/munge from Debian if missing (needs root and apt),
#           write /etc/slurm/slurm.conf and gres.conf (one fake GPU), start munged, slurmctld and
#           slurmd from a freshly wiped state folder, and wait until the node is idle.
#           Starting a running cluster stops it first, so every start is clean.
#   stop    cancel leftover jobs, stop slurmd, slurmctld, munged (in that order, by the PIDs this
#           script recorded at start), remove the config files it wrote and the state folder.
#           Safe to run any time; `start` runs it first.
#   status  print the daemons and `sinfo`; exit 0 only when all three run and the node is idle.
#
# Exit codes: 0 ok; 1 not running (status) or a daemon failed to start; 2 cannot run here
# (not root, not Debian/apt, a foreign slurm.conf); 3 apt-get failed.
# The settings follow a measured recipe (notes: slurm-local.md); each one fixed a real failure:
# the config must live at /etc/slurm/slurm.conf (the jobstep plugin strips SLURM_CONF before its
# inner srun), MinJobAge >= 3 x the plugin's first status check (squeue status needs finished jobs
# to stay visible), munged needs its own key/socket in a 755 folder and runs as the munge user,
# and a gres.conf with File= (a fake GPU) so the node does not drain.
# Environment: ASFT_SLURM_STATE (state folder, default /tmp/asft-slurm),
#              ASFT_SLURM_GPUS (fake GPUs on the node, default 1).
set -euo pipefail

STATE=${ASFT_SLURM_STATE:-/tmp/asft-slurm}
GPUS=${ASFT_SLURM_GPUS:-1}
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
MARK="# written by asft tests/slurm/local_cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { printf 'local_cluster: %s\n' "$*" >&2; }
die() { local code=$1; shift; log "$*"; exit "$code"; }

ours() {  # true when the file is absent or was written by this script
    [[ ! -e $1 ]] || head -n 1 "$1" | grep -qF "$MARK"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null || die 2 "slurm is not installed and there is no apt-get to install it"
    # Debian starts services from postinst unless policy-rc.d says no; we start our own daemons.
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
    fi
    log "installing ${PACKAGES[*]} (apt-get)"
    local ok=1
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || ok=0
    if ((ok)); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >&2 || ok=0
    fi
    [[ -n $added_policy ]] && rm -f "$policy"
    ((ok)) || die 3 "apt-get could not install ${PACKAGES[*]}"
}

write_config() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
    mkdir -p /etc/slurm
    cat >"$CONF" <<EOF
$MARK (state: $STATE); removed by 'local_cluster.sh stop'
ClusterName=asftlocal
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket.2
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld/slurmctld.pid
SlurmdPidFile=$STATE/slurmd/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No cgroups, no accounting database: process tracking by /proc, status by squeue.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# One line per finished job (id, state, TRES incl. gres/gpu): what the tests read.
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
# Jobs are not requeueable unless sbatch --requeue asks (what the profile's slurm-requeue does).
JobRequeue=0
# Finished jobs stay visible to squeue for 10 minutes (the plugin's squeue status needs >= 3 x 40 s).
MinJobAge=600
# (AccountingStorageTRES=gres/gpu would record GPUs in jobcomp, but slurmctld then demands slurmdbd.)
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
# A second, non-default partition on the same node: tests pick it (ASFT_SLURM_PARTITION) and check it was used.
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
    # Without File= the node drains ("gres/gpu count reported lower than configured").
    {
        echo "$MARK"
        for ((i = 0; i < GPUS; i++)); do echo "NodeName=localhost Name=gpu File=/dev/null"; done
    } >"$GRES"
}

pid_of() {  # the live PID this script recorded for a daemon (checked against its name), or nothing
    local name=$1 file=$STATE/run/$1.pid pid
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] && echo "$pid"
}

alive() {  # the recorded process still exists (it may not have exec'd into the daemon yet)
    local pid
    pid=$(tr -dc '0-9' <"$STATE/run/$1.pid" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

stop_daemon() {
    local name=$1 pid i
    pid=$(pid_of "$name") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name ($pid) ignored SIGTERM for 15 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

cancel_jobs() {  # jobs still running (an interrupted test) would outlive slurmd in their slurmstepd
    local ids i
    ids=$(timeout 10 squeue -h -o %i 2>/dev/null | paste -sd' ') || return 0
    [[ -n $ids ]] || return 0
    log "cancelling jobs: $ids"
    # shellcheck disable=SC2086
    timeout 10 scancel $ids 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        [[ -z $(timeout 10 squeue -h -t running,completing -o %i 2>/dev/null) ]] && return 0
        sleep 0.5
    done
}

do_stop() {
    if [[ -d $STATE/run ]]; then
        pid_of slurmctld >/dev/null && cancel_jobs
        stop_daemon slurmd
        stop_daemon slurmctld
        stop_daemon munged
    fi
    ours "$CONF" && rm -f "$CONF"
    ours "$GRES" && rm -f "$GRES"
    rm -rf "$STATE"
}

node_state() { timeout 10 sinfo -h -n localhost -o %t 2>/dev/null | head -n 1; }

run_daemon() {  # NAME COMMAND...: in the foreground of its own session, its PID recorded by us (no pid-file race)
    local name=$1
    shift
    setsid "$@" </dev/null >"$STATE/log/$name.out" 2>&1 &
    echo $! >"$STATE/run/$name.pid"
}

do_start() {
    [[ $(id -u) -eq 0 ]] || die 2 "needs root (apt-get, /etc/slurm, daemons); running as uid $(id -u)"
    install_packages
    ours "$CONF" || die 2 "$CONF exists and was not written by this script; refusing to replace it"
    ours "$GRES" || die 2 "$GRES exists and was not written by this script; refusing to replace it"
    do_stop  # clean slate: old job state and drained nodes would carry over
    id munge >/dev/null 2>&1 || die 2 "no 'munge' user (the munge package creates it)"

    # munged refuses group/other-writable folders; its key must be owned by munge and private.
    install -d -m 755 "$STATE" "$STATE/run" "$STATE/log" "$STATE/slurmctld" "$STATE/slurmd"
    install -d -m 755 -o munge -g munge "$STATE/munge"
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chown munge:munge "$STATE/munge/munge.key"
    chmod 400 "$STATE/munge/munge.key"
    write_config

    # munged returns once its daemon is ready and has written its pid file.
    runuser -u munge -- munged --socket="$STATE/munge/munge.socket.2" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed" || die 1 "munged failed: $(tail -n 5 "$STATE/munge/munged.log" 2>/dev/null)"
    cp "$STATE/munge/munged.pid" "$STATE/run/munged.pid"
    run_daemon slurmctld slurmctld -D
    run_daemon slurmd slurmd -D -N localhost

    local i state=""
    for ((i = 0; i < 120; i++)); do
        sleep 0.5
        if ! alive slurmctld || ! alive slurmd; then
            state="a daemon exited"
            break
        fi
        state=$(node_state || true)
        [[ $state == idle ]] && break
    done
    if [[ $state != idle ]]; then
        log "node not idle within 60 s (state '${state:-none}'); logs:"
        tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmctld.out" "$STATE/log/slurmd.log" \
            "$STATE/log/slurmd.out" >&2 2>/dev/null || true
        do_stop
        exit 1
    fi
    log "up: node localhost idle, $(nproc) CPUs, $GPUS fake GPU(s), state in $STATE"
}

do_status() {
    local name pid ok=0
    for name in munged slurmctld slurmd; do
        if pid=$(pid_of "$name"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; ok=1; fi
    done
    if ((ok == 0)); then
        sinfo || ok=1
        [[ $(node_state) == idle || $(node_state) == mix || $(node_state) == alloc ]] || ok=1
    fi
    return $ok
}

case ${1:-} in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) die 2 "usage: $0 {start|stop|status}" ;;
esac
