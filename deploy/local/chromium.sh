#!/usr/bin/env bash
# Debian's chromium for the browser tests (Playwright drives it by its path).
#
#   chromium.sh install   install the package if it is missing (idempotent)
#   chromium.sh path      print the browser's path (exit 1 if it is missing)
#
# Playwright's own browser download is not used (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1):
# the tests launch the system package through its executable path.
set -euo pipefail

RS_TAG=chromium
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BROWSER="${RUNSTREAM_CHROMIUM:-/usr/bin/chromium}"

do_install() {
    if [[ -x "$BROWSER" ]]; then
        log "chromium present: $BROWSER"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install chromium and set RUNSTREAM_CHROMIUM to its path"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    log "installing Debian's chromium (apt-get)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null
    [[ -x "$BROWSER" ]] || die "apt-get installed chromium but $BROWSER is not there"
    log "chromium installed: $("$BROWSER" --version 2>/dev/null | head -1)"
}

case "${1:-}" in
install) do_install ;;
path)
    [[ -x "$BROWSER" ]] || die "$BROWSER is missing: run $0 install"
    echo "$BROWSER"
    ;;
*)
    echo "usage: $0 {install|path}" >&2
    exit 2
    ;;
esac
