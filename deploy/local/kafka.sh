#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller), no Docker.
#
#   kafka.sh install   resolve the Kafka jars from Maven Central into the cache (if missing)
#   kafka.sh start     install if needed, format storage once, start, wait until it answers
#   kafka.sh stop      stop the broker recorded in the pid file (SIGTERM, then SIGKILL)
#   kafka.sh status    one health line; exit 0 iff the broker answers protocol requests
#   kafka.sh env       the client settings (with sasl_ssl: protocol, CA, each service's user)
#   kafka.sh password USER   print a SCRAM user's password (sasl_ssl only)
#
# Settings: see lib.sh (RUNSTREAM_STATE_DIR, RUNSTREAM_CACHE_DIR, RUNSTREAM_KAFKA_PORT,
# RUNSTREAM_KAFKA_CONTROLLER_PORT, RUNSTREAM_KAFKA_HEAP_OPTS, RUNSTREAM_KAFKA_SECURITY, timeouts).
set -euo pipefail

RS_TAG=kafka
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION=4.1.1
LOG4J2_VERSION=2.24.3
MAVEN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

K_POM="$RS_DEPLOY_DIR/kafka-runtime-pom.xml"
K_LOG4J2_CONF="$RS_DEPLOY_DIR/kafka-log4j2.properties"
K_PROBE="$RS_DEPLOY_DIR/kafka_probe.py"

K_DIST="$RS_CACHE_DIR/kafka-$KAFKA_VERSION"
K_LIB="$K_DIST/lib"
K_MANIFEST="$K_DIST/lib.manifest"
K_MAVEN_REPO="$RS_CACHE_DIR/m2"

K_STATE="$RS_STATE_DIR/kafka"
K_DATA="$K_STATE/data"
K_CONF="$K_STATE/server.properties"
K_PID="$K_STATE/kafka.pid"
K_LOG="$K_STATE/server.log"     # written by log4j2 (kafka-log4j2.properties)
K_OUT="$K_STATE/kafka.out"      # JVM stdout/stderr
K_CLUSTER_ID="$K_STATE/cluster.id"
K_HEAP_OPTS="${RUNSTREAM_KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
K_GC_OPTS="${RUNSTREAM_KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35}"
K_LOG_FROM=0 # byte offsets of the logs when this start launched the JVM
K_OUT_FROM=0

# shellcheck source=kafka-sasl.sh
source "$RS_DEPLOY_DIR/kafka-sasl.sh"

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        printf '%s\n' "$JAVA_HOME/bin/java"
    else
        command -v java || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
    fi
}

