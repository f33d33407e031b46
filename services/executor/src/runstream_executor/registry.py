"""Run messages are judged against the proposal registry before anything runs.

A run message names the folder whose ``context.py`` is executed and the folder
whose ``raw/`` and ``proc/`` are read. Both must be what the proposal's
registration says: the context folder exactly, the proposal folder at or under
the registered data root (or, for a registration without one, the executor's
``data_root``). Otherwise the message is refused (dead-lettered with the reason)
and no context file is read, no worker is asked, nothing is published. An
accepted message goes on with the registered context folder.
"""

from __future__ import annotations

import asyncio
import os

from runstream_common.errors import PathRefused, PermanentError, UnknownProposal
from runstream_common.messages import RunRequested
from runstream_common.registry import (
    Registration,
    Registry,
    checked_path,
    refuse_unless,
    same_folder,
    within,
)


def data_root_of(registration: Registration, default: str | None) -> str | None:
    """Where the proposal's folder must be: its registration's data root, else the default."""
    return registration.data_root or default


def judge_run(
    req: RunRequested, registration: Registration | None, default_root: str | None
) -> PermanentError | None:
    """What is wrong with ``req`` given the proposal's registration (blocking: resolves links)."""
    where = f"run message for proposal {req.proposal} run {req.run}"
    if registration is None:
        return UnknownProposal(
            f"{where}: proposal {req.proposal} is not registered (runstream proposal add); "
            "nothing was run"
        )
    context_dir = checked_path(req.context_dir, "context_dir")
    proposal_dir = checked_path(req.proposal_dir, "proposal_dir")
    problem = refuse_unless(
        same_folder(context_dir, registration.context_dir),
        f"{where}: context_dir {context_dir} is not the registered context folder "
        f"{registration.context_dir}; nothing was run",
    )
    if problem is not None:
        return problem
    root = data_root_of(registration, default_root)
    if root is None:
        return PathRefused(
            f"{where}: proposal {req.proposal} is registered without a data root and the "
            "executor has none (RUNSTREAM_EXECUTOR_DATA_ROOT or XFEL_DATA_ROOT); "
            f"cannot check proposal_dir {proposal_dir}; nothing was run",
        )
    return refuse_unless(
        within(proposal_dir, root),
        f"{where}: proposal_dir {proposal_dir} is not under the data root {root} "
        f"of proposal {req.proposal}; nothing was run",
    )


class RunGuard:
    """Refuses run messages whose folders are not the registered ones."""

    def __init__(self, registry: Registry, data_root: str | None) -> None:
        self.registry = registry
        self.default_root = data_root or os.environ.get("XFEL_DATA_ROOT") or None

    async def checked(self, req: RunRequested) -> RunRequested:
        """``req`` with the registered context folder; raises the reason it is refused.

        The registered spelling is used from here on, so a link in the message's path
        changed after the check cannot lead to another ``context.py``.
        """

        async def verdict(registration: Registration | None) -> PermanentError | None:
            return await asyncio.to_thread(judge_run, req, registration, self.default_root)

        registration = await self.registry.judge(req.proposal, verdict)
        if req.context_dir == registration.context_dir:
            return req
        return req.model_copy(update={"context_dir": registration.context_dir})
