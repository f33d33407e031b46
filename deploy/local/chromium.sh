#!/usr/bin/env bash
# Debian's chromium: the browser kaleido drives to render plotly thumbnails (PNG), and
# the browser of the web tests (Playwright launches it by its path; its own browser
# download is not used: PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1).
#
#   chromium.sh install   apt-get install chromium if no chromium/chrome is found (idempotent)
#   chromium.sh status    print the browser found, exit 1 if none
#   chromium.sh path      the same (the name the web tests use)
#
# BROWSER_PATH (read by kaleido's choreographer) or RUNSTREAM_CHROMIUM point at another
# Chrome/Chromium.
set -euo pipefail
RS_TAG=chromium
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

find_browser() {
    local candidate name
    for candidate in "${RUNSTREAM_CHROMIUM:-}" "${BROWSER_PATH:-}"; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

do_install() {
    local browser
    if browser="$(find_browser)"; then
        log "found $browser"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install chromium and set RUNSTREAM_CHROMIUM to its path"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    mkdir -p "$RS_STATE_DIR"
    log "installing Debian's chromium with apt-get (plotly thumbnails, web tests)"
    {
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends chromium fonts-dejavu-core
    } >"$RS_STATE_DIR/chromium-apt.log" 2>&1 || {
        show_log_tail "$RS_STATE_DIR/chromium-apt.log"
        die "apt-get install chromium failed"
    }
    log "installed $(find_browser)"
}

case "${1:-}" in
install) do_install ;;
status | path)
    find_browser || die "no chromium/chrome found: run $0 install"
    ;;
*)
    echo "usage: $0 install|status|path" >&2
    exit 2
    ;;
esac
