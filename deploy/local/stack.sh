#!/usr/bin/env bash
# The local runstream stack: a real Kafka (KRaft, single node) and PostgreSQL.
#
#   stack.sh up       install what is missing, start both, return when both answer
#   stack.sh down     stop what these scripts started (by pid file) and wait until gone
#   stack.sh status   one health line per service; exit 0 iff both are healthy
#   stack.sh env      print the export lines the application and tests use
#   stack.sh acls     (sasl_ssl only) create runstream's topics and Kafka ACLs as the admin user
#
# RUNSTREAM_KAFKA_SECURITY=sasl_ssl starts Kafka with TLS, a SCRAM user per service and
# ACLs (kafka-sasl.sh); `up` then applies the ACLs of RUNSTREAM_KAFKA_TOPIC_PREFIX
# (default runstream) and `env` prints each service's own user and password.
# The PostgreSQL DSN (role runstream, password runstream) exists only here, for
# the local development stack: the services have no default database password.
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
    if [[ "$RS_KAFKA_SECURITY" == sasl_ssl ]]; then do_acls; fi
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
    "$KAFKA_SH" env
    printf 'export RUNSTREAM_POSTGRES_DSN=%s\n' "$RS_POSTGRES_DSN"
}

# do_acls: the installation's topics and ACLs, applied as the Kafka admin user.
do_acls() {
    local runstream="${RUNSTREAM_BIN:-$RS_REPO_ROOT/.venv/bin/runstream}"
    [[ "$RS_KAFKA_SECURITY" == sasl_ssl ]] || die "acls: only with RUNSTREAM_KAFKA_SECURITY=sasl_ssl"
    [[ -x "$runstream" ]] || die "$runstream not found: run ./task setup first"
    log "applying runstream's Kafka ACLs for prefix ${RUNSTREAM_KAFKA_TOPIC_PREFIX:-runstream}"
    (
        eval "$("$KAFKA_SH" env)"
        export RUNSTREAM_KAFKA_SASL_USERNAME=admin
        RUNSTREAM_KAFKA_SASL_PASSWORD="$("$KAFKA_SH" password admin)"
        export RUNSTREAM_KAFKA_SASL_PASSWORD
        "$runstream" kafka acls --apply
    ) || die "applying the ACLs failed"
}

usage() {
    echo "usage: $0 {up|down|status|env|acls}" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
case "$1" in
up) do_up ;;
down) do_down ;;
status) do_status ;;
env) do_env ;;
acls) do_acls ;;
*) usage ;;
esac
