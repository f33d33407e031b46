"""The runstream demo: mock runs in, a table of results out.

Expects the local stack and the four services to be running (``./task demo``
starts them). It makes a demo proposal of mock European XFEL runs with
EXtra-data's mock-data helpers, registers it with the example context file,
sends migration (raw) and calibration (proc) events on the facility topics the
way the facility does, waits until every expected value is stored, and prints
the run table, the HDF5 files and how long each stage took.

Exit status 0 only if every expected value is there. Running it again is fast:
the facility events are de-duplicated and the values are already stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.table import Table
from runstream_common import parsers
from runstream_common.messages import ProcessingStateSet, ValuesUpdated
from runstream_common.settings import KafkaSettings

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STATE = Path(os.environ.get("RUNSTREAM_STATE_DIR", REPO / ".state"))
DEMO = STATE / "demo"
PROPOSAL = 9999
RUNS = range(1, 6)
RAW_TOPIC, RAW_EVENT = "test.r2d2", "migration_complete"
PROC_TOPIC, PROC_EVENT = "cal.offline-corrections", "run_corrections_complete"
RUNSTREAM = str(REPO / ".venv" / "bin" / "runstream")
TIMEOUT_S = float(os.environ.get("RUNSTREAM_DEMO_TIMEOUT", "300"))

# name -> what must be true of its stored value
EXPECTED: dict[str, str] = {
    "xgm_intensity": "number",
    "n_trains": "number",
    "energy_per_train": "number",
    "camera_image": "thumbnail",
    "label": "string",
    "broken": "error",
    "camera_peak": "number",
    "column_profile": "trendline",
    "sa1.pulse_energy": "number",
    "spb.pulse_energy": "number",
    "sa1.beam_x": "number",
    "transmission": "number",
    "energy_histogram": "thumbnail",
}

console = Console()


def make_data() -> Path:
    """raw/ and proc/ folders of mock runs with seeded, plausible values (mockdata.py).

    proc/ holds the same files (hard links): the demo's "calibration" changes nothing.
    """
    sys.path.insert(0, str(HERE))
    import mockdata

    proposal_dir = DEMO / "data" / f"p{PROPOSAL:06d}"
    template = mockdata.make_template(DEMO / "template.h5")
    old = time.time() - 600  # finished writing long ago (the settle time has passed)
    for run in RUNS:
        raw = proposal_dir / "raw" / f"r{run:04d}" / f"RAW-R{run:04d}-DA01-S00000.h5"
        proc = proposal_dir / "proc" / f"r{run:04d}" / f"CORR-R{run:04d}-DA01-S00000.h5"
        if not mockdata.is_current(raw):  # an older demo's files held zeros
            mockdata.make_run(template, raw, run, seed=PROPOSAL)
            os.utime(raw, (old, old))
            proc.unlink(missing_ok=True)
        if not proc.exists():
            proc.parent.mkdir(parents=True, exist_ok=True)
            os.link(raw, proc)
    return proposal_dir


def register(proposal_dir: Path) -> Path:
    context_dir = DEMO / "context"
    context_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "context.py", context_dir / "context.py")
    subprocess.run(
        [
            RUNSTREAM,
            "proposal",
            "add",
            str(PROPOSAL),
            "--context-dir",
            str(context_dir),
            "--data-root",
            str(proposal_dir),
        ],
        check=True,
    )
    return context_dir


def missing_values() -> list[str]:
    """Expected values not (yet) stored, read back through the store's Python API."""
    from runstream_store.api import Proposal

    missing: list[str] = []
    try:
        proposal = Proposal(PROPOSAL)
    except Exception:
        return ["(proposal not in the database yet)"]
    with proposal:
        known = set(proposal.runs())
        for run in RUNS:
            if run not in known:
                missing.extend(f"r{run}:{name}" for name in EXPECTED)
                continue
            row = proposal[run]
            for name, kind in EXPECTED.items():
                try:
                    ok = _satisfies(row[name], kind)
                except KeyError:
                    ok = False
                if not ok:
                    missing.append(f"r{run}:{name}")
    return missing


def _satisfies(var: Any, kind: str) -> bool:
    import numpy as np

    if kind == "error":
        return var.error is not None
    if var.error is not None:
        return False
    summary = var.summary()
    if kind == "number":
        return isinstance(summary, int | float | np.integer | np.floating) and not isinstance(
            summary, bool
        )
    if kind == "string":
        return isinstance(summary, str)
    if kind == "thumbnail":  # an RGBA image of at most 300 px a side
        return (
            isinstance(summary, np.ndarray) and summary.ndim == 3 and max(summary.shape[:2]) <= 300
        )
    if kind == "trendline":  # a (2, N) array of x and y
        return isinstance(summary, np.ndarray) and summary.ndim == 2 and summary.shape[0] == 2
    return False


