# shellcheck shell=bash
# shellcheck disable=SC2034  # the RS_* settings are used by the scripts that source this
# Shared defaults and helpers for deploy/local/*.sh. Source it; do not run it.
#
# Configuration (environment variables):
#   RUNSTREAM_STATE_DIR              logs, pid files, data   (default <repo>/.state)
#   RUNSTREAM_CACHE_DIR              Kafka jars, maven repo   (default <repo>/.cache)
#   RUNSTREAM_KAFKA_PORT             Kafka client listener    (default 29092)
#   RUNSTREAM_KAFKA_CONTROLLER_PORT  KRaft controller port    (default 29093)
#   RUNSTREAM_PG_PORT                PostgreSQL TCP port      (default 25432)
#   RUNSTREAM_START_TIMEOUT          seconds to wait for a service to answer (default 120)
#   RUNSTREAM_STOP_TIMEOUT           seconds between polite stop and SIGKILL (default 30)
#   RUNSTREAM_LOCK_TIMEOUT           seconds to wait for a concurrent start/stop/install (default 900)
#   RUNSTREAM_KAFKA_HEAP_OPTS        JVM heap flags (default "-Xms256m -Xmx768m")
#   RUNSTREAM_KAFKA_GC_OPTS          JVM GC flags (default Kafka's own: G1, 20 ms pause goal)
#   RUNSTREAM_PYTHON                 python3 for kafka_probe.py (default /usr/bin/python3)
#   RUNSTREAM_KAFKA_SECURITY         plaintext (default) or sasl_ssl: TLS with a throw-away CA,
#                                    SCRAM users per service and ACLs (kafka-sasl.sh)

if [[ -n "${_RUNSTREAM_LIB_LOADED:-}" ]]; then
    return 0
fi
_RUNSTREAM_LIB_LOADED=1

RS_DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
RS_REPO_ROOT="$(cd "$RS_DEPLOY_DIR/../.." && pwd -P)"

# ---------------------------------------------------------------- messages
RS_TAG="${RS_TAG:-stack}"

log() { printf '[%s] %s\n' "$RS_TAG" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$RS_TAG" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$RS_TAG" "$*" >&2
    exit 1
}

# show_log_tail FILE [LINES] [FROM_BYTE]: print the last LINES (default 30)
# lines of FILE to stderr, only from byte offset FROM_BYTE on if given (so a
# failed start shows this start's output, not an older run's).
show_log_tail() {
    local file="$1" lines="${2:-30}" from="${3:-0}" size
    size="$(stat -c %s "$file" 2>/dev/null || echo 0)"
    ((from <= size)) || from=0 # the file was rotated or truncated
    if ((size > from)); then
        printf '[%s] ---- last %s lines of %s ----\n' "$RS_TAG" "$lines" "$file" >&2
        tail -c +"$((from + 1))" "$file" | tail -n "$lines" | sed 's/^/    /' >&2
        printf '[%s] ---- end of %s ----\n' "$RS_TAG" "$file" >&2
    else
        printf '[%s] (log %s has nothing new)\n' "$RS_TAG" "$file" >&2
    fi
}

