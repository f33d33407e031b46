# shellcheck shell=bash
# SASL_SSL for the local Kafka (RUNSTREAM_KAFKA_SECURITY=sasl_ssl). Sourced by kafka.sh.
#
# - A throw-away CA and a broker certificate for 127.0.0.1/localhost (openssl),
#   in <state>/kafka/tls/; clients trust tls/ca.pem.
# - The client listener speaks SASL_SSL with SCRAM-SHA-512; one SCRAM user per
#   role (RS_KAFKA_USERS), created when the storage is formatted, each with a random
#   password in <state>/kafka/users/<user>.password (mode 600).
# - The controller listener speaks SSL with client certificates (only the broker's
#   own certificate is accepted): no password for it, no anonymous access.
# - The StandardAuthorizer denies what no ACL allows; "admin" (and the broker itself)
#   are super users. `stack.sh acls` applies runstream's ACLs (runstream kafka acls --apply).

# The users: the administrator, one per service, cluster jobs, people and the facility.
RS_KAFKA_USERS=(admin ingest executor store slurm-gateway job operator user gui facility)
BROKER_DN="CN=runstream-local-broker"

K_TLS="$K_STATE/tls"
K_USERS="$K_STATE/users"
K_SECURITY_RECORD="$K_STATE/security" # the mode the storage was formatted for

sasl_password_file() { printf '%s/%s.password\n' "$K_USERS" "$1"; }

sasl_password() {
    local file
    file="$(sasl_password_file "$1")"
    [[ -s "$file" ]] || die "no password for Kafka user '$1' ($file): the broker was formatted without it"
    head -n1 "$file"
}

# sasl_prepare: the CA, the broker's key store and the users' passwords (once).
sasl_prepare() {
    command -v openssl >/dev/null || die "openssl not found (needed for the local Kafka's TLS certificates)"
    mkdir -p "$K_TLS" "$K_USERS"
    chmod 755 "$K_TLS" # ca.pem is public; every secret file below is 600
    chmod 700 "$K_USERS"
    local user file
    for user in "${RS_KAFKA_USERS[@]}"; do
        file="$(sasl_password_file "$user")"
        [[ -s "$file" ]] && continue
        # The SCRAM users are created when the storage is formatted: a new password now
        # would not match the broker's (the admin's would even lock the broker out).
        [[ -f "$K_DATA/meta.properties" ]] &&
            die "$file is missing but the storage already holds user '$user': restore the file, or start from a new RUNSTREAM_STATE_DIR"
        (umask 077 && openssl rand -hex 24 >"$file")
    done
    [[ -s "$K_TLS/broker.p12" && -s "$K_TLS/ca.pem" ]] && return 0
    log "creating a throw-away CA and the broker certificate in $K_TLS"
    local work
    work="$(mktemp -d "$K_TLS/.new.XXXXXX")"
    (
        umask 077
        cd "$work"
        openssl rand -hex 24 >store.password
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
            -subj "/CN=runstream local CA $(hostname)" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/$BROKER_DN" 2>/dev/null
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth,clientAuth" \
            "basicConstraints=CA:FALSE" >broker.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile broker.ext -out broker.pem 2>/dev/null
        openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
            -out broker.p12 -passout "file:store.password"
        chmod 644 ca.pem
    ) || { rm -rf "$work"; die "openssl could not create the TLS material (in $work)"; }
    mv "$work"/{ca.pem,ca.key,broker.p12,store.password} "$K_TLS/"
    rm -rf "$work"
}

# sasl_listeners: the listeners line kafka.sh writes (and compares with a running broker's).
sasl_listeners() {
    printf 'SASL_SSL://%s:%s,CONTROLLER://%s:%s\n' "$RS_HOST" "$RS_KAFKA_PORT" "$RS_HOST" "$RS_KAFKA_CONTROLLER_PORT"
}

# sasl_config: the server.properties lines of the listeners, TLS, SCRAM and the authorizer.
sasl_config() {
    local admin_pw store_pw
    admin_pw="$(sasl_password admin)"
    store_pw="$(head -n1 "$K_TLS/store.password")"
    cat <<EOF
listeners=$(sasl_listeners)
advertised.listeners=SASL_SSL://$RS_HOST:$RS_KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL

# TLS: the broker's certificate (127.0.0.1, localhost) from the local CA
ssl.keystore.type=PKCS12
ssl.keystore.location=$K_TLS/broker.p12
ssl.keystore.password=$store_pw
ssl.key.password=$store_pw
ssl.truststore.type=PEM
ssl.truststore.location=$K_TLS/ca.pem
# The controller listener accepts the broker's certificate only (mutual TLS).
listener.name.controller.ssl.client.auth=required

# SCRAM on the client listener; the broker talks to itself as "admin"
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pw";

# ACLs: what no ACL allows is denied
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:$BROKER_DN
EOF
}

# sasl_format_args: the StorageTool options that create the SCRAM users.
sasl_format_args() {
    local user
    for user in "${RS_KAFKA_USERS[@]}"; do
        printf -- '--add-scram\nSCRAM-SHA-512=[name=%s,password=%s]\n' "$user" "$(sasl_password "$user")"
    done
}

# sasl_env: the environment of clients of the local stack; each service as its own user.
sasl_env() {
    local service user
    printf 'export RUNSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL\n'
    printf 'export RUNSTREAM_KAFKA_SASL_MECHANISM=SCRAM-SHA-512\n'
    printf 'export RUNSTREAM_KAFKA_SSL_CAFILE=%s\n' "$K_TLS/ca.pem"
    printf 'export RUNSTREAM_KAFKA_SASL_USERNAME=operator\n'
    printf 'export RUNSTREAM_KAFKA_SASL_PASSWORD=%s\n' "$(sasl_password operator)"
    # the web table is a GUI: it reads updates and sends commands and reprocess requests
    for service in INGEST:ingest EXECUTOR:executor STORE:store SLURM_GATEWAY:slurm-gateway WEB:gui; do
        user="${service#*:}"
        printf 'export RUNSTREAM_%s_KAFKA__SASL_USERNAME=%s\n' "${service%%:*}" "$user"
        printf 'export RUNSTREAM_%s_KAFKA__SASL_PASSWORD=%s\n' "${service%%:*}" "$(sasl_password "$user")"
    done
    printf 'export RUNSTREAM_SLURM_GATEWAY_JOB__KAFKA_USERNAME=job\n'
    printf 'export RUNSTREAM_SLURM_GATEWAY_JOB__KAFKA_PASSWORD=%s\n' "$(sasl_password job)"
}
