#!/usr/bin/env bash
# A real one-node Slurm (munged, slurmctld, slurmd, slurmrestd with JWT auth) on loopback.
#
#   slurm.sh install          apt-get the Debian packages, create the job user, let it reach the repo
#   slurm.sh start            install if needed, start what is not running, wait until ready
#   slurm.sh stop             cancel every job, stop the daemons by pid file, wait until gone
#   slurm.sh stop-rest        stop only slurmrestd (tests use it; 'start' brings it back)
#   slurm.sh status           one line per daemon + REST ping + node state; exit 0 iff ready
#   slurm.sh token [LIFESPAN] print a fresh JWT for the job user (default lifespan 1800 s)
#   slurm.sh env              print the export lines the gateway and tests use
#
# Ready means: every daemon's pid file names a live process, GET /slurm/v0.0.38/ping
# answers "UP" with a minted token, and the node is idle.
# Findings behind every choice here: /work/shared/reference/slurm-local.md.
#
# Settings (environment):
#   RUNSTREAM_STATE_DIR            state root (default <repo>/.state); Slurm lives in $STATE/slurm
#   RUNSTREAM_SLURM_USER           unprivileged job user (default slurmtest)
#   RUNSTREAM_SLURMRESTD_PORT      slurmrestd on 127.0.0.1 (default 6820)
#   RUNSTREAM_SLURMCTLD_PORT       slurmctld (default 36817; Slurm's own default 6817 is avoided)
#   RUNSTREAM_SLURMD_PORT          slurmd (default 36818)
#   RUNSTREAM_SLURM_CPUS           CPUs of the node (default: what slurmd -C reports)
#   RUNSTREAM_SLURM_FRESH          1 (default): a slurmctld that is not running starts with empty
#                                  state (job ids from 1); 0: it recovers its saved jobs, as a
#                                  production controller restart does
set -euo pipefail

# shellcheck disable=SC2034  # read by lib.sh
RS_TAG=slurm
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SL_DIR="$RS_STATE_DIR/slurm"
SL_USER="${RUNSTREAM_SLURM_USER:-slurmtest}"
SL_REST_PORT="${RUNSTREAM_SLURMRESTD_PORT:-6820}"
SL_CTLD_PORT="${RUNSTREAM_SLURMCTLD_PORT:-36817}"
SL_SLURMD_PORT="${RUNSTREAM_SLURMD_PORT:-36818}"
SL_API=v0.0.38
SL_URL="http://$RS_HOST:$SL_REST_PORT"
SL_CONF="$SL_DIR/etc/slurm.conf"
SL_JWT_KEY="$SL_DIR/etc/jwt_hs256.key"
SL_JOBS_DIR="$SL_DIR/jobs"
SL_LOCK="$SL_DIR.lock"
SL_PACKAGES=(munge slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin curl acl)
SL_DAEMONS=(munged slurmctld slurmd slurmrestd)
SL_FRESH="${RUNSTREAM_SLURM_FRESH:-1}"
[[ "$SL_FRESH" == 0 || "$SL_FRESH" == 1 ]] || die "RUNSTREAM_SLURM_FRESH must be 0 or 1"

_rs_require_port RUNSTREAM_SLURMRESTD_PORT "$SL_REST_PORT"
_rs_require_port RUNSTREAM_SLURMCTLD_PORT "$SL_CTLD_PORT"
_rs_require_port RUNSTREAM_SLURMD_PORT "$SL_SLURMD_PORT"
[[ "$SL_USER" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "RUNSTREAM_SLURM_USER '$SL_USER' is not a user name"

export SLURM_CONF="$SL_CONF"

pid_file() { printf '%s/run/%s.pid\n' "$SL_DIR" "$1"; }

# daemon_pid NAME: the live pid of a daemon we started, else nothing (and status 1).
daemon_pid() {
    local pid
    pid="$(read_pid_file "$(pid_file "$1")")"
    if pid_alive "$pid" && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]]; then
        printf '%s' "$pid"
        return 0
    fi
    return 1
}

# ---------------------------------------------------------------- install
packages_missing() {
    local p
    for p in "${SL_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 0
    done
    return 1
}

# Let the job user traverse every ancestor of PATH (read/execute comes from 'other' bits).
grant_traverse() {
    local path="$1" dir="" part
    local -a parts
    IFS=/ read -r -a parts <<<"${path#/}"
    unset 'parts[${#parts[@]}-1]'
    for part in "${parts[@]}"; do
        dir="$dir/$part"
        [[ -d "$dir" ]] || return 0
        if ! runuser -u "$SL_USER" -- test -x "$dir" 2>/dev/null; then
            log "granting $SL_USER traverse (x) on $dir via ACL"
            setfacl -m "u:$SL_USER:x" "$dir"
        fi
    done
}

