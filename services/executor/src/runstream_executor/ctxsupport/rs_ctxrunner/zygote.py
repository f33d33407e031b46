"""A warm parent of workers: ``python -m rs_ctxrunner.zygote --socket PATH [--preload ...]``.

It imports the scientific stack once and then forks workers on request, so a
new or replacement worker is ready in milliseconds instead of re-importing
everything. Control frames (see ``protocol``) on stdin/stdout:

- in ``{"op": "fork", "token": N}`` -> the child connects to the service's Unix
  socket ``PATH``, says ``ready`` with the token and serves requests there;
  out ``{"op": "forked", "token": N, "pid": P}``;
- out ``{"op": "exited", "pid": P, "code": C}`` when a worker ends (C < 0: the
  signal number, as ``subprocess`` reports it);
- in ``{"op": "rest"}`` -> the pool is full: become ``rs_ctxrunner.reaper`` (same pid,
  a bare interpreter), which stays the parent of the workers forked so far and reports
  their exits, without the preloaded stack's memory; a new zygote forks the next ones;
- in ``{"op": "preload", "modules": [...]}`` -> import them now, so that workers
  forked from here on share them (the service asks when contexts turn out to use
  them).

The zygote stays single-threaded so forking is safe. If the service goes away
(stdin closes) the zygote exits, and its workers die with it (PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import sys
from typing import Any

from . import protocol
from .worker import (
    DEFAULT_PRELOAD,
    _die_with_parent,
    confine,
    preload_modules,
    serve,
    setup_process,
)


def _reap(control_out: Any) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        protocol.write_frame(
            control_out, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)}
        )


def _child(
    control_in: Any, control_out: Any, socket_path: str, token: int, limits_json: str
) -> None:
    """In the forked worker: connect to the service and serve; never returns."""
    code = 0
    try:
        with contextlib.suppress(Exception):
            control_in.close()
            control_out.close()
        _die_with_parent()
        confine(limits_json)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(socket_path)
        rfile = sock.makefile("rb", buffering=1 << 16)
        wfile = sock.makefile("wb", buffering=1 << 16)
        serve(rfile, wfile, token=token)
    except BaseException:
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _rest(control_in: Any, control_out: Any) -> None:
    """Become the workers' light parent (``rs_ctxrunner.reaper``, same pid); never returns."""
    _reap(control_out)
    sys.stdout.flush()
    sys.stderr.flush()
    control_out.flush()
    os.dup2(control_in.fileno(), 0)
    os.dup2(control_out.fileno(), 1)
    os.execv(sys.executable, [sys.executable, "-S", "-m", "rs_ctxrunner.reaper"])


def main() -> None:
    parser = argparse.ArgumentParser(prog="rs_ctxrunner.zygote")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD))
    parser.add_argument("--address-space-mb", type=int, default=0)
    parser.add_argument("--limits", default="{}", help="JSON for the workers, see worker.confine")
    args = parser.parse_args()
    control_in, control_out = setup_process(args.preload, args.address_space_mb, buffered=False)
    protocol.write_frame(
        control_out, {"op": "ready", "pid": os.getpid(), "python": sys.version, "zygote": True}
    )
    while True:
        readable, _, _ = select.select([control_in], [], [], 0.05)
        _reap(control_out)
        if not readable:
            continue
        try:
            msg = protocol.read_frame(control_in)
        except EOFError:
            return
        if msg.get("op") == "exit":
            return
        if msg.get("op") == "rest":
            _rest(control_in, control_out)
        if msg.get("op") == "preload":
            preload_modules(list(msg.get("modules") or ()))
        if msg.get("op") == "fork":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(control_in, control_out, args.socket, msg["token"], args.limits)
            protocol.write_frame(control_out, {"op": "forked", "token": msg["token"], "pid": pid})


if __name__ == "__main__":
    main()
