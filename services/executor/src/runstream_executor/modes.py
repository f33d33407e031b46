"""The two kinds of pass over a run, as values :meth:`RunProcessor.process` asks.

A **service pass** handles a run message: the selected variables that do not need the
cluster, a cluster job requested for the others, a deadline, and raw values kept for the
run's later passes. A **job pass** runs inside a Slurm job: exactly the cluster variables
it was given, reusing what the service pass kept, no deadline (Slurm's time limit is it).
The pass's steps are the same for both; only these answers differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from runstream_common.messages import RunRequested

from . import reuse
from .context import LoadedContext
from .engine import select


class PassMode(Protocol):
    """What differs between a service pass and a job pass."""

    @property
    def slurm_job_id(self) -> int | None:
        """The Slurm job this pass runs in (carried by its processing states)."""
        ...

    def deadline(self, pass_timeout_s: float) -> float | None:
        """``time.monotonic()`` by which every variable must end; None: no deadline."""
        ...

    def selection(self, ctx: LoadedContext, req: RunRequested) -> tuple[list[str], set[str]]:
        """The variables to evaluate (dependencies included) and those asked for."""
        ...

    def cluster_variables(self, ctx: LoadedContext, req: RunRequested) -> list[str]:
        """Variables to hand to a Slurm job (empty: no job to request)."""
        ...

    def reusable(self, ctx: LoadedContext, names: list[str], req: RunRequested) -> set[str]:
        """Variables whose values an earlier pass of the run may have kept."""
        ...

    def worth_keeping(self, ctx: LoadedContext) -> set[str]:
        """Variables whose values later passes of the run will want."""
        ...

    def result_id_extra(self, req: RunRequested) -> str:
        """What tells this pass's results apart from another pass's of the same request."""
        ...


@dataclass(frozen=True)
class ServicePass:
    """A run message handled by the executor service."""

    slurm_job_id: None = None

    def deadline(self, pass_timeout_s: float) -> float | None:
        return time.monotonic() + pass_timeout_s

    def selection(self, ctx: LoadedContext, req: RunRequested) -> tuple[list[str], set[str]]:
        sel = req.selection
        names = select(ctx, req.trigger.value, sel.names, sel.match, cluster=False)
        return names, set(names)

    def cluster_variables(self, ctx: LoadedContext, req: RunRequested) -> list[str]:
        sel = req.selection
        chosen = select(ctx, req.trigger.value, sel.names, sel.match, cluster=True)
        return [n for n in chosen if ctx.variables[n].cluster]

    def reusable(self, ctx: LoadedContext, names: list[str], req: RunRequested) -> set[str]:
        # A proc pass finds the raw values of the run's raw pass.
        if req.trigger.value != "proc":
            return set()
        return {n for n in names if ctx.variables[n].data == "raw"}

    def worth_keeping(self, ctx: LoadedContext) -> set[str]:
        return reuse.worth_keeping(ctx)

    def result_id_extra(self, req: RunRequested) -> str:
        return f"{req.trigger.value}|"


@dataclass(frozen=True)
class JobPass:
    """Inside a Slurm job: evaluate exactly ``names`` (cluster variables)."""

    job_request_id: str
    names: tuple[str, ...]
    slurm_job_id: int | None = None

    def deadline(self, pass_timeout_s: float) -> float | None:
        return None  # the job's own time limit ends it

    def selection(self, ctx: LoadedContext, req: RunRequested) -> tuple[list[str], set[str]]:
        names = select(ctx, req.trigger.value, self.names, cluster=None)
        return names, {n for n in self.names if n in ctx.variables}

    def cluster_variables(self, ctx: LoadedContext, req: RunRequested) -> list[str]:
        return []  # already in the job

    def reusable(self, ctx: LoadedContext, names: list[str], req: RunRequested) -> set[str]:
        # The service pass computed (and kept) the non-cluster dependencies.
        return {n for n in names if not ctx.variables[n].cluster}

    def worth_keeping(self, ctx: LoadedContext) -> set[str]:
        return set()  # no pass comes after a job's

    def result_id_extra(self, req: RunRequested) -> str:
        return f"{req.trigger.value}|{self.job_request_id}"


SERVICE_PASS = ServicePass()
