"""Run the four services as real subprocesses for end-to-end tests.

Each test system gets its own topic prefix, database, facility topics and
folders, so tests never see each other's data. Services are started with
``python -m runstream.cli serve <name>`` (the same entry point as production),
their output goes to a log file per service, and they can be SIGKILLed and
restarted individually.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("store", "executor", "ingest", "slurm-gateway")
STARTED = "started successfully"


@dataclass
class ServiceProcess:
    name: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class System:
    """The services of one test, with their environment."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, ServiceProcess] = field(default_factory=dict)

    def _spawn(
        self, name: str, instance: str | None = None, argv: list[str] | None = None
    ) -> ServiceProcess:
        key = instance or name
        proc = self.procs.get(key) or ServiceProcess(name, self.log_dir / f"{key}.log")
        self.procs[key] = proc
        proc.starts += 1
        handle = proc.log.open("ab")
        handle.write(f"\n===== start #{proc.starts} at {time.time():.3f} =====\n".encode())
        handle.flush()
        proc.process = subprocess.Popen(
            argv or [sys.executable, "-m", "runstream.cli", "serve", name],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # its workers share the group, so kill() takes them too
        )
        handle.close()
        return proc

    def spawn_store_with_fault(self, point: str) -> ServiceProcess:
        """The store with a test's fault injection: it exits with status 137 at ``point``
        (see tests/support/store_with_hooks.py); in its log like any start of the store."""
        script = Path(__file__).with_name("store_with_hooks.py")
        return self._spawn("store", argv=[sys.executable, str(script), point])

    async def _wait_started(self, proc: ServiceProcess, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        marker = f"===== start #{proc.starts} "
        while True:
            text = proc.log.read_text(errors="replace")
            if STARTED in text[text.rfind(marker) :]:
                return
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited during start-up:\n{text[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name} did not start within {timeout} s:\n{text[-4000:]}")
            await asyncio.sleep(0.2)

    async def start(self, *names: str, instance: str | None = None) -> None:
        procs = [self._spawn(name, instance) for name in (names or SERVICES)]
        await asyncio.gather(*(self._wait_started(p) for p in procs))

    def kill(self, key: str) -> None:
        """SIGKILL a service and its workers (its whole process group)."""
        proc = self.procs[key]
        assert proc.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.process.pid, signal.SIGKILL)
        proc.process.wait(timeout=30)

    async def restart(self, key: str) -> None:
        proc = self.procs[key]
        if proc.alive:
            self.kill(key)
        self._spawn(proc.name, key)
        await self._wait_started(proc)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.alive and proc.process is not None:
                try:
                    os.killpg(proc.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for key, proc in self.procs.items():
            if proc.process is None:
                continue
            try:
                proc.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill(key)

    def logs(self, chars: int = 4000) -> str:
        """The end of each service's log, without the Kafka client's routine INFO lines."""
        return "\n".join(
            f"----- {key} -----\n{_quiet(p.log.read_text(errors='replace'))[-chars:]}"
            for key, p in self.procs.items()
        )


def _quiet(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if " INFO aiokafka." not in line)
