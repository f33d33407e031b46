"""What a zygote becomes once its pool is full: the light parent of the workers it forked.

A zygote holds the whole preloaded scientific stack (~60 MiB resident) only to fork
workers. When the service has all the workers it wants, it sends ``{"op": "rest"}``
and the zygote replaces itself (``execv``, same pid) with this module in a bare
interpreter (``python -S``, ~10 MiB): it stays the workers' parent, so they keep
dying with it (PDEATHSIG) and their exit codes still reach the service, on the same
control pipe (fd 0 in, fd 1 out) and in the same frames:

- out ``{"op": "exited", "pid": P, "code": C}`` when a worker ends;
- in ``{"op": "exit"}`` or end of input: leave (the workers die with it).

It leaves by itself once every worker it forked has ended. New workers come from a
new zygote, which the service starts when it needs one.
"""

from __future__ import annotations

import os
import select
from typing import Any

from . import protocol


def reap(control_out: Any) -> bool:
    """Report the workers that ended; False once none is left."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        protocol.write_frame(
            control_out, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)}
        )


def main() -> None:
    control_in = os.fdopen(os.dup(0), "rb", buffering=0)
    control_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # nothing else may write on the control pipe
    while reap(control_out):
        readable, _, _ = select.select([control_in], [], [], 0.05)
        if not readable:
            continue
        try:
            msg = protocol.read_frame(control_in)
        except EOFError:
            return
        if msg.get("op") == "exit":
            return


if __name__ == "__main__":
    main()