# ------------------------------------------------------------------ install
# The jar folder is complete when the manifest written after a successful
# resolution names these versions and every jar it lists is present.
jars_complete() {
    local jar
    [[ -f "$K_MANIFEST" ]] || return 1
    [[ "$(head -n1 "$K_MANIFEST")" == "# kafka=$KAFKA_VERSION log4j2=$LOG4J2_VERSION" ]] || return 1
    while IFS= read -r jar; do
        [[ -z "$jar" || "$jar" == \#* ]] && continue
        [[ -s "$K_LIB/$jar" ]] || return 1
    done <"$K_MANIFEST"
    return 0
}

do_install() {
    local java major work mvn_log jar missing=()
    if jars_complete; then
        log "jars present: $(($(wc -l <"$K_MANIFEST") - 1)) jars in $K_LIB"
        return 0
    fi
    java="$(java_bin)"
    major="$("$java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
    [[ -n "$major" && "$major" -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17+, $java reports '${major:-?}'"
    command -v mvn >/dev/null || die "mvn not found: it is needed once to fetch the Kafka jars from Maven Central"

    mkdir -p "$RS_CACHE_DIR"
    work="$(mktemp -d "$RS_CACHE_DIR/.kafka-resolve.XXXXXX")"
    mvn_log="$RS_CACHE_DIR/kafka-mvn.log"
    log "resolving Kafka $KAFKA_VERSION + log4j2 $LOG4J2_VERSION jars with mvn into $K_LIB (log: $mvn_log)"
    cp "$K_POM" "$work/pom.xml" # run maven outside the repo so it leaves nothing behind
    if ! (cd "$work" && mvn -B -q -f pom.xml \
        -Dmaven.repo.local="$K_MAVEN_REPO" \
        -Dstyle.color=never -Dkafka.version="$KAFKA_VERSION" -Dlog4j2.version="$LOG4J2_VERSION" \
        "$MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" \
        -DoutputDirectory="$work/lib" -DincludeScope=runtime) >"$mvn_log" 2>&1; then
        show_log_tail "$mvn_log" 30
        rm -rf "$work"
        die "mvn could not resolve the Kafka jars (see $mvn_log)"
    fi

    for jar in "kafka_2.13-$KAFKA_VERSION.jar" "kafka-clients-$KAFKA_VERSION.jar" \
        "kafka-server-$KAFKA_VERSION.jar" "kafka-raft-$KAFKA_VERSION.jar" \
        "log4j-core-$LOG4J2_VERSION.jar" "log4j-api-$LOG4J2_VERSION.jar" \
        "log4j-slf4j-impl-$LOG4J2_VERSION.jar"; do
        [[ -s "$work/lib/$jar" ]] || missing+=("$jar")
    done
    compgen -G "$work/lib/scala-library-*.jar" >/dev/null || missing+=("scala-library-*.jar")
    if ((${#missing[@]})); then
        rm -rf "$work"
        die "mvn finished but these jars are missing: ${missing[*]}"
    fi
    # Every org.apache.kafka module must be at the one version.
    local mixed=()
    for jar in "$work"/lib/kafka*.jar; do
        [[ "$jar" == *"-$KAFKA_VERSION.jar" ]] || mixed+=("${jar##*/}")
    done
    if ((${#mixed[@]})); then
        rm -rf "$work"
        die "mixed Kafka versions resolved: ${mixed[*]}"
    fi

    {
        echo "# kafka=$KAFKA_VERSION log4j2=$LOG4J2_VERSION"
        for jar in "$work"/lib/*.jar; do
            printf '%s\n' "${jar##*/}"
        done
    } >"$work/lib.manifest"
    rm -rf "$K_LIB" "$K_MANIFEST"
    mkdir -p "$K_DIST"
    mv "$work/lib" "$K_LIB"
    mv "$work/lib.manifest" "$K_MANIFEST"
    rm -rf "$work"
    log "installed $(($(wc -l <"$K_MANIFEST") - 1)) jars into $K_LIB"
}

# ------------------------------------------------------------------ helpers
# is_our_broker PID: PID is alive and is the broker started with our config.
is_our_broker() {
    local pid="$1" cmd
    pid_alive "$pid" || return 1
    cmd="$(proc_cmdline "$pid")"
    [[ "$cmd" == *" kafka.Kafka $K_CONF"* ]]
}

# probe [TIMEOUT] [quiet|loud]: the broker answers (with sasl_ssl: over TLS, as admin).
probe() {
    local args=(--timeout "${1:-2}")
    [[ "${2:-quiet}" == quiet ]] && args+=(--quiet)
    if [[ "$RS_KAFKA_SECURITY" == sasl_ssl ]]; then
        args+=(--cafile "$K_TLS/ca.pem" --user admin --password-file "$(sasl_password_file admin)")
    fi
    "$RS_PYTHON" "$K_PROBE" "${args[@]}" "$RS_KAFKA_BOOTSTRAP"
}

expected_listeners() {
    if [[ "$RS_KAFKA_SECURITY" == sasl_ssl ]]; then
        sasl_listeners
    else
        printf 'PLAINTEXT://%s,CONTROLLER://%s:%s\n' "$RS_KAFKA_BOOTSTRAP" "$RS_HOST" "$RS_KAFKA_CONTROLLER_PORT"
    fi
}

listener_config() {
    if [[ "$RS_KAFKA_SECURITY" == sasl_ssl ]]; then
        sasl_config
        return 0
    fi
    cat <<EOF
listeners=$(expected_listeners)
advertised.listeners=PLAINTEXT://$RS_HOST:$RS_KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
}

# The storage remembers the mode it was formatted for (its SCRAM users live in it).
check_security_mode() {
    local recorded=plaintext
    [[ -f "$K_DATA/meta.properties" ]] || return 0
    [[ -s "$K_SECURITY_RECORD" ]] && recorded="$(head -n1 "$K_SECURITY_RECORD")"
    [[ "$recorded" == "$RS_KAFKA_SECURITY" ]] ||
        die "the storage in $K_DATA was formatted for RUNSTREAM_KAFKA_SECURITY=$recorded, not $RS_KAFKA_SECURITY: use another RUNSTREAM_STATE_DIR (or remove $K_STATE)"
}

write_config() {
    mkdir -p "$K_STATE" "$K_DATA"
    # umask: with sasl_ssl the file holds the admin and key store passwords
    (umask 077 && cat >"$K_CONF.tmp") <<EOF
# Generated by deploy/local/kafka.sh at every start; edits are overwritten.
# Single combined KRaft node (broker + controller) on loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$RS_HOST:$RS_KAFKA_CONTROLLER_PORT
$(listener_config)
log.dirs=$K_DATA

# Topics
num.partitions=3
auto.create.topics.enable=true
delete.topic.enable=true
default.replication.factor=1
min.insync.replicas=1

# Internal topics on a single node
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Consumer groups: no initial rebalance delay for fast test joins
group.initial.rebalance.delay.ms=0

# Compacted topics are used by the project
log.cleaner.enable=true
log.cleaner.dedupe.buffer.size=33554432
EOF
    mv "$K_CONF.tmp" "$K_CONF"
}

format_storage() {
    local cid java fmt_log="$K_STATE/format.log"
    if [[ -f "$K_DATA/meta.properties" ]]; then
        return 0
    fi
    java="$(java_bin)"
    if [[ -s "$K_CLUSTER_ID" ]]; then
        cid="$(head -n1 "$K_CLUSTER_ID")"
    else
        cid="$("$java" -cp "$K_LIB/*" kafka.tools.StorageTool random-uuid 2>"$fmt_log" | tail -n1)" ||
            { show_log_tail "$fmt_log"; die "kafka.tools.StorageTool random-uuid failed"; }
        [[ "$cid" =~ ^[A-Za-z0-9_-]{22}$ ]] || { show_log_tail "$fmt_log"; die "unexpected cluster id '$cid'"; }
        printf '%s\n' "$cid" >"$K_CLUSTER_ID"
    fi
    log "formatting storage $K_DATA (cluster id $cid, security $RS_KAFKA_SECURITY)"
    local extra=()
    if [[ "$RS_KAFKA_SECURITY" == sasl_ssl ]]; then
        mapfile -t extra < <(sasl_format_args)
    fi
    if ! "$java" -Xmx256m -cp "$K_LIB/*" kafka.tools.StorageTool format \
        -t "$cid" -c "$K_CONF" --ignore-formatted "${extra[@]}" >"$fmt_log" 2>&1; then
        show_log_tail "$fmt_log"
        die "formatting the Kafka storage failed (see $fmt_log)"
    fi
    printf '%s\n' "$RS_KAFKA_SECURITY" >"$K_SECURITY_RECORD"
}

launch() {
    local java deadline pid
    java="$(java_bin)"
    rm -f "$K_PID"
    K_LOG_FROM="$(stat -c %s "$K_LOG" 2>/dev/null || echo 0)"
    K_OUT_FROM="$(stat -c %s "$K_OUT" 2>/dev/null || echo 0)"
    printf '==== %s starting kafka %s ====\n' "$(date -Is)" "$KAFKA_VERSION" >>"$K_OUT"
    # setsid: own session, so the broker outlives the calling shell/terminal.
    # The child writes its own pid before exec'ing java, so the pid file holds
    # the JVM's pid whatever setsid does. "9>&-": the JVM must not inherit the
    # lock fd of with_lock, or it would hold the lock for its whole life.
    # shellcheck disable=SC2086,SC2016  # K_*_OPTS are lists of flags; $$ is for the inner bash
    (cd "$K_STATE" && exec setsid bash -c 'echo $$ >"$1.tmp" && mv "$1.tmp" "$1" && shift && exec "$@"' _ "$K_PID" \
        "$java" -server $K_HEAP_OPTS $K_GC_OPTS \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true \
        -Dkafka.logs.dir="$K_STATE" \
        -Dlog4j2.configurationFile="$K_LOG4J2_CONF" \
        -cp "$K_LIB/*" kafka.Kafka "$K_CONF") </dev/null >>"$K_OUT" 2>&1 9>&- &
    deadline=$((SECONDS + 10))
    until [[ -s "$K_PID" ]]; do
        ((SECONDS < deadline)) || { show_log_tail "$K_OUT" 30 "$K_OUT_FROM"; die "the broker process did not start"; }
        sleep 0.05
    done
    pid="$(read_pid_file "$K_PID")"
    log "started java pid $pid (log: $K_LOG)"
}

# wait_ready PID: until the broker answers; returns EX_PORT_TAKEN if it could not bind its port.
EX_PORT_TAKEN=75
wait_ready() {
    local pid="$1" deadline=$((SECONDS + RS_START_TIMEOUT))
    while :; do
        if ! pid_alive "$pid"; then
            rm -f "$K_PID"
            if tail -c "+$((K_LOG_FROM + 1))" "$K_LOG" 2>/dev/null | grep -q "Address already in use"; then
                return "$EX_PORT_TAKEN"
            fi
            show_log_tail "$K_LOG" 30 "$K_LOG_FROM"
            show_log_tail "$K_OUT" 15 "$K_OUT_FROM"
            die "the broker (pid $pid) exited during startup"
        fi
        if port_listening "$RS_KAFKA_PORT" && probe 2; then
            break
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$K_LOG" 30 "$K_LOG_FROM"
            show_log_tail "$K_OUT" 15 "$K_OUT_FROM"
            die "the broker (pid $pid) did not answer on $RS_KAFKA_BOOTSTRAP within ${RS_START_TIMEOUT}s; it is still running (kafka.sh stop)"
        fi
        sleep 0.5
    done
    # The JVM logs through log4j2 into server.log; make sure that really works
    # (the known trap is a missing logging backend: the broker runs silently).
    deadline=$((SECONDS + 15))
    until grep -q "Kafka Server started" "$K_LOG" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            warn "broker answers but $K_LOG has no 'Kafka Server started' line: is log4j2 logging working? (see $K_OUT)"
            break
        fi
        sleep 0.2
    done
}

# ------------------------------------------------------------------ actions
do_start() {
    local pid
    [[ -n "$RS_PYTHON" ]] || die "python3 not found (needed by kafka_probe.py)"
    jars_complete || die "Kafka jars missing in $K_LIB (run kafka.sh install)"
    mkdir -p "$K_STATE"
    pid="$(read_pid_file "$K_PID")"
    if [[ -n "$pid" ]]; then
        if is_our_broker "$pid"; then
            local running
            running="$(sed -n 's/^listeners=//p' "$K_CONF" 2>/dev/null || true)"
            if [[ "$running" != "$(expected_listeners)" ]]; then
                die "already running (pid $pid) with listeners '$running', which differ from the configured ports; run kafka.sh stop first"
            fi
            if probe 2; then
                log "already running (pid $pid) and answering on $RS_KAFKA_BOOTSTRAP"
                return 0
            fi
            log "running (pid $pid) but not answering yet; waiting up to ${RS_START_TIMEOUT}s"
            wait_ready "$pid" || die "the broker (pid $pid) exited: its port was taken (see $K_LOG)"
            log "ready on $RS_KAFKA_BOOTSTRAP (pid $pid)"
            return 0
        fi
        log "stale pid file (pid $pid is not running our broker); starting afresh"
        rm -f "$K_PID"
    fi
    local port
    for port in "$RS_KAFKA_PORT" "$RS_KAFKA_CONTROLLER_PORT"; do
        if port_listening "$port"; then
            die "port $RS_HOST:$port is already in use by a process we did not start ($(port_owner "$port")); stop it or set RUNSTREAM_KAFKA_PORT / RUNSTREAM_KAFKA_CONTROLLER_PORT"
        fi
    done
    check_security_mode
    if [[ "$RS_KAFKA_SECURITY" == sasl_ssl ]]; then sasl_prepare; fi
    write_config
    format_storage
    log "starting Kafka $KAFKA_VERSION on $RS_KAFKA_BOOTSTRAP (controller $RS_HOST:$RS_KAFKA_CONTROLLER_PORT)"
    # A port in Linux's ephemeral range (see wait_port_free) can still be taken
    # by a client socket between the check and the broker's bind: then the
    # broker exits and is started again.
    local attempt rc
    for attempt in 1 2 3 4 5; do
        for port in "$RS_KAFKA_PORT" "$RS_KAFKA_CONTROLLER_PORT"; do
            wait_port_free "$port" 90 || die "port $RS_HOST:$port stayed in use for 90s: $(port_sockets "$port" | head -n1)"
        done
        launch
        pid="$(read_pid_file "$K_PID")"
        rc=0
        wait_ready "$pid" || rc=$?
        ((rc == 0)) && break
        ((attempt < 5)) || die "the broker could not bind its ports in 5 attempts (see $K_LOG)"
        warn "a port was taken while the broker started (a client socket's ephemeral port?); starting again in 2s (attempt $((attempt + 1)) of 5)"
        sleep 2
    done
    log "ready on $RS_KAFKA_BOOTSTRAP (pid $pid)"
}

do_stop() {
    local pid
    pid="$(read_pid_file "$K_PID")"
    if [[ -z "$pid" ]]; then
        log "not running (no pid file)"
        return 0
    fi
    if ! is_our_broker "$pid"; then
        log "not running (stale pid file for pid $pid removed)"
        rm -f "$K_PID"
        return 0
    fi
    log "stopping pid $pid (SIGTERM, up to ${RS_STOP_TIMEOUT}s)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$RS_STOP_TIMEOUT" "$pid"; then
        warn "pid $pid still running after ${RS_STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone 10 "$pid" || die "pid $pid survived SIGKILL"
    fi
    rm -f "$K_PID"
    log "stopped"
}

do_status() {
    local pid summary
    pid="$(read_pid_file "$K_PID")"
    if [[ -n "$pid" ]] && is_our_broker "$pid"; then
        if summary="$(probe 3 loud 2>&1)"; then
            printf 'kafka     OK    pid %s, %s\n' "$pid" "$summary"
            return 0
        fi
        printf 'kafka     FAIL  pid %s running but not healthy: %s\n' "$pid" "$summary"
        return 1
    fi
    if [[ -n "$pid" ]]; then
        printf 'kafka     DOWN  stale pid file (pid %s not running)' "$pid"
    else
        printf 'kafka     DOWN  not running'
    fi
    if port_listening "$RS_KAFKA_PORT"; then
        printf '; but port %s is used by a process we did not start (%s)' "$RS_KAFKA_PORT" "$(port_owner "$RS_KAFKA_PORT")"
    fi
    printf '\n'
    return 1
}

do_env() {
    printf 'export RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS=%s\n' "$RS_KAFKA_BOOTSTRAP"
    if [[ "$RS_KAFKA_SECURITY" == sasl_ssl ]]; then sasl_env; fi
}

usage() {
    echo "usage: $0 {install|start|stop|status|env|password USER}" >&2
    exit 2
}

if [[ "${1:-}" == password && $# -eq 2 ]]; then
    [[ "$RS_KAFKA_SECURITY" == sasl_ssl ]] || die "password: only with RUNSTREAM_KAFKA_SECURITY=sasl_ssl"
    sasl_password "$2"
    exit 0
fi
[[ $# -eq 1 ]] || usage
case "$1" in
install) with_lock "$RS_CACHE_DIR/.kafka-install.lock" do_install ;;
start)
    # The install lock guards the shared jar cache, the state lock this instance.
    jars_complete || with_lock "$RS_CACHE_DIR/.kafka-install.lock" do_install
    with_lock "$K_STATE/.lock" do_start
    ;;
stop)
    if [[ -d "$K_STATE" ]]; then
        with_lock "$K_STATE/.lock" do_stop
    else
        log "not running (no state dir $K_STATE)"
    fi
    ;;
status) do_status ;;
env) do_env ;;
*) usage ;;
esac
