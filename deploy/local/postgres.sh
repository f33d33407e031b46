#!/usr/bin/env bash
# Local PostgreSQL cluster of our own (not Debian's system cluster), no Docker.
#
#   postgres.sh install   apt-get install postgresql if no initdb is found
#   postgres.sh start     initdb once, start on 127.0.0.1:$RUNSTREAM_PG_PORT, create role/db
#   postgres.sh stop      stop the postmaster recorded in the pid file (fast shutdown, then SIGKILL)
#   postgres.sh status    one health line; exit 0 iff pg_isready succeeds
#
# The server runs as the "postgres" OS user (initdb and postgres refuse root).
# RUNSTREAM_PG_BIN may point at a PostgreSQL bin dir; otherwise the newest
# /usr/lib/postgresql/*/bin is used (an existing cluster pins its version).
# Role "runstream" (password "runstream", LOGIN CREATEDB) owns database "runstream".
set -euo pipefail

RS_TAG=postgres
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

P_STATE="$RS_STATE_DIR/postgres"
P_PID="$P_STATE/postgres.pid"
P_LOG="$P_STATE/postgres.log"
P_LOCATION="$P_STATE/data-location" # records where the cluster lives
P_OS_USER=postgres

P_LOG_FROM=0 # byte offset of the log when this start launched the server

# Set by resolve_location:
P_BASE=""
P_DATA=""
P_SOCK=""

# ------------------------------------------------------------------ helpers
# Run a command as the postgres OS user with a clean environment, from "/"
# (the caller's cwd may not be readable by postgres).
as_pg() {
    (cd / && exec setpriv --reuid="$P_OS_USER" --regid="$P_OS_USER" --init-groups --reset-env -- "$@")
}

pg_can_traverse() {
    as_pg test -x "$1" 2>/dev/null
}

fallback_base() {
    printf '/var/tmp/runstream-pg-%s\n' "$(printf '%s' "$RS_STATE_DIR" | sha256sum | cut -c1-12)"
}

