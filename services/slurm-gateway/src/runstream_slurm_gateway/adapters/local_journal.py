"""The local backend's journal: what was submitted, started and finished, on disk.

Slurm remembers jobs across a gateway restart; subprocesses do not. The journal
(one JSON object per line, fsynced) lets a restarted gateway find every job the
previous process accepted and did not see finish, so no job request that was
already committed to Kafka is lost:

- a job still held (never started) is held again;
- a job whose process is still running (local jobs run in their own session,
  so they outlive a killed gateway) is adopted and watched until it exits;
- a job whose process is gone is finished from its exit file if it wrote one,
  and otherwise run again (results are idempotent: the store de-duplicates them).

Each job's command runs under ``/bin/sh`` which writes the exit status to
``<journal dir>/<job id>.exit`` when the command ends.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..jobspec import JobSpec

# sh -c SCRIPT sh EXITFILE ARGV...: run ARGV, record its status, exit with it.
EXIT_WRAPPER = 'f="$1"; shift; "$@"; s=$?; echo "$s" > "$f.tmp" && mv "$f.tmp" "$f"; exit "$s"'


@dataclass
class JournalEntry:
    job_id: int
    spec: JobSpec
    held: bool
    pid: int | None = None
    ended: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.dir = path.parent

    def exit_file(self, job_id: int) -> Path:
        return self.dir / f"{self.path.stem}.{job_id}.exit"

    def wrap(self, job_id: int, argv: tuple[str, ...]) -> tuple[str, ...]:
        return ("/bin/sh", "-c", EXIT_WRAPPER, "sh", str(self.exit_file(job_id)), *argv)

    def _append(self, record: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def submitted(self, job_id: int, spec: JobSpec, held: bool) -> None:
        self._append({"op": "submit", "job_id": job_id, "held": held, "spec": asdict(spec)})

    def started(self, job_id: int, pid: int) -> None:
        self._append({"op": "start", "job_id": job_id, "pid": pid})

    def ended(self, job_id: int) -> None:
        self._append({"op": "end", "job_id": job_id})
        self.exit_file(job_id).unlink(missing_ok=True)

    def read_exit(self, job_id: int) -> int | None:
        try:
            return int(self.exit_file(job_id).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def unfinished(self) -> tuple[list[JournalEntry], int]:
        """Jobs submitted and not ended, and the highest job id ever used."""
        entries: dict[int, JournalEntry] = {}
        highest = 0
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return [], 0
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-write
            job_id = int(record["job_id"])
            highest = max(highest, job_id)
            if record["op"] == "submit":
                spec = record["spec"]
                spec["argv"] = tuple(spec["argv"])
                entries[job_id] = JournalEntry(job_id, JobSpec(**spec), bool(record["held"]))
            elif record["op"] == "start" and job_id in entries:
                entries[job_id].pid = int(record["pid"])
                entries[job_id].held = False
            elif record["op"] == "end" and job_id in entries:
                entries[job_id].ended = True
        return [e for e in entries.values() if not e.ended], highest

    def compact(self, keep: list[JournalEntry]) -> None:
        """Rewrite the journal with only the given (unfinished) jobs."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for entry in keep:
                fh.write(
                    json.dumps(
                        {
                            "op": "submit",
                            "job_id": entry.job_id,
                            "held": entry.held,
                            "spec": asdict(entry.spec),
                        }
                    )
                    + "\n"
                )
                if entry.pid is not None:
                    fh.write(
                        json.dumps({"op": "start", "job_id": entry.job_id, "pid": entry.pid}) + "\n"
                    )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False