# ---------------------------------------------------------------- settings
_rs_require_port() {
    local name="$1" value="$2"
    if ! [[ "$value" =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then
        die "$name must be a TCP port number, got '$value'"
    fi
}

# Make a path absolute (relative paths are taken from the current directory).
_rs_abspath() {
    case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$(pwd -P)" "$1" ;;
    esac
}

RS_STATE_DIR="$(_rs_abspath "${RUNSTREAM_STATE_DIR:-$RS_REPO_ROOT/.state}")"
RS_CACHE_DIR="$(_rs_abspath "${RUNSTREAM_CACHE_DIR:-$RS_REPO_ROOT/.cache}")"
RS_KAFKA_PORT="${RUNSTREAM_KAFKA_PORT:-29092}"
RS_KAFKA_CONTROLLER_PORT="${RUNSTREAM_KAFKA_CONTROLLER_PORT:-29093}"
RS_PG_PORT="${RUNSTREAM_PG_PORT:-25432}"
RS_START_TIMEOUT="${RUNSTREAM_START_TIMEOUT:-120}"
RS_STOP_TIMEOUT="${RUNSTREAM_STOP_TIMEOUT:-30}"
RS_LOCK_TIMEOUT="${RUNSTREAM_LOCK_TIMEOUT:-900}"
RS_HOST=127.0.0.1
RS_KAFKA_SECURITY="${RUNSTREAM_KAFKA_SECURITY:-plaintext}"
[[ "$RS_KAFKA_SECURITY" == plaintext || "$RS_KAFKA_SECURITY" == sasl_ssl ]] ||
    die "RUNSTREAM_KAFKA_SECURITY must be plaintext or sasl_ssl, got '$RS_KAFKA_SECURITY'"

_rs_require_port RUNSTREAM_KAFKA_PORT "$RS_KAFKA_PORT"
_rs_require_port RUNSTREAM_KAFKA_CONTROLLER_PORT "$RS_KAFKA_CONTROLLER_PORT"
_rs_require_port RUNSTREAM_PG_PORT "$RS_PG_PORT"
[[ "$RS_KAFKA_PORT" != "$RS_KAFKA_CONTROLLER_PORT" ]] ||
    die "RUNSTREAM_KAFKA_PORT and RUNSTREAM_KAFKA_CONTROLLER_PORT must differ"
[[ "$RS_START_TIMEOUT" =~ ^[0-9]+$ ]] || die "RUNSTREAM_START_TIMEOUT must be a number of seconds"
[[ "$RS_STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "RUNSTREAM_STOP_TIMEOUT must be a number of seconds"
[[ "$RS_LOCK_TIMEOUT" =~ ^[0-9]+$ ]] || die "RUNSTREAM_LOCK_TIMEOUT must be a number of seconds"

RS_KAFKA_BOOTSTRAP="$RS_HOST:$RS_KAFKA_PORT"
RS_POSTGRES_DSN="postgresql://runstream:runstream@$RS_HOST:$RS_PG_PORT/runstream"

# A plain python3 for kafka_probe.py (stdlib only). Prefer the system one:
# a pyenv shim on PATH costs ~0.4 s per call.
if [[ -n "${RUNSTREAM_PYTHON:-}" ]]; then
    RS_PYTHON="$RUNSTREAM_PYTHON"
elif [[ -x /usr/bin/python3 ]]; then
    RS_PYTHON=/usr/bin/python3
else
    RS_PYTHON="$(command -v python3 || true)"
fi

# ---------------------------------------------------------------- processes
# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/stat" ]] || return 1
    # Field 3 of /proc/PID/stat is the state; the command name (field 2) may
    # contain spaces, so cut after the last ')'.
    state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# read_pid_file FILE: print the pid stored in FILE (empty if none/garbage).
read_pid_file() {
    local file="$1" pid=""
    if [[ -f "$file" ]]; then
        pid="$(head -n1 "$file" 2>/dev/null | tr -dc '0-9')" || pid=""
    fi
    printf '%s' "$pid"
}

# proc_cmdline PID: the command line with NULs turned into spaces.
proc_cmdline() {
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
}

# wait_gone TIMEOUT PID...: wait until none of the pids is alive.
wait_gone() {
    local timeout="$1" deadline pid any
    shift
    deadline=$((SECONDS + timeout))
    while :; do
        any=0
        for pid in "$@"; do
            if pid_alive "$pid"; then any=1; fi
        done
        ((any == 0)) && return 0
        ((SECONDS >= deadline)) && return 1
        sleep 0.2
    done
}

# port_listening PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_listening() {
    local port="$1"
    (exec 3<>"/dev/tcp/$RS_HOST/$port") 2>/dev/null
}

# port_owner PORT: best-effort description of who listens on the port.
port_owner() {
    ss -Htlnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:(\(.*\))$/\1/p' | head -n1
}

# port_sockets PORT: the TCP sockets (any state) whose local port is PORT, one per line.
port_sockets() {
    ss -Htan "sport = :$1" 2>/dev/null
}

# wait_port_free PORT TIMEOUT: until no socket uses PORT locally (1 if still used).
# A port in Linux's ephemeral range (32768-60999; our defaults lie below it)
# can be handed to a client that keeps reconnecting while the server is down as
# its own local port (it may even connect to itself); the socket then lingers
# in TIME-WAIT for 60 s and the server cannot bind the port.
wait_port_free() {
    local port="$1" deadline=$((SECONDS + $2)) said=0
    while [[ -n "$(port_sockets "$port")" ]]; do
        ((SECONDS >= deadline)) && return 1
        if ((said == 0)); then
            warn "port $port is still used by a client socket ($(port_sockets "$port" | head -n1 | tr -s ' ')); waiting for it to go (up to ${2}s)"
            said=1
        fi
        sleep 1
    done
}

# with_lock FILE CMD...: run CMD while holding an exclusive flock on FILE.
# Serialises concurrent start/stop/install calls for the same service.
# A daemon started by CMD inherits fd 9; the lock belongs to the open file
# description, so it is released explicitly (flock -u) when CMD ends, even if
# such a daemon keeps the fd open. Daemons should still close it ("9>&-").
with_lock() {
    local file="$1"
    shift
    mkdir -p "$(dirname "$file")"
    (
        trap 'flock -u 9 2>/dev/null || true' EXIT
        flock -w "$RS_LOCK_TIMEOUT" 9 ||
            die "could not acquire lock $file within ${RS_LOCK_TIMEOUT}s (another start/stop/install is running?)"
        "$@"
    ) 9>>"$file"
}
