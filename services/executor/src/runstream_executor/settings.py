"""Executor settings (environment prefix ``RUNSTREAM_EXECUTOR_``, nested with ``__``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import Field
from runstream_common.settings import ServiceSettings, service_config

from .memory import default_budget_mb
from .pool import DEFAULT_PRELOAD, DEFAULT_SHARE, PoolConfig


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """One warm worker per CPU (at least 2, so one variable cannot block a run; at most 16)."""
    return min(16, max(2, _cpus()))


def default_runs_in_flight() -> int:
    """Twice the CPUs: while one run waits on files, the store or Kafka, another computes."""
    return min(32, max(2, 2 * _cpus()))


class Settings(ServiceSettings):
    model_config = service_config("RUNSTREAM_EXECUTOR_")

    group_id: str | None = Field(
        default=None,
        description="Consumer group of the runs topic; default runstream-executor "
        "(<topic prefix>-executor under another topic prefix, so installations and "
        "tests sharing a cluster do not rebalance each other)",
    )
    registry_wait_s: float = Field(
        default=10.0,
        ge=0,
        description="A run message whose proposal is not registered (after reading the "
        "registry to its end) waits this long for its registration (it may be a moment "
        "late) before it is refused and dead-lettered",
    )
    workers: int = Field(
        default_factory=default_workers,
        ge=1,
        description="Warm worker processes per interpreter (default: one per CPU, 2 to 16)",
    )
    runs_in_flight: int = Field(
        default_factory=default_runs_in_flight,
        ge=1,
        description="Run messages processed at once (default: twice the CPUs, 2 to 32); "
        "offsets are committed per partition only up to the oldest unfinished one",
    )
    progress_after_s: float = Field(
        default=1.0,
        ge=0,
        description="A pass's progress (queued, running, then variable_done/failed per "
        "variable) is published once the pass is this old, then at most once per this "
        "interval (the newest state); a shorter pass publishes only finished or failed "
        "(results_ready has every duration and error). 0: every state",
    )
    idle_worker_s: float = Field(
        default=300.0,
        ge=0,
        description="Workers idle this long are retired (down to one per interpreter) and "
        "forked again when runs come; 0: never",
    )
    drain_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="On shutdown, how long runs in flight may take to finish (the rest come "
        "again after the restart)",
    )
    fork_workers: bool = Field(
        default=True,
        description="Fork workers from a preloaded zygote (ms to replace) instead of "
        "starting an interpreter for each",
    )
    rest_zygote: bool = Field(
        default=True,
        description="Once every worker is up, the zygote becomes a ~10 MiB parent of its "
        "workers instead of keeping the preloaded stack resident; a new zygote is started "
        "(~0.3-0.5 s) when a worker must be forked again",
    )
    parallel_variables: int = Field(
        default=2, ge=1, description="Independent variables of one run evaluated at once"
    )
    variable_timeout_s: float = Field(default=1800.0, gt=0, description="Time limit per variable")
    partial_fragment_max_age_s: float = Field(
        default=86400.0,
        gt=0,
        description="A partial fragment (*.h5.writing) of a run older than this is left by an "
        "attempt that died and is deleted by the run's next pass; longer than any pass or "
        "cluster job can write one",
    )
    pass_timeout_s: float = Field(
        default=7200.0,
        gt=0,
        description="Time limit of a whole pass (all variables of one run message); the "
        "consumer's max poll interval is set just above it, so a run is always finished "
        "before its partition could be handed to another executor. Variables still "
        "running then are recorded as TimeLimitExceeded",
    )
    variable_memory_mb: int = Field(
        default=8192, ge=64, description="Resident memory limit per worker (incl. its children)"
    )
    recycle_rss_mb: int | None = Field(
        default=None,
        ge=0,
        description="Replace a worker whose memory grew above this after a variable "
        "(leaks); default 75 % of variable_memory_mb, 0 never",
    )
    memory_budget_mb: int | None = Field(
        default=None,
        ge=0,
        description="Memory of the whole executor (service, zygotes, workers; PSS): above it "
        "the busy worker holding the most is stopped and its variable fails with "
        "MemoryLimitExceeded. Default 80 % of RAM or of the cgroup limit; 0: none",
    )
    admission_memory_mb: int | None = Field(
        default=None,
        ge=0,
        description="Admission by memory: a variable whose worker grew by 64 MiB or more "
        "the last time it ran starts only while it and the other such variables running "
        "(of every run in flight), counted at what they used last time, fit in this many "
        "MiB; one always runs. Large reads of different runs then follow each other "
        "instead of adding up. Default: the memory budget (they wait instead of being "
        "stopped by it); 0: off",
    )
    address_space_mb: int = Field(
        default=0, ge=0, description="RLIMIT_AS for workers in MiB (0: not set)"
    )
    max_result_mb: int = Field(
        default=1024,
        ge=0,
        description="Largest result of one variable (arrays by their size, containers summed), "
        "checked in the worker before anything copies it; bigger is an error value "
        "(ResultTooLarge). 0: no limit",
    )
    max_output_mb: float = Field(
        default=10.0,
        ge=0,
        description="What the variables of one pass may print (per worker) into the process "
        "log; the rest is dropped after a truncation marker. 0: no limit",
    )
    worker_file_size_mb: int = Field(
        default=65536,
        ge=0,
        description="RLIMIT_FSIZE of workers: no file they write (fragments included) may "
        "grow past it; a write beyond fails with EFBIG. 0: not set",
    )
    worker_nproc: int = Field(
        default=0,
        ge=0,
        description="RLIMIT_NPROC of workers. Linux counts every process and thread of the "
        "user ID, the service's own included: set it well above what the account runs "
        "(a fork-bomb stop, not a quota). 0: not set",
    )
    worker_env: str = Field(
        default="",
        description="Comma-separated names (or PREFIX*) of more environment variables that "
        "workers see; by default they get only PATH, HOME, locale, TZ and data-library "
        "variables, never RUNSTREAM_* (name one exactly to pass it)",
    )
    protect_service: bool = Field(
        default=True,
        description="Make the executor process non-dumpable (PR_SET_DUMPABLE=0) so that "
        "workers, which run as the same user, cannot read its environment or memory "
        "through /proc or ptrace (it then writes no core dumps)",
    )
    context_load_timeout_s: float = Field(default=120.0, gt=0)
    job_publish_window_s: float = Field(
        default=900.0,
        gt=0,
        description="A cluster job keeps retrying to publish its results this long while Kafka is away",
    )
    worker_start_timeout_s: float = Field(default=180.0, gt=0)
    preload: str = Field(
        default=DEFAULT_PRELOAD,
        description="Modules the zygote imports at start, shared by every worker it forks",
    )
    share: str = Field(
        default=DEFAULT_SHARE,
        description="Modules the zygote imports as soon as a context turns out to use them "
        "(workers that imported them alone are forked again, to share them)",
    )
    python: str = Field(default=sys.executable, description="Default interpreter of workers")
    metadata_provider: str | None = Field(
        default=None,
        description="'module:function' answering mymdc# look-ups (proposal, run, field)",
    )
    data_root: str | None = Field(
        default=None,
        description="Where proposal folders live (the CLI finds --proposal-dir from it)",
    )
    proposal_dir_pattern: str = Field(
        default="*/*/p{proposal:06d}",
        description="Glob of a proposal folder under data_root (DAMNIT: instrument/cycle/pNNNNNN)",
    )
    raw_subdir: str = "raw"
    proc_subdir: str = "proc"
    run_dir_format: str = Field(default="r{run:04d}", description="Run folder name under raw/proc")
    fragment_subdir: str = Field(
        default="extracted_data/fragments", description="Under the context dir"
    )
    process_logs_subdir: str = Field(
        default="process_logs",
        description="Under the context dir: r{run}-p{proposal}.out gets what variables print "
        "(empty: the service's stderr)",
    )
    reuse_subdir: str = Field(
        default="extracted_data/.runstream-reuse",
        description="Under the context dir: raw results kept for proc and cluster passes",
    )
    reuse_max_value_mb: int = Field(
        default=256, ge=0, description="Largest single value kept for reuse (0 disables reuse)"
    )
    fragment_scalars: bool = Field(
        default=False,
        description="Also put plain scalars and short strings in the fragment (else they "
        "travel inline only, and passes with only such results write no fragment)",
    )
    max_inline_chars: int = Field(default=16384, ge=64, description="Longest inline string summary")
    max_results_bytes: int = Field(
        default=800_000, ge=10_000, description="Error texts are shortened to keep messages below"
    )
    max_foreign_interpreters: int = Field(
        default=4, ge=1, description="context_python pools kept warm at once"
    )

    @property
    def effective_memory_budget_mb(self) -> int:
        return default_budget_mb() if self.memory_budget_mb is None else self.memory_budget_mb

    @property
    def effective_admission_memory_mb(self) -> int:
        if self.admission_memory_mb is None:
            return self.effective_memory_budget_mb
        return self.admission_memory_mb

    @property
    def consumer_group(self) -> str:
        if self.group_id:
            return self.group_id
        prefix = self.kafka.topic_prefix
        return "runstream-executor" if prefix == "runstream" else f"{prefix}-executor"

    def pool_config(self, python: str | None = None) -> PoolConfig:
        return PoolConfig(
            size=max(self.workers, 1),
            python=python or self.python,
            time_limit_s=self.variable_timeout_s,
            memory_limit_mb=self.variable_memory_mb,
            address_space_mb=self.address_space_mb,
            recycle_rss_mb=self.recycle_rss_mb,
            fork=self.fork_workers,
            rest_zygote=self.rest_zygote,
            preload=self.preload,
            share=self.share,
            start_timeout_s=self.worker_start_timeout_s,
            memory_budget_mb=self.effective_memory_budget_mb,
            idle_s=self.idle_worker_s,
            max_result_mb=self.max_result_mb,
            max_output_mb=self.max_output_mb,
            file_size_mb=self.worker_file_size_mb,
            nproc=self.worker_nproc,
            protect_service=self.protect_service,
            env_allow=tuple(n.strip() for n in self.worker_env.split(",") if n.strip()),
        )

    def find_proposal_dir(self, proposal: int) -> Path | None:
        """The proposal folder under ``data_root`` (None if not configured or not found)."""
        if not self.data_root:
            return None
        matches = sorted(
            Path(self.data_root).glob(self.proposal_dir_pattern.format(proposal=proposal))
        )
        return matches[0] if matches else None

    def process_log(self, context_dir: str, proposal: int, run: int) -> str | None:
        if not self.process_logs_subdir:
            return None
        return str(Path(context_dir) / self.process_logs_subdir / f"r{run}-p{proposal}.out")

    def run_dirs(self, proposal_dir: str, run: int) -> tuple[str, str]:
        name = self.run_dir_format.format(run=run)
        base = Path(proposal_dir)
        return str(base / self.raw_subdir / name), str(base / self.proc_subdir / name)