do_install_locked() {
    if packages_missing; then
        [[ $EUID -eq 0 ]] || die "installing packages needs root"
        local guard=""
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            # Keep the packages' postinst from starting system-wide daemons.
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 0755 /usr/sbin/policy-rc.d
            guard=/usr/sbin/policy-rc.d
        fi
        log "installing ${SL_PACKAGES[*]}"
        local rc=0
        {
            DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                    "${SL_PACKAGES[@]}"
        } >"$RS_STATE_DIR/slurm-apt.log" 2>&1 || rc=$?
        [[ -n "$guard" ]] && rm -f "$guard"
        if ((rc != 0)); then
            show_log_tail "$RS_STATE_DIR/slurm-apt.log"
            die "apt-get failed (exit $rc)"
        fi
    fi
    if ! id -u "$SL_USER" >/dev/null 2>&1; then
        log "creating job user $SL_USER"
        useradd -m -s /bin/bash "$SL_USER"
    fi
    # Jobs run the repository's interpreter as the job user: it must reach the venv's
    # python (its real path may sit under a 0700 home such as /root) and the sources.
    local py="$RS_REPO_ROOT/.venv/bin/python"
    if [[ -e "$py" ]]; then
        grant_traverse "$(readlink -f "$py")"
        runuser -u "$SL_USER" -- "$py" -c 'import sys' ||
            die "job user $SL_USER cannot run $py (check permissions of its real path)"
    fi
    grant_traverse "$RS_REPO_ROOT/pyproject.toml"
    grant_traverse "$SL_DIR/x"
}

do_install() {
    mkdir -p "$RS_STATE_DIR"
    with_lock "$SL_LOCK" do_install_locked
}

# ---------------------------------------------------------------- config
write_config() {
    mkdir -p "$SL_DIR"/{etc,munge,state,spool/slurmd,run,log,jobs}
    chmod 0755 "$SL_DIR" "$SL_DIR"/{etc,munge,spool,spool/slurmd,run,log}
    chown "$SL_USER:" "$SL_JOBS_DIR"
    chmod 1777 "$SL_JOBS_DIR"
    if [[ ! -s "$SL_DIR/munge/munge.key" ]]; then
        head -c 1024 /dev/urandom >"$SL_DIR/munge/munge.key"
    fi
    chmod 0400 "$SL_DIR/munge/munge.key"
    if [[ ! -s "$SL_JWT_KEY" ]]; then
        head -c 32 /dev/urandom >"$SL_JWT_KEY"
    fi
    chmod 0600 "$SL_JWT_KEY"

    local cpus sockets cores threads mem
    cpus="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')"
    mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
    cpus="${RUNSTREAM_SLURM_CPUS:-$cpus}"
    [[ "$cpus" =~ ^[0-9]+$ && "$mem" =~ ^[0-9]+$ ]] || die "could not read 'slurmd -C'"
    sockets=1 cores="$cpus" threads=1
    mem=$((mem * 9 / 10))
    cat >"$SL_CONF.new" <<EOF
# Generated by deploy/local/slurm.sh; edits are overwritten on start.
ClusterName=local
SlurmctldHost=localhost($RS_HOST)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$SL_CTLD_PORT
SlurmdPort=$SL_SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$SL_DIR/munge/munge.socket
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$SL_JWT_KEY
StateSaveLocation=$SL_DIR/state
SlurmdSpoolDir=$SL_DIR/spool/slurmd
SlurmctldPidFile=$SL_DIR/run/slurmctld.pid
SlurmdPidFile=$SL_DIR/run/slurmd.pid
SlurmctldLogFile=$SL_DIR/log/slurmctld.log
SlurmdLogFile=$SL_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
KillWait=5
NodeName=localhost NodeAddr=$RS_HOST CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=other Nodes=localhost Default=NO MaxTime=INFINITE State=UP
EOF
    chmod 0644 "$SL_CONF.new"
    mv -f "$SL_CONF.new" "$SL_CONF"
}

# ---------------------------------------------------------------- REST probes
# token LIFESPAN: a JWT for the job user, minted by slurmctld.
mint_token() {
    local out
    out="$(scontrol token "username=$SL_USER" "lifespan=${1:-1800}" 2>&1)" ||
        die "scontrol token failed: $out"
    out="${out#SLURM_JWT=}"
    [[ "$out" =~ ^[A-Za-z0-9_.-]+$ ]] || die "scontrol token printed no token"
    printf '%s\n' "$out"
}

# rest GET-PATH TOKEN: the JSON body, or failure.
rest_get() {
    curl -fsS --max-time 5 -H "X-SLURM-USER-NAME: $SL_USER" -H "X-SLURM-USER-TOKEN: $2" \
        "$SL_URL/slurm/$SL_API/$1"
}

