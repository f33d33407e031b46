"""The local stack's shell library, run by bash as the scripts run it."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

LIB = Path(__file__).resolve().parents[2] / "deploy" / "local" / "lib.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wait_port_free_waits_while_a_client_socket_holds_the_port() -> None:
    """A client socket that got a server's port as its own local port blocks the server's bind."""
    port = _free_port()
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.bind(("127.0.0.1", port))
    client.connect(server.getsockname())
    peer, _ = server.accept()

    def release() -> None:
        time.sleep(1.5)
        peer.close()  # the peer closes first: the TIME-WAIT stays on its side, not on `port`
        time.sleep(0.2)
        client.close()

    threading.Thread(target=release).start()
    t0 = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", f'source "{LIB}"; wait_port_free {port} 20'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    waited = time.monotonic() - t0
    server.close()
    assert done.returncode == 0, done.stderr
    assert waited >= 1.5
    assert f"port {port} is still used by a client socket" in done.stderr
    with socket.socket() as s:  # and now a server can have it
        s.bind(("127.0.0.1", port))


def test_wait_port_free_gives_up_after_its_timeout() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    done = subprocess.run(
        ["bash", "-c", f'source "{LIB}"; wait_port_free {port} 1'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    server.close()
    assert done.returncode == 1
