#!/usr/bin/env bash
# The local runstream stack: a real Kafka (KRaft, single node) and PostgreSQL.
#
#   stack.sh up       install what is missing, start both, return when both answer
#   stack.sh down     stop what these scripts started (by pid file) and wait until gone
#   stack.sh status   one health line per service; exit 0 iff both are healthy
#   stack.sh env      print the export lines the application and tests use
#
# Composes kafka.sh and postgres.sh; settings are described in lib.sh.
set -euo pipefail

RS_TAG=stack
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_SH="$RS_DEPLOY_DIR/kafka.sh"
POSTGRES_SH="$RS_DEPLOY_DIR/postgres.sh"

# Run "kafka.sh ACTION" and "postgres.sh ACTION" side by side; fail if either fails.
both() {
    local action="$1" kpid ppid krc=0 prc=0
    "$KAFKA_SH" "$action" &
    kpid=$!
    "$POSTGRES_SH" "$action" &
    ppid=$!
    wait "$kpid" || krc=$?
    wait "$ppid" || prc=$?
    ((krc == 0)) || log "kafka.sh $action failed (exit $krc)"
    ((prc == 0)) || log "postgres.sh $action failed (exit $prc)"
    ((krc == 0 && prc == 0))
}

do_up() {
    local started=$SECONDS
    log "up: state $RS_STATE_DIR, cache $RS_CACHE_DIR"
    both install || die "install failed"
    both start || die "start failed; 'stack.sh status' shows what is running, 'stack.sh down' stops it"
    do_status || die "a service is not healthy right after start"
    log "up: both services healthy ($((SECONDS - started))s)"
}

do_down() {
    both stop || die "stop failed"
}

do_status() {
    local krc=0 prc=0
    "$KAFKA_SH" status || krc=$?
    "$POSTGRES_SH" status || prc=$?
    ((krc == 0 && prc == 0))
}

do_env() {
    printf 'export RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS=%s\n' "$RS_KAFKA_BOOTSTRAP"
    printf 'export RUNSTREAM_POSTGRES_DSN=%s\n' "$RS_POSTGRES_DSN"
}

usage() {
    echo "usage: $0 {up|down|status|env}" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
case "$1" in
up) do_up ;;
down) do_down ;;
status) do_status ;;
env) do_env ;;
*) usage ;;
esac
