"""Settings of the ingest service (env prefix ``RUNSTREAM_INGEST_``, ``__`` nests)."""

from __future__ import annotations

import os

from pydantic import Field, field_validator
from runstream_common.limits import DEFAULT_MAX_EVENT_BYTES
from runstream_common.messages import Trigger
from runstream_common.settings import ServiceSettings, service_config

from .layout import Layout

# DAMNIT's listener (maxwell offline + onc online) topics and event names.
DEFAULT_FACILITY_TOPICS: tuple[str, ...] = (
    "test.r2d2",
    "cal.offline-corrections",
    "test.euxfel.hed.daq",
    "test.euxfel.hed.cal",
)
DEFAULT_EVENT_TRIGGERS: dict[str, Trigger] = {
    "migration_complete": Trigger.RAW,
    "daq_run_complete": Trigger.RAW,
    "run_corrections_complete": Trigger.PROC,
    "online_correction_complete": Trigger.PROC,
}


class Settings(ServiceSettings):
    """Everything ingest can be told. Lists and dicts are given as JSON in the environment."""

    model_config = service_config("RUNSTREAM_INGEST_")

    facility_topics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FACILITY_TOPICS),
        description="Facility topics to consume (not prefixed; they are the facility's names)",
    )
    event_triggers: dict[str, Trigger] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_TRIGGERS),
        description="Facility event name -> which data it makes available (raw or proc)",
    )
    ignored_events: list[str] = Field(
        default_factory=list,
        description=(
            "Facility event names to skip quietly (counted). Any other event name not in "
            "event_triggers is dead-lettered with the reason, so a renamed event is seen at once"
        ),
    )
    max_event_bytes: int = Field(
        default=DEFAULT_MAX_EVENT_BYTES,
        ge=256,
        description="A facility event longer than this is dead-lettered unread",
    )
    group_id: str = Field(default="runstream-ingest", description="Consumer group of the loop")
    transactional_id: str = Field(
        default="runstream-ingest",
        description=(
            "Transactional id of the loop's producer. Keep it stable across restarts: a restart "
            "with the same id aborts the transaction a crashed process left open."
        ),
    )
    group_instance_id: str | None = Field(
        default=None,
        description="Static group membership: a restart rejoins without waiting for a rebalance",
    )
    batch_max_records: int = Field(default=500, ge=1, description="Records per transaction")
    poll_timeout_ms: int = Field(default=100, ge=1)
    inline_max_records: int = Field(
        default=32,
        ge=0,
        description=(
            "A batch this small that needs no file system (raw events of proposals whose folder "
            "is known, malformed/unknown/unregistered events) is decided on the event loop "
            "instead of a worker thread; 0: always a worker thread"
        ),
    )
    producer_retry_backoff_ms: int = Field(
        default=5, ge=1, description="Back-off of the transactional producer's retries"
    )
    concurrent_transactions_backoff_ms: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description=(
            "Wait before asking again when the broker answers CONCURRENT_TRANSACTIONS (it still "
            "writes the previous commit's markers); aiokafka's fixed 20 ms otherwise dominates "
            "the latency of back-to-back transactions"
        ),
    )
    offsets_interval_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Longest a replay-safe batch's consumer offsets wait for a transaction that carries "
            "them (every dead letter, wait or reprocess carries them at once). After a crash, "
            "the events of this window are read again and found to be duplicates"
        ),
    )
    transaction_timeout_ms: int = Field(
        default=15_000,
        ge=1000,
        description=(
            "Broker aborts a transaction left open this long (a crashed ingest that is not "
            "restarted would otherwise block read_committed readers of the runs topic longer)"
        ),
    )
    fetch_max_wait_ms: int = Field(
        default=500,
        ge=1,
        description="Longest a fetch waits at the broker when there are no new events (a "
        "fetch returns as soon as one arrives; shorter only means more idle requests)",
    )

    follower_batch_ms: int | None = Field(
        default=200,
        ge=1,
        description=(
            "The followers of the proposals, run-catalog and processing topics let the broker "
            "gather records this long per fetch instead of waking up for each (the catalog "
            "follower would otherwise read each of ingest's own transactions back at once). "
            "Unset: every record at once"
        ),
    )
    gil_switch_interval_s: float | None = Field(
        default=None,
        gt=0,
        description=(
            "If set, sys.setswitchinterval for the service process (Python's default is 5 ms): "
            "each batch is decided in a worker thread, and a GIL hand-over can cost an interval. "
            "An A/B at 0.001 was inconclusive on a loaded machine, so it is off by default"
        ),
    )
    gc_freeze_interval_s: float | None = Field(
        default=60.0,
        gt=0,
        description=(
            "gc.freeze() after start-up and then every this many seconds: the run catalog's "
            "objects leave the collector's view, so a full collection no longer stops the loop "
            "(measured: 40-60 ms pauses with a few thousand runs). Unset: Python's default"
        ),
    )
    stuck_after_s: float = Field(
        default=120.0,
        gt=0,
        description=(
            "A batch under way this long, or a consumer not polled this long, fails the "
            "liveness probe (runstream health)"
        ),
    )
    stats_interval_s: float = Field(
        default=60.0, gt=0, description="How often the loop logs its counts and batch timings"
    )

    data_root: str = Field(
        default_factory=lambda: os.environ.get("XFEL_DATA_ROOT", "/gpfs/exfel/exp"),
        description="Data root for registrations without their own (DAMNIT: $XFEL_DATA_ROOT)",
    )
    proposal_dir_glob: str = Field(
        default="*/*/p{proposal:06d}",
        description=(
            "Where a proposal's folder is under a data root (DAMNIT: <instrument>/<cycle>/pNNNNNN). "
            "A data root that already holds raw/ (or is named pNNNNNN) is the proposal folder."
        ),
    )
    run_dir_format: str = Field(
        default="r{run:04d}", description="Run folder name under raw/ and proc/"
    )

    settle_s: float = Field(
        default=30.0, ge=0, description="A folder is complete when no file changed for this long"
    )
    proc_retry_delay_s: float = Field(
        default=30.0, gt=0, description="Wait before looking at an incomplete proc folder again"
    )
    proc_max_attempts: int = Field(
        default=20,
        ge=1,
        description="Looks at a proc folder; after the last one the run message goes out anyway",
    )
    proc_waits_for_raw: bool = Field(
        default=True, description="Hold a proc run message until the run's raw message went out"
    )

    watch: bool = Field(default=False, description="Run the folder watcher")
    watch_interval_s: float = Field(default=10.0, gt=0, description="Seconds between scans")

    @field_validator("event_triggers")
    @classmethod
    def _raw_or_proc(cls, value: dict[str, Trigger]) -> dict[str, Trigger]:
        bad = {name: t.value for name, t in value.items() if t is Trigger.ALL}
        if bad:
            raise ValueError(f"a facility event makes raw or proc data available, not all: {bad}")
        return value

    def layout(self) -> Layout:
        return Layout(self.data_root, self.proposal_dir_glob, self.run_dir_format)

    def retry_topic(self) -> str:
        return self.kafka.topics.ingest_retry
