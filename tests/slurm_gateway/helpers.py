"""Shared helpers of the slurm-gateway tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from runstream_common.messages import JobRequested, JobState, JobStateChanged, Selection, Trigger

TERMINAL = {
    JobState.COMPLETED,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.TIMEOUT,
    JobState.VANISHED,
    JobState.SUBMIT_FAILED,
}


def job_request(proposal: int, run: int, context_dir: str, **kw: object) -> JobRequested:
    base: dict[str, object] = dict(
        job_request_id=f"jr-{uuid.uuid4().hex[:12]}",
        request_id=f"rq-{uuid.uuid4().hex[:8]}",
        processing_id=f"pr-{uuid.uuid4().hex[:8]}",
        proposal=proposal,
        run=run,
        trigger=Trigger.ALL,
        selection=Selection(names=("heavy",)),
        context_dir=context_dir,
        proposal_dir=context_dir,
    )
    base.update(kw)
    return JobRequested(**base)


def bash_prefix(script: str) -> list[str]:
    """A command prefix whose job is ``script``; the gateway's arguments become $1..."""
    return ["/bin/bash", "-c", script, "job"]


async def wait_for(
    predicate: Callable[[], bool], *, timeout: float = 60.0, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def final_states(events: list[JobStateChanged]) -> dict[str, JobStateChanged]:
    out: dict[str, JobStateChanged] = {}
    for e in events:
        if e.state in TERMINAL:
            out[e.job_request_id] = e
    return out


def never_more_than(events: list[JobStateChanged], cap: int, proposal: int) -> int:
    """Replay the events; the largest number of jobs of ``proposal`` running at once."""
    running: set[str] = set()
    peak = 0
    for e in events:
        if e.proposal != proposal:
            continue
        if e.state is JobState.RUNNING:
            running.add(e.job_request_id)
        elif e.state in TERMINAL:
            running.discard(e.job_request_id)
        peak = max(peak, len(running))
    return peak


TRACE_SCRIPT = (
    'echo "start $4" >> "$PWD/trace.txt"; sleep {sleep}; echo "end $4" >> "$PWD/trace.txt"'
)
"""A job that records, in the context dir, when it ran ($4 is the run number)."""


def replay_trace(text: str) -> tuple[int, list[int]]:
    """From a trace file: the most jobs running at once, and the runs in start order."""
    running: set[int] = set()
    peak = 0
    order: list[int] = []
    for line in text.splitlines():
        what, run = line.split()
        if what == "start":
            running.add(int(run))
            order.append(int(run))
        else:
            running.discard(int(run))
        peak = max(peak, len(running))
    return peak, order
