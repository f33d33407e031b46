#!/usr/bin/env bash
# Debian's chromium, the browser kaleido drives to render plotly thumbnails (PNG).
#
#   chromium.sh install   apt-get install chromium if no chromium/chrome is on PATH
#   chromium.sh status    print the browser found, exit 1 if none
#
# BROWSER_PATH (read by kaleido's choreographer) points at another Chrome/Chromium.
set -euo pipefail
RS_TAG=chromium
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

find_browser() {
    if [[ -n "${BROWSER_PATH:-}" && -x "${BROWSER_PATH}" ]]; then
        echo "$BROWSER_PATH"
        return 0
    fi
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

case "${1:-}" in
install)
    if browser="$(find_browser)"; then
        log "found $browser"
        exit 0
    fi
    [[ $EUID -eq 0 ]] || die "chromium is not installed and installing it needs root (apt-get install chromium)"
    mkdir -p "$RS_STATE_DIR"
    log "installing chromium with apt-get (plotly thumbnails)"
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
    } >"$RS_STATE_DIR/chromium-apt.log" 2>&1 || {
        show_log_tail "$RS_STATE_DIR/chromium-apt.log"
        die "apt-get install chromium failed"
    }
    log "installed $(find_browser)"
    ;;
status)
    find_browser || die "no chromium/chrome found (deploy/local/chromium.sh install)"
    ;;
*)
    echo "usage: $0 install|status" >&2
    exit 2
    ;;
esac
