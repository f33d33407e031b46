"""Results messages are judged against the proposal registry before any file is touched.

A ``results_ready`` message names the proposal's context folder (where the run
file is written) and a fragment (read, then deleted). The context folder must be
the registered one; the fragment must be inside the registered folder's
``extracted_data`` (symbolic links resolved, no ``..``). Otherwise the message is
refused (dead-lettered with the reason) and nothing is read, written or deleted.
An accepted message continues with the registered folder and the fragment's
resolved path, so a link changed after the check cannot lead the store elsewhere.
"""

from __future__ import annotations

import asyncio
import os

from runstream_common.errors import PermanentError, UnknownProposal
from runstream_common.messages import ResultsReady
from runstream_common.registry import (
    Registration,
    Registry,
    checked_path,
    real,
    refuse_unless,
    same_folder,
    within,
)

EXTRACTED = "extracted_data"


def judge_results(
    message: ResultsReady, registration: Registration | None
) -> PermanentError | None:
    """What is wrong with ``message`` given the proposal's registration (blocking)."""
    where = f"results {message.result_id} of proposal {message.proposal} run {message.run}"
    if registration is None:
        return UnknownProposal(
            f"{where}: proposal {message.proposal} is not registered; nothing was written"
        )
    context_dir = checked_path(message.context_dir, "context_dir")
    problem = refuse_unless(
        same_folder(context_dir, registration.context_dir),
        f"{where}: context_dir {context_dir} is not the registered context folder "
        f"{registration.context_dir}; nothing was written or deleted",
    )
    if problem is not None or message.fragment is None:
        return problem
    fragment = checked_path(message.fragment, "fragment")
    allowed = os.path.join(registration.context_dir, EXTRACTED)
    return refuse_unless(
        within(fragment, allowed) and real(fragment) != real(allowed),
        f"{where}: fragment {fragment} is not inside {allowed} (symbolic links resolved); "
        "nothing was read, written or deleted",
    )


def trusted(message: ResultsReady, registration: Registration) -> ResultsReady:
    """The message with the registered folder and the fragment's resolved path (blocking)."""
    fragment = real(message.fragment) if message.fragment is not None else None
    return message.model_copy(
        update={"context_dir": registration.context_dir, "fragment": fragment}
    )


class ResultsGuard:
    """Refuses results messages whose paths are not the registered proposal's."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def checked(self, message: ResultsReady) -> ResultsReady:
        """``message`` with trusted paths; raises the reason it is refused."""

        async def verdict(registration: Registration | None) -> PermanentError | None:
            return await asyncio.to_thread(judge_results, message, registration)

        registration = await self.registry.judge(message.proposal, verdict)
        return await asyncio.to_thread(trusted, message, registration)