rest_ready() {
    local token ping node
    token="$(scontrol token "username=$SL_USER" lifespan=60 2>/dev/null)" || return 1
    token="${token#SLURM_JWT=}"
    ping="$(rest_get ping "$token" 2>/dev/null | jq -r '.pings[0].ping // empty')" || return 1
    [[ "$ping" == UP ]] || return 1
    node="$(rest_get nodes "$token" 2>/dev/null | jq -r '.nodes[0].state // empty')" || return 1
    [[ "$node" == idle || "$node" == mixed || "$node" == allocated ]]
}

# ---------------------------------------------------------------- start
start_munged() {
    daemon_pid munged >/dev/null && return 0
    rm -f "$SL_DIR/munge/munge.socket" "$SL_DIR/munge/munge.socket.lock" "$(pid_file munged)"
    munged --key-file="$SL_DIR/munge/munge.key" --socket="$SL_DIR/munge/munge.socket" \
        --pid-file="$(pid_file munged)" --log-file="$SL_DIR/log/munged.log" \
        --seed-file="$SL_DIR/munge/munged.seed" \
        9>&- </dev/null >>"$SL_DIR/log/munged.stderr" 2>&1 || {
        show_log_tail "$SL_DIR/log/munged.log"
        die "munged did not start"
    }
}

start_slurmctld() {
    daemon_pid slurmctld >/dev/null && return 1
    if [[ "$SL_FRESH" == 1 ]]; then
        # A fresh controller: no old jobs, job ids restart at 1.
        rm -rf "${SL_DIR:?}/state" "${SL_DIR:?}/spool/slurmd"
        mkdir -p "$SL_DIR/state" "$SL_DIR/spool/slurmd"
        chmod 0755 "$SL_DIR/spool/slurmd"
    fi
    : >"$SL_DIR/log/slurmctld.log"
    rm -f "$(pid_file slurmctld)"
    slurmctld 9>&- </dev/null >>"$SL_DIR/log/slurmctld.stderr" 2>&1 || {
        show_log_tail "$SL_DIR/log/slurmctld.log"
        die "slurmctld did not start"
    }
    return 0
}

start_slurmd() {
    daemon_pid slurmd >/dev/null && return 0
    rm -f "$(pid_file slurmd)"
    slurmd -N localhost 9>&- </dev/null >>"$SL_DIR/log/slurmd.stderr" 2>&1 || {
        show_log_tail "$SL_DIR/log/slurmd.log"
        die "slurmd did not start"
    }
}

start_slurmrestd() {
    daemon_pid slurmrestd >/dev/null && return 0
    if port_listening "$SL_REST_PORT"; then
        die "port $SL_REST_PORT is taken by $(port_owner "$SL_REST_PORT"); set RUNSTREAM_SLURMRESTD_PORT"
    fi
    # Unprivileged (it refuses root); SLURM_JWT=daemon makes it use auth/jwt towards
    # slurmctld; only the v0.0.3x plugins (the dbv* ones are fatal without slurmdbd).
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SLURM_CONF="$SL_CONF" SLURM_JWT=daemon \
        setsid setpriv --reuid=nobody --regid=nogroup --clear-groups \
        slurmrestd -s openapi/v0.0.36,openapi/v0.0.37,openapi/v0.0.38 -a rest_auth/jwt \
        "$RS_HOST:$SL_REST_PORT" 9>&- </dev/null >>"$SL_DIR/log/slurmrestd.log" 2>&1 &
    echo $! >"$(pid_file slurmrestd)"
}

wait_ready() {
    local deadline=$((SECONDS + RS_START_TIMEOUT)) d
    until rest_ready; do
        for d in "${SL_DAEMONS[@]}"; do
            if ! daemon_pid "$d" >/dev/null; then
                show_log_tail "$SL_DIR/log/$d.log"
                die "$d died during start-up"
            fi
        done
        ((SECONDS < deadline)) || {
            show_log_tail "$SL_DIR/log/slurmctld.log"
            die "Slurm not ready within ${RS_START_TIMEOUT}s"
        }
        sleep 0.2
    done
}

do_start_locked() {
    local fresh_ctld=0
    if ! packages_missing && id -u "$SL_USER" >/dev/null 2>&1 && [[ -f "$SL_CONF" ]] &&
        daemon_pid munged >/dev/null && daemon_pid slurmctld >/dev/null &&
        daemon_pid slurmd >/dev/null && daemon_pid slurmrestd >/dev/null && rest_ready; then
        log "already running and ready"
        return 0
    fi
    packages_missing && do_install_locked
    id -u "$SL_USER" >/dev/null 2>&1 || do_install_locked
    if ! daemon_pid slurmctld >/dev/null; then
        if [[ "$SL_FRESH" == 1 || ! -f "$SL_CONF" ]]; then
            # The controller restarts from scratch; a stale slurmd would hold old jobs.
            stop_daemon slurmd
            write_config
        fi
        grant_traverse "$SL_JOBS_DIR/x"
    fi
    start_munged
    start_slurmctld && fresh_ctld=1
    start_slurmd
    start_slurmrestd
    wait_ready
    if ((fresh_ctld)); then
        # slurmctld's first scheduling pass comes ~3 s after start; it logs its
        # SchedulerParameters then. Jobs submitted before sit PENDING until it.
        local deadline=$((SECONDS + 10))
        until grep -q 'SchedulerParameters=' "$SL_DIR/log/slurmctld.log" 2>/dev/null; do
            ((SECONDS < deadline)) || {
                warn "first scheduling pass not seen within 10 s"
                break
            }
            sleep 0.2
        done
    fi
    log "ready: $SL_URL (API $SL_API), job user $SL_USER, state $SL_DIR"
}