async def send_events(kafka: KafkaSettings, topic: str, event: str) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", **kafka.security_kwargs()
    )
    await producer.start()
    try:
        sent = time.time()
        for run in RUNS:
            body = {
                "event": event,
                "proposal": PROPOSAL,
                "run": run,
                "instrument": "FXE",
                "cycle": "202601",
            }
            await producer.send_and_wait(
                topic, json.dumps(body).encode(), key=f"{PROPOSAL}/{run}".encode()
            )
        return sent
    finally:
        await producer.stop()


class Feed:
    """Follows the updates topic and notes when each stage was first seen per run."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.first: dict[tuple[int, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            self.kafka.topics.updates,
            bootstrap_servers=self.kafka.bootstrap_servers,
            auto_offset_reset="latest",
            **self.kafka.security_kwargs(),
        )
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for record in self.consumer:
            try:
                update = parsers.UPDATES.parse(record.value)
            except Exception:
                continue
            now = record.timestamp / 1000
            if isinstance(update, ProcessingStateSet) and update.state.proposal == PROPOSAL:
                key = (update.state.run, f"{update.state.trigger}:{update.state.status}")
                self.first.setdefault(key, now)
            elif isinstance(update, ValuesUpdated) and update.proposal == PROPOSAL:
                self.first.setdefault((update.run, "values"), now)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        await self.consumer.stop()


def web_url() -> str | None:
    """The URL the web service logged when it started (deploy/local/services.sh)."""
    log = STATE / "services" / "web.log"
    try:
        found = re.findall(r"runstream web serving (http://\S+)", log.read_text(errors="replace"))
    except OSError:
        return None
    return found[-1] if found else None


async def main() -> int:
    kafka = KafkaSettings()
    started = time.time()
    with console.status("making mock runs (EXtra-data mock FXE files, filled with seeded data)"):
        proposal_dir = make_data()
    context_dir = register(proposal_dir)
    console.print(
        f"proposal [bold]{PROPOSAL}[/]: data {proposal_dir}, context {context_dir / 'context.py'}"
    )

    feed = Feed(kafka)
    await feed.start()
    raw_sent = await send_events(kafka, RAW_TOPIC, RAW_EVENT)
    proc_sent = await send_events(kafka, PROC_TOPIC, PROC_EVENT)
    console.print(
        f"sent {len(RUNS)} x {RAW_EVENT} on {RAW_TOPIC} and {len(RUNS)} x {PROC_EVENT} on {PROC_TOPIC}"
    )

    deadline = time.monotonic() + TIMEOUT_S
    missing = ["(not checked)"]
    with console.status("waiting for every value to be stored") as status:
        while time.monotonic() < deadline:
            missing = await asyncio.to_thread(missing_values)
            if not missing:
                break
            status.update(f"waiting for {len(missing)} values, e.g. {', '.join(missing[:4])}")
            await asyncio.sleep(1.0)
    done = time.time()
    await feed.stop()

    # A wide table even when stdout is not a terminal (rich would fold it to 80 columns).
    env = {**os.environ, "COLUMNS": os.environ.get("COLUMNS", "200")}
    await asyncio.to_thread(
        subprocess.run, [RUNSTREAM, "table", str(PROPOSAL)], check=False, env=env
    )
    files = sorted((context_dir / "extracted_data").glob(f"p{PROPOSAL}_r*.h5"))
    console.print("HDF5 files:")
    for path in files:
        console.print(f"  {path} ({path.stat().st_size / 1024:.0f} KiB)")

    stages = Table(title="stages (seconds after the events were sent; from the updates feed)")
    for col in ("run", "raw running", "raw finished", "first values", "proc finished"):
        stages.add_column(col, justify="right")
    for run in RUNS:

        def at(stage: str, since: float, run: int = run) -> str:
            t = feed.first.get((run, stage))
            return f"{t - since:.2f}" if t else "-"

        stages.add_row(
            str(run),
            at("raw:running", raw_sent),
            at("raw:finished", raw_sent),
            at("values", raw_sent),
            at("proc:finished", proc_sent),
        )
    if any(key[0] in RUNS for key in feed.first):
        console.print(stages)
    else:
        console.print(
            "no processing this time: the facility events were already processed (de-duplicated)"
        )
    console.print(f"total {done - started:.1f} s")
    url = web_url()
    if url:
        console.print(f"the live run table in a browser: [bold]{url}#/p/{PROPOSAL}[/]")
    if missing:
        console.print(
            f"[red]FAILED[/]: {len(missing)} expected values missing: {', '.join(missing)}"
        )
        return 1
    console.print(f"[green]OK[/]: all {len(EXPECTED) * len(RUNS)} expected values are stored")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
