#!/usr/bin/env bash
# The runstream services as local background processes (web: the browser table).
#
#   services.sh start [SERVICE...]   start (default: all) and wait until each says it started
#   services.sh stop  [SERVICE...]   SIGTERM, then SIGKILL after RUNSTREAM_STOP_TIMEOUT (by pid file)
#   services.sh status               one line per service; exit 0 iff all requested are running
#   services.sh kill9 SERVICE        SIGKILL one service's process group (failure tests)
#
# Each service runs as `runstream serve <name>` in its own session (setsid), so
# stopping it by pid also stops its worker processes. Logs and pid files:
# $RUNSTREAM_STATE_DIR/services/<name>.{log,pid}. Settings come from the
# environment (see docs/runbook.md); the Kafka and PostgreSQL addresses default
# to the local stack's. The web service's URL is printed when it has started
# (RUNSTREAM_WEB_PORT, default 28080; RUNSTREAM_WEB_HOST, default 127.0.0.1).
set -euo pipefail

RS_TAG=services
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL=(store executor ingest slurm-gateway web)
DIR="$RS_STATE_DIR/services"
RUNSTREAM="${RUNSTREAM_BIN:-$RS_REPO_ROOT/.venv/bin/runstream}"

# The local stack's settings (stack.sh env), unless the caller set them: the Kafka address
# (with sasl_ssl also each service's SCRAM user) and the development database's DSN.
while IFS= read -r line; do
    line="${line#export }"
    name="${line%%=*}"
    [[ -n "${!name:-}" ]] || export "${line?}"
done < <("$RS_DEPLOY_DIR/stack.sh" env)

names() {
    if (($# == 0)); then printf '%s\n' "${ALL[@]}"; else printf '%s\n' "$@"; fi
}

check_name() {
    local n
    for n in "${ALL[@]}"; do [[ "$n" == "$1" ]] && return 0; done
    die "unknown service '$1' (choose from: ${ALL[*]})"
}

start_one() {
    local name="$1" pidf="$DIR/$1.pid" log="$DIR/$1.log" pid deadline
    pid="$(read_pid_file "$pidf")"
    if pid_alive "$pid"; then
        log "$name already running (pid $pid)"
        [[ "$name" != web ]] || print_url "$log"
        return 0
    fi
    [[ -x "$RUNSTREAM" ]] || die "$RUNSTREAM not found: run ./task setup first"
    mkdir -p "$DIR"
    : >"$log"
    setsid "$RUNSTREAM" serve "$name" >>"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidf"
    deadline=$((SECONDS + RS_START_TIMEOUT))
    until grep -q "started successfully" "$log" 2>/dev/null; do
        if ! pid_alive "$pid"; then
            show_log_tail "$log" 40
            die "$name exited during start-up"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$log" 40
            die "$name did not start within ${RS_START_TIMEOUT}s"
        fi
        sleep 0.2
    done
    log "$name started (pid $pid, log $log)"
    [[ "$name" != web ]] || print_url "$log"
}

# print_url LOG: the URL the web service logged when it started.
print_url() {
    local url
    url="$(sed -n 's/.*runstream web serving \(http[^ ]*\).*/\1/p' "$1" | tail -n 1)"
    if [[ -n "$url" ]]; then log "web: open $url in a browser"; fi
}

stop_one() {
    local name="$1" pidf="$DIR/$1.pid" pid
    pid="$(read_pid_file "$pidf")"
    if ! pid_alive "$pid"; then
        rm -f "$pidf"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$RS_STOP_TIMEOUT" "$pid"; then
        warn "$name (pid $pid) did not stop within ${RS_STOP_TIMEOUT}s; SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        wait_gone 10 "$pid" || die "$name (pid $pid) survived SIGKILL"
    fi
    # Workers of the service share its session; make sure none outlived it.
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidf"
    log "$name stopped"
}

status_all() {
    local rc=0 name pid
    for name in "$@"; do
        pid="$(read_pid_file "$DIR/$name.pid")"
        if pid_alive "$pid"; then
            printf '%-14s OK    pid %s\n' "$name" "$pid"
        else
            printf '%-14s DOWN\n' "$name"
            rc=1
        fi
    done
    return "$rc"
}

action="${1:-}"
shift || true
case "$action" in
start)
    mapfile -t targets < <(names "$@")
    for n in "${targets[@]}"; do check_name "$n"; done
    for n in "${targets[@]}"; do start_one "$n"; done
    ;;
stop)
    mapfile -t targets < <(names "$@")
    for n in "${targets[@]}"; do check_name "$n"; done
    for n in "${targets[@]}"; do stop_one "$n"; done
    ;;
status)
    mapfile -t targets < <(names "$@")
    status_all "${targets[@]}"
    ;;
kill9)
    (($# == 1)) || die "usage: $0 kill9 SERVICE"
    check_name "$1"
    pid="$(read_pid_file "$DIR/$1.pid")"
    pid_alive "$pid" || die "$1 is not running"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    wait_gone 10 "$pid" || die "$1 survived SIGKILL"
    rm -f "$DIR/$1.pid"
    log "$1 killed (SIGKILL)"
    ;;
*)
    echo "usage: $0 {start|stop|status|kill9} [SERVICE...]" >&2
    exit 2
    ;;
esac