do_start() {
    mkdir -p "$RS_STATE_DIR"
    with_lock "$SL_LOCK" do_start_locked
}

# ---------------------------------------------------------------- stop
stop_daemon() {
    local name="$1" pid
    pid="$(daemon_pid "$name")" || {
        rm -f "$(pid_file "$name")"
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$RS_STOP_TIMEOUT" "$pid"; then
        warn "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone 5 "$pid" || die "$name (pid $pid) does not die"
    fi
    rm -f "$(pid_file "$name")"
    log "stopped $name (pid $pid)"
}

cancel_all_jobs() {
    daemon_pid slurmctld >/dev/null || return 0
    local ids deadline=$((SECONDS + 20))
    ids="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')" || return 0
    [[ -n "${ids// /}" ]] || return 0
    log "cancelling jobs: $ids"
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null || true
    while [[ -n "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ]]; do
        ((SECONDS < deadline)) || {
            warn "jobs still present after 20 s"
            break
        }
        sleep 0.5
    done
}

do_stop_locked() {
    cancel_all_jobs
    stop_daemon slurmrestd
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
}

do_stop() {
    [[ -d "$SL_DIR" ]] || return 0
    with_lock "$SL_LOCK" do_stop_locked
}

do_stop_rest() {
    [[ -d "$SL_DIR" ]] || return 0
    with_lock "$SL_LOCK" stop_daemon slurmrestd
}

# ---------------------------------------------------------------- status / token / env
do_status() {
    local d pid ok=0
    for d in "${SL_DAEMONS[@]}"; do
        if pid="$(daemon_pid "$d")"; then
            printf '%-11s running (pid %s)\n' "$d" "$pid"
        else
            printf '%-11s stopped\n' "$d"
            ok=1
        fi
    done
    if ((ok == 0)) && rest_ready; then
        printf '%-11s ready at %s (ping UP, node idle)\n' rest "$SL_URL"
    else
        printf '%-11s not ready\n' rest
        ok=1
    fi
    return "$ok"
}

do_token() {
    local lifespan="${1:-1800}"
    if ! [[ "$lifespan" =~ ^[0-9]+$ ]] || ((lifespan == 0)); then
        die "lifespan must be a number of seconds > 0"
    fi
    daemon_pid slurmctld >/dev/null || die "slurmctld is not running; run '$0 start'"
    mint_token "$lifespan"
}

do_env() {
    printf 'export SLURM_CONF=%s\n' "$SL_CONF"
    printf 'export RUNSTREAM_SLURM_DIR=%s\n' "$SL_DIR"
    printf 'export RUNSTREAM_SLURM_JOBS_DIR=%s\n' "$SL_JOBS_DIR"
    printf 'export RUNSTREAM_SLURM_JWT_KEY=%s\n' "$SL_JWT_KEY"
    printf 'export RUNSTREAM_SLURM_GATEWAY_BACKEND=slurm\n'
    printf 'export RUNSTREAM_SLURM_GATEWAY_SLURM__URL=%s\n' "$SL_URL"
    printf 'export RUNSTREAM_SLURM_GATEWAY_SLURM__USER=%s\n' "$SL_USER"
    printf 'export RUNSTREAM_SLURM_GATEWAY_SLURM__API_VERSION=%s\n' "$SL_API"
    printf 'export RUNSTREAM_SLURM_GATEWAY_TOKEN__SOURCE=command\n'
    printf "export RUNSTREAM_SLURM_GATEWAY_TOKEN__COMMAND='%s token {lifespan}'\n" \
        "$RS_DEPLOY_DIR/slurm.sh"
}

usage() {
    echo "usage: $0 {install|start|stop|stop-rest|status|token [lifespan]|env}" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
case "$1" in
install) do_install ;;
start) do_start ;;
stop) do_stop ;;
stop-rest) do_stop_rest ;;
status) do_status ;;
token)
    [[ $# -le 2 ]] || usage
    do_token "${2:-1800}"
    ;;
env) do_env ;;
*) usage ;;
esac
