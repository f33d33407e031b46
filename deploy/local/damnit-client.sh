#!/usr/bin/env bash
# DAMNIT's own client (the published damnit 0.4.0 wheel: GUI + Python API) in a venv of
# its own, for the compatibility tests and for users who want to point DAMNIT's GUI at
# runstream. It is never a runstream dependency: nothing of runstream's imports it.
#
#   damnit-client.sh install   build <cache>/damnit-venv (idempotent; fast when done)
#                              and install Xvfb and the X/GL/font libraries Qt needs
#   damnit-client.sh python    print the venv's python (after install)
#   damnit-client.sh gui DIR   run DAMNIT's GUI on DIR with AMORE_BROKER = our Kafka
#                              (a SASL_SSL stack: AMORE_BROKER=none, as DAMNIT 0.4's GUI
#                              cannot authenticate; docs/security.md)
#
# Settings: RUNSTREAM_CACHE_DIR (default <repo>/.cache), DAMNIT_VERSION (0.4.0),
# RUNSTREAM_DAMNIT_APT=0 skips apt-get (e.g. without root).
set -euo pipefail

RS_TAG=damnit
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DAMNIT_VERSION="${DAMNIT_VERSION:-0.4.0}"
VENV="$RS_CACHE_DIR/damnit-venv"
STAMP="$VENV/.runstream-damnit-$DAMNIT_VERSION"
# Qt's xcb platform plugin and WebEngine need these at run time (Debian 12 names).
APT_PACKAGES=(xvfb xauth libegl1 libgl1 libopengl0 libglib2.0-0 libfontconfig1 fonts-dejavu-core
    libxkbcommon0 libxkbcommon-x11-0 libdbus-1-3 libxcb-cursor0 libxcb-icccm4 libxcb-image0
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
    libxcb-xkb1 libxcb-xfixes0 libxcomposite1 libxdamage1 libxrandr2 libxtst6 libxi6
    libnss3 libasound2 libxkbfile1)

apt_install() {
    [[ "${RUNSTREAM_DAMNIT_APT:-1}" == 1 ]] || return 0
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    log "apt-get install ${missing[*]}"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        "${sudo[@]}" apt-get update -q >/dev/null 2>&1 || true
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
            die "could not install ${missing[*]}"
    }
}

venv_install() {
    [[ -f "$STAMP" && -x "$VENV/bin/python" ]] && return 0
    command -v uv >/dev/null || die "uv is needed (./task installs it)"
    mkdir -p "$RS_CACHE_DIR"
    log "building $VENV with damnit[backend,gui]==$DAMNIT_VERSION (uv's cache makes a rebuild fast)"
    rm -rf "$VENV"
    uv venv -q --python 3.11 "$VENV"
    # pytest-free: only what DAMNIT's GUI and API need, from PyPI.
    uv pip install -q --python "$VENV/bin/python" "damnit[backend,gui]==$DAMNIT_VERSION"
    "$VENV/bin/python" -c "import damnit, damnit.api, damnit.gui.main_window" ||
        die "damnit $DAMNIT_VERSION does not import in $VENV"
    touch "$STAMP"
}

case "${1:-}" in
install)
    with_lock "$RS_CACHE_DIR/damnit-client.lock" apt_install
    with_lock "$RS_CACHE_DIR/damnit-client.lock" venv_install
    log "DAMNIT $DAMNIT_VERSION ready: $VENV/bin/python"
    ;;
python)
    [[ -f "$STAMP" ]] || die "not installed: run $0 install"
    printf '%s\n' "$VENV/bin/python"
    ;;
gui)
    shift
    [[ -f "$STAMP" ]] || die "not installed: run $0 install"
    if [[ -z "${AMORE_BROKER:-}" ]]; then
        security="$RS_KAFKA_SECURITY"
        [[ -s "$RS_STATE_DIR/kafka/security" ]] && security="$(head -n1 "$RS_STATE_DIR/kafka/security")"
        if [[ "$security" == sasl_ssl ]]; then
            # kafka-python gets nothing but AMORE_BROKER from DAMNIT 0.4: no TLS, no SASL
            warn "the local Kafka speaks SASL_SSL only, which DAMNIT 0.4's GUI cannot: no live updates (AMORE_BROKER=none); its edits reach runstream by the store's periodic check"
            export AMORE_BROKER=none
        else
            export AMORE_BROKER="$RS_KAFKA_BOOTSTRAP"
        fi
    fi
    exec "$VENV/bin/python" -m damnit.cli gui "$@"
    ;;
*)
    echo "usage: $0 {install|python|gui DIR}" >&2
    exit 2
    ;;
esac
