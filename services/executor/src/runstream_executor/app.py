"""The executor service: run messages in, results and processing state out."""

from __future__ import annotations

from dataclasses import dataclass

from faststream import FastStream
from faststream.kafka import KafkaBroker
from runstream_common import parsers
from runstream_common.inflight import InFlight, subscribe_in_flight
from runstream_common.kafka import Delivery, document_publication, make_broker, subscribe
from runstream_common.logs import configure_logging
from runstream_common.messages import ProposalSettingsSet, RunRequested
from runstream_common.poison import CrashLedger
from runstream_common.registry import ProposalRegistry, Registry
from runstream_common.service import KafkaTopicAdmin, Runtime, Service, TopicAdmin, assemble
from runstream_common.telemetry import Telemetry, setup_telemetry

from . import __version__
from .adapters.kafka import KafkaPublisher
from .handlers import RunProcessor
from .pool_set import PoolSet
from .registry import RunGuard
from .settings import Settings


@dataclass(frozen=True)
class Ports:
    """What the executor talks to besides its broker (tests pass in-memory ones)."""

    topics: TopicAdmin
    registry: Registry
    pools: PoolSet
    ledger: CrashLedger | None
    """Counts the attempts at each run, so a run that kills the executor is dead-lettered."""

    @classmethod
    def of(cls, settings: Settings) -> Ports:
        kafka = settings.kafka
        return cls(
            topics=KafkaTopicAdmin(kafka),
            registry=ProposalRegistry(
                kafka, client_id="runstream-executor-registry", wait_s=settings.registry_wait_s
            ),
            pools=PoolSet(settings),
            ledger=CrashLedger(
                kafka,
                topic=kafka.topics.attempts,
                group_id=settings.consumer_group,
                max_crashes=settings.max_crashes,
            ),
        )


@dataclass
class ExecutorRuntime(Runtime):
    settings: Settings
    ports: Ports
    processor: RunProcessor
    runs: InFlight

    async def start(self) -> None:
        topics = self.settings.kafka.topics
        await self.ports.topics.ensure(
            [topics.runs, topics.results, topics.processing, topics.job_requests,
             topics.proposal_settings, topics.proposals, topics.attempts],
            compacted=topics.compacted(),
        )  # fmt: skip
        # Read to its end before the broker starts: the first run message is judged on it.
        await self.ports.registry.start()
        if self.ports.ledger is not None:
            await self.ports.ledger.start()
        await self.ports.pools.get()  # warm the default pool before the first run arrives

    async def stop(self) -> None:
        await self.runs.drain()  # before the broker stops: running passes still publish
        if self.ports.ledger is not None:
            await self.ports.ledger.stop()

    async def stopped(self) -> None:
        await self.ports.registry.stop()
        await self.ports.pools.close()


def build_app(
    settings: Settings, *, telemetry: Telemetry | None = None, ports: Ports | None = None
) -> Service[ExecutorRuntime]:
    telemetry = telemetry or setup_telemetry("executor", settings.telemetry)
    ports = ports or Ports.of(settings)
    broker = make_broker(settings.kafka, telemetry, client_id="runstream-executor")
    processor = RunProcessor(settings, ports.pools, KafkaPublisher(broker), settings.kafka.topics)
    runs = _subscribe(broker, settings, processor, ports, telemetry)
    _document(broker, settings)
    runtime = ExecutorRuntime(settings, ports, processor, runs)
    return assemble(broker, runtime, title="runstream-executor", version=__version__)


def _subscribe(
    broker: KafkaBroker,
    settings: Settings,
    processor: RunProcessor,
    ports: Ports,
    telemetry: Telemetry,
) -> InFlight:
    """Run messages (several at once) and the proposals' settings in."""
    topics = settings.kafka.topics
    guard = RunGuard(ports.registry, settings.data_root)

    async def handle_run(message: RunRequested, delivery: Delivery) -> None:
        """Evaluate the context file for one run and publish its results.

        Its folders must be the proposal's registered ones (else dead-lettered, nothing runs).
        """
        await processor.process(await guard.checked(message))

    async def record_poison(message: RunRequested | None, reason: str) -> None:
        if message is not None:
            await processor.poisoned(message, reason)

    async def handle_proposal_settings(message: ProposalSettingsSet, delivery: Delivery) -> None:
        """Keep the latest settings of every proposal (context_python, ...)."""
        processor.proposal_settings[message.proposal] = dict(message.settings)

    # Several runs at once; offsets are committed per partition up to the oldest unfinished
    # run, and messages of the same run (key) never overtake each other. A run that was
    # being evaluated every time the executor died (max_crashes times) is recorded as
    # failed and dead-lettered instead of killing it again.
    runs = subscribe_in_flight(
        broker,
        topics.runs,
        group_id=settings.consumer_group,
        parser=parsers.RUNS,
        handler=handle_run,
        settings=settings,
        limit=settings.runs_in_flight,
        drain_timeout_s=settings.drain_timeout_s,
        tracer_provider=telemetry.tracer_provider,
        ledger=ports.ledger,
        on_poison=record_poison,
        service="executor",
        # Records never block polling (partitions are paused when full), but a rebalance
        # waits for the passes running, up to this long: a pass ends by its deadline,
        # plus loading the context and writing the fragment.
        max_poll_interval_ms=max_poll_interval_ms(settings),
    )
    # Every instance needs the whole compacted table: no group (no offsets), from the start.
    subscribe(broker, topics.proposal_settings, group_id=None, parser=parsers.PROPOSAL_SETTINGS,
              handler=handle_proposal_settings, settings=settings,
              auto_offset_reset="earliest")  # fmt: skip
    return runs


def _document(broker: KafkaBroker, settings: Settings) -> None:
    """What the executor publishes (for its AsyncAPI document)."""
    topics = settings.kafka.topics
    for topic, parser, what in (
        (topics.results, parsers.RESULTS,
         "Variable definitions and results (claim check: HDF5 fragments)"),
        (topics.processing, parsers.PROCESSING, "Processing state of each pass"),
        (topics.job_requests, parsers.JOB_REQUESTS, "Cluster variables to run as batch jobs"),
    ):  # fmt: skip
        document_publication(broker, topic, parser, what)


def max_poll_interval_ms(settings: Settings) -> int:
    """Longer than any pass may take (its deadline, the context load, the fragment write)."""
    return int((settings.pass_timeout_s + settings.context_load_timeout_s + 600) * 1000)


def create() -> FastStream:
    settings = Settings()
    configure_logging(settings.log_level)
    return build_app(settings).app