# resolve_location [create]: set P_BASE/P_DATA/P_SOCK. The data dir lives in
# the state dir when the postgres user can reach it, otherwise under /var/tmp.
# The choice is recorded so it stays stable.
resolve_location() {
    local create="${1:-}" recorded=""
    [[ -f "$P_LOCATION" ]] && recorded="$(head -n1 "$P_LOCATION")"
    if [[ -n "$recorded" && -d "$recorded" ]]; then
        P_BASE="$recorded"
    elif [[ -z "$create" ]]; then
        # Read-only callers (stop/status): best guess without creating anything.
        P_BASE="${recorded:-$P_STATE}"
    else
        mkdir -p "$P_STATE"
        if pg_can_traverse "$P_STATE"; then
            P_BASE="$P_STATE"
        else
            P_BASE="$(fallback_base)"
            warn "the postgres OS user cannot traverse $P_STATE (a parent directory is not searchable); the cluster lives in $P_BASE instead (logs and pid file stay in $P_STATE)"
        fi
        mkdir -p "$P_BASE"
        printf '%s\n' "$P_BASE" >"$P_LOCATION"
    fi
    P_DATA="$P_BASE/data"
    P_SOCK="$P_BASE/run"
    # Unix socket paths are limited to 107 bytes.
    if ((${#P_SOCK} + 16 > 100)); then
        P_SOCK="$(fallback_base)/run"
    fi
}

# pg_bin_dir: the bin dir of the installed PostgreSQL to use. An existing
# cluster pins its major version.
pg_bin_dir() {
    local dir ver
    if [[ -n "${RUNSTREAM_PG_BIN:-}" ]]; then
        printf '%s\n' "$RUNSTREAM_PG_BIN"
        return 0
    fi
    if [[ -n "$P_DATA" && -f "$P_DATA/PG_VERSION" ]]; then
        ver="$(head -n1 "$P_DATA/PG_VERSION")"
        dir="/usr/lib/postgresql/$ver/bin"
        [[ -x "$dir/postgres" ]] || die "cluster $P_DATA is PostgreSQL $ver but $dir/postgres is missing (install postgresql-$ver or delete the cluster)"
        printf '%s\n' "$dir"
        return 0
    fi
    dir="$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n1 || true)"
    [[ -n "$dir" ]] || return 1
    printf '%s\n' "$(dirname "$dir")"
}

# is_our_postmaster PID: PID is a live postgres process whose cwd is our data dir.
is_our_postmaster() {
    local pid="$1"
    pid_alive "$pid" || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == postgres ]] || return 1
    [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$(readlink -f "$P_DATA")" ]]
}

# leftover_pids: every process whose cwd is our data dir (postmaster and its
# children chdir there). After a postmaster crash its children may linger.
leftover_pids() {
    local data cwd p
    [[ -d "$P_DATA" ]] || return 0
    data="$(readlink -f "$P_DATA")"
    for p in /proc/[0-9]*; do
        cwd="$(readlink "$p/cwd" 2>/dev/null)" || continue
        [[ "$cwd" == "$data" ]] && pid_alive "${p#/proc/}" && printf '%s\n' "${p#/proc/}"
    done
    return 0
}

# current_pid: our pid file, else the cluster's own postmaster.pid.
current_pid() {
    local pid
    pid="$(read_pid_file "$P_PID")"
    if [[ -n "$pid" ]] && is_our_postmaster "$pid"; then
        printf '%s' "$pid"
        return 0
    fi
    pid="$(read_pid_file "$P_DATA/postmaster.pid")"
    if [[ -n "$pid" ]] && is_our_postmaster "$pid"; then
        printf '%s' "$pid"
        return 0
    fi
    return 1
}

isready() {
    "$1/pg_isready" -h "$RS_HOST" -p "$RS_PG_PORT" -t "${2:-2}" -q
}

# ------------------------------------------------------------------ install
installed() {
    local bin
    bin="$(pg_bin_dir)" && [[ -x "$bin/postgres" && -x "$bin/pg_isready" && -x "$bin/psql" ]] &&
        id -u "$P_OS_USER" >/dev/null 2>&1
}

do_install() {
    local bin
    if installed; then
        bin="$(pg_bin_dir)"
        log "binaries present: $("$bin/postgres" --version) in $bin"
    else
        [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
        log "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin; installing with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql || die "apt-get install postgresql failed"
        bin="$(pg_bin_dir)" || die "apt-get installed postgresql but no initdb is found under /usr/lib/postgresql/*/bin"
        log "installed: $("$bin/postgres" --version) in $bin"
    fi
    id -u "$P_OS_USER" >/dev/null 2>&1 || die "OS user '$P_OS_USER' is missing (it comes with Debian's postgresql package)"
}

# ------------------------------------------------------------------ start
init_cluster() {
    local bin="$1" init_log="$P_STATE/initdb.log"
    if [[ -f "$P_DATA/PG_VERSION" ]]; then
        return 0
    fi
    if [[ -d "$P_DATA" ]] && [[ -n "$(ls -A "$P_DATA")" ]]; then
        die "$P_DATA exists, is not empty and holds no cluster; move it away"
    fi
    mkdir -p "$P_DATA"
    chown "$P_OS_USER:$P_OS_USER" "$P_DATA"
    chmod 700 "$P_DATA"
    log "initdb: new cluster in $P_DATA"
    if ! as_pg "$bin/initdb" -D "$P_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >"$init_log" 2>&1; then
        show_log_tail "$init_log"
        die "initdb failed (see $init_log)"
    fi
}

write_hba() {
    cat >"$P_DATA/pg_hba.conf" <<'EOF'
# Written by deploy/local/postgres.sh at every start; edits are overwritten.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 peer
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256
EOF
    chown "$P_OS_USER:$P_OS_USER" "$P_DATA/pg_hba.conf"
    chmod 600 "$P_DATA/pg_hba.conf"
}

# Remove what a crashed postmaster left behind: lingering children (they exit
# on their own once they notice the postmaster is gone) and postmaster.pid.
clean_after_crash() {
    local pids
    mapfile -t pids < <(leftover_pids)
    if ((${#pids[@]})); then
        log "waiting for ${#pids[@]} leftover process(es) of a dead postmaster to exit: ${pids[*]}"
        if ! wait_gone 15 "${pids[@]}"; then
            warn "sending SIGKILL to leftover postgres processes: ${pids[*]}"
            kill -KILL "${pids[@]}" 2>/dev/null || true
            wait_gone 10 "${pids[@]}" || die "leftover postgres processes survived SIGKILL: ${pids[*]}"
        fi
    fi
    # No live process of this cluster remains, so its lock files are stale.
    # (postgres itself would honour them while the dead postmaster is still
    # an unreaped zombie: "lock file ... already exists".)
    if [[ -f "$P_DATA/postmaster.pid" ]]; then
        log "removing stale $P_DATA/postmaster.pid"
        rm -f "$P_DATA/postmaster.pid"
    fi
    if [[ -e "$P_SOCK/.s.PGSQL.$RS_PG_PORT.lock" ]]; then
        log "removing stale socket lock $P_SOCK/.s.PGSQL.$RS_PG_PORT.lock"
        rm -f "$P_SOCK/.s.PGSQL.$RS_PG_PORT.lock" "$P_SOCK/.s.PGSQL.$RS_PG_PORT"
    fi
}

ensure_role_and_db() {
    local bin="$1"
    as_pg "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$P_SOCK" -p "$RS_PG_PORT" -U postgres -d postgres >/dev/null <<'SQL'
SELECT 'CREATE ROLE runstream' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'runstream') \gexec
ALTER ROLE runstream LOGIN CREATEDB PASSWORD 'runstream';
SELECT 'CREATE DATABASE runstream OWNER runstream' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'runstream') \gexec
SQL
    # Prove password login over TCP works, as the application will use it.
    "$bin/psql" -X -q -At -c 'select 1' "$RS_POSTGRES_DSN" >/dev/null ||
        die "role runstream cannot log in over TCP with $RS_POSTGRES_DSN"
}

wait_ready() {
    local bin="$1" pid="$2" deadline=$((SECONDS + RS_START_TIMEOUT))
    until isready "$bin" 1; do
        if ! pid_alive "$pid"; then
            rm -f "$P_PID"
            show_log_tail "$P_LOG" 30 "$P_LOG_FROM"
            die "the postmaster (pid $pid) exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$P_LOG" 30 "$P_LOG_FROM"
            die "PostgreSQL (pid $pid) did not accept connections on $RS_HOST:$RS_PG_PORT within ${RS_START_TIMEOUT}s; it is still running (postgres.sh stop)"
        fi
        sleep 0.2
    done
}

do_start() {
    local bin pid launched deadline
    resolve_location create
    bin="$(pg_bin_dir)" || die "PostgreSQL is not installed (run postgres.sh install)"

    pid="$(read_pid_file "$P_PID")"
    if [[ -n "$pid" ]] && is_our_postmaster "$pid"; then
        local running_port
        running_port="$(sed -n 4p "$P_DATA/postmaster.pid" 2>/dev/null || true)"
        if [[ -n "$running_port" && "$running_port" != "$RS_PG_PORT" ]]; then
            die "already running (pid $pid) on port $running_port, not on RUNSTREAM_PG_PORT=$RS_PG_PORT; run postgres.sh stop first"
        fi
        if isready "$bin" 2; then
            log "already running (pid $pid) and accepting connections on $RS_HOST:$RS_PG_PORT"
            return 0
        fi
        log "running (pid $pid) but not accepting connections yet; waiting up to ${RS_START_TIMEOUT}s"
        wait_ready "$bin" "$pid"
        log "ready on $RS_HOST:$RS_PG_PORT (pid $pid)"
        return 0
    fi
    if [[ -n "$pid" ]]; then
        log "stale pid file (pid $pid is not our postmaster); starting afresh"
        rm -f "$P_PID"
    fi
    # A postmaster of this cluster started by hand/another state dir copy?
    if pid="$(read_pid_file "$P_DATA/postmaster.pid")" && [[ -n "$pid" ]] && is_our_postmaster "$pid"; then
        die "cluster $P_DATA is already served by postmaster pid $pid, which these scripts did not record; stop it first"
    fi
    clean_after_crash
    if port_listening "$RS_PG_PORT"; then
        die "port $RS_HOST:$RS_PG_PORT is already in use by a process we did not start ($(port_owner "$RS_PG_PORT")); stop it or set RUNSTREAM_PG_PORT"
    fi

    init_cluster "$bin"
    write_hba
    mkdir -p "$P_SOCK"
    chown "$P_OS_USER:$P_OS_USER" "$P_SOCK"
    chmod 755 "$P_SOCK"

    wait_port_free "$RS_PG_PORT" 90 || die "port $RS_HOST:$RS_PG_PORT stayed in use for 90s: $(port_sockets "$RS_PG_PORT" | head -n1)"
    log "starting $("$bin/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /') on $RS_HOST:$RS_PG_PORT (data $P_DATA, log $P_LOG)"
    P_LOG_FROM="$(stat -c %s "$P_LOG" 2>/dev/null || echo 0)"
    printf '==== %s starting postgres ====\n' "$(date -Is)" >>"$P_LOG"
    # setsid: own session, so the server outlives the calling shell/terminal.
    # The log file is opened here (as root), so it works even when the postgres
    # user cannot reach the state dir. "9>&-": the server must not inherit the
    # lock fd of with_lock, or it would hold the lock for its whole life.
    (cd / && exec setsid setpriv --reuid="$P_OS_USER" --regid="$P_OS_USER" --init-groups --reset-env -- \
        "$bin/postgres" -D "$P_DATA" \
        -c listen_addresses="$RS_HOST" \
        -c port="$RS_PG_PORT" \
        -c unix_socket_directories="$P_SOCK" \
        -c logging_collector=off \
        -c log_destination=stderr \
        -c max_connections=200 \
        -c password_encryption=scram-sha-256) </dev/null >>"$P_LOG" 2>&1 9>&- &
    launched=$!

    # The postmaster writes postmaster.pid once it owns the data dir.
    deadline=$((SECONDS + 30))
    while :; do
        pid="$(read_pid_file "$P_DATA/postmaster.pid")"
        [[ -n "$pid" ]] && is_our_postmaster "$pid" && break
        if ! pid_alive "$launched"; then
            show_log_tail "$P_LOG" 30 "$P_LOG_FROM"
            die "the postmaster exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$P_LOG" 30 "$P_LOG_FROM"
            die "the postmaster (pid $launched) did not create $P_DATA/postmaster.pid within 30s"
        fi
        sleep 0.1
    done
    printf '%s\n' "$pid" >"$P_PID"
    log "started postmaster pid $pid"
    wait_ready "$bin" "$pid"
    ensure_role_and_db "$bin"
    log "ready on $RS_HOST:$RS_PG_PORT (pid $pid); role and database 'runstream' present"
}

# ------------------------------------------------------------------ stop
do_stop() {
    local pid pids
    resolve_location
    if ! pid="$(current_pid)"; then
        pid="$(read_pid_file "$P_PID")"
        rm -f "$P_PID"
        mapfile -t pids < <(leftover_pids)
        if ((${#pids[@]} == 0)); then
            if [[ -n "$pid" ]]; then
                log "not running (stale pid file for pid $pid removed)"
            else
                log "not running (no pid file)"
            fi
            return 0
        fi
        # Children of a crashed postmaster: processes we started, so end them.
        clean_after_crash
        log "stopped leftover processes"
        return 0
    fi
    # SIGINT = "fast" shutdown: disconnects clients, writes a checkpoint.
    # (SIGTERM would be "smart" shutdown, which waits for every client to leave.)
    log "stopping postmaster pid $pid (fast shutdown, up to ${RS_STOP_TIMEOUT}s)"
    kill -INT "$pid" 2>/dev/null || true
    if ! wait_gone "$RS_STOP_TIMEOUT" "$pid"; then
        warn "pid $pid still running after ${RS_STOP_TIMEOUT}s; immediate shutdown (SIGQUIT)"
        kill -QUIT "$pid" 2>/dev/null || true
        if ! wait_gone 5 "$pid"; then
            warn "pid $pid still running; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone 10 "$pid" || die "pid $pid survived SIGKILL"
        fi
    fi
    rm -f "$P_PID"
    mapfile -t pids < <(leftover_pids)
    if ((${#pids[@]})); then
        clean_after_crash
    fi
    log "stopped"
}

do_status() {
    local bin pid
    resolve_location
    if pid="$(current_pid)"; then
        bin="$(pg_bin_dir)" || { printf 'postgres  FAIL  pid %s running but no PostgreSQL binaries found\n' "$pid"; return 1; }
        if isready "$bin" 3; then
            printf 'postgres  OK    pid %s, accepting connections on %s:%s (data %s)\n' "$pid" "$RS_HOST" "$RS_PG_PORT" "$P_DATA"
            return 0
        fi
        printf 'postgres  FAIL  pid %s running but not accepting connections on %s:%s\n' "$pid" "$RS_HOST" "$RS_PG_PORT"
        return 1
    fi
    pid="$(read_pid_file "$P_PID")"
    if [[ -n "$pid" ]]; then
        printf 'postgres  DOWN  stale pid file (pid %s not running)' "$pid"
    else
        printf 'postgres  DOWN  not running'
    fi
    if port_listening "$RS_PG_PORT"; then
        printf '; but port %s is used by a process we did not start (%s)' "$RS_PG_PORT" "$(port_owner "$RS_PG_PORT")"
    fi
    printf '\n'
    return 1
}

usage() {
    echo "usage: $0 {install|start|stop|status}" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
case "$1" in
install) with_lock "$RS_STATE_DIR/.postgres-install.lock" do_install ;;
start)
    installed || with_lock "$RS_STATE_DIR/.postgres-install.lock" do_install
    with_lock "$P_STATE/.lock" do_start
    ;;
stop)
    if [[ -d "$P_STATE" ]]; then
        with_lock "$P_STATE/.lock" do_stop
    else
        log "not running (no state dir $P_STATE)"
    fi
    ;;
status) do_status ;;
*) usage ;;
esac
