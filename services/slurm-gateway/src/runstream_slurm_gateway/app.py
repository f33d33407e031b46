"""The slurm-gateway service: FastStream app wiring (no import-time globals)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faststream import FastStream
from faststream.kafka import KafkaBroker
from runstream_common import parsers
from runstream_common.kafka import (
    Delivery,
    Handler,
    document_publication,
    make_broker,
    publish,
    subscribe,
)
from runstream_common.logs import configure_logging
from runstream_common.messages import JobRequested, JobStateChanged
from runstream_common.service import KafkaTopicAdmin, Runtime, Service, TopicAdmin, assemble
from runstream_common.telemetry import Telemetry, setup_telemetry
from runstream_common.topics import run_key

from . import __version__
from .adapters.local_backend import LocalBackend
from .adapters.local_journal import Journal
from .adapters.log_files import append_line
from .adapters.proposal_settings import follow_proposal_settings
from .adapters.slurm_backend import SlurmBackend
from .adapters.slurm_rest import SlurmRestClient
from .backend import Backend
from .handlers import Gateway, ProposalSettingsView
from .settings import Settings
from .slurm_api import SlurmApi
from .tokens import TokenManager, make_source

log = logging.getLogger("runstream.slurm_gateway")

GROUP_ID = "runstream-slurm-gateway"


def make_token_manager(settings: Settings) -> TokenManager:
    t = settings.token
    return TokenManager(
        make_source(t, user=settings.slurm.user),
        margin_s=t.refresh_margin_s,
        backoff_s=t.retry_backoff_s,
        backoff_max_s=t.retry_backoff_max_s,
    )


def make_slurm_client(settings: Settings, tokens: TokenManager | None = None) -> SlurmRestClient:
    return SlurmRestClient(
        base_url=settings.slurm.url,
        user=settings.slurm.user,
        api=SlurmApi.for_version(settings.slurm.api_version),
        tokens=tokens or make_token_manager(settings),
        timeout_s=settings.slurm.timeout_s,
    )


def make_backend(settings: Settings) -> tuple[Backend, TokenManager | None]:
    if settings.backend == "local":
        journal = None
        if settings.local.journal_dir:
            folder = Path(settings.local.journal_dir).expanduser()
            journal = Journal(folder / f"local-jobs-{settings.kafka.topic_prefix}.jsonl")
        if settings.local.run_as is None and _holds_slurm_key(settings):
            log.warning(
                "local backend: jobs run as the gateway's own user and can read its Slurm JWT "
                "key (file or environment); set RUNSTREAM_SLURM_GATEWAY_LOCAL__RUN_AS"
            )
        local = LocalBackend(
            kill_grace_s=settings.local.kill_grace_s, journal=journal, run_as=settings.local.run_as
        )
        return local, None
    tokens = make_token_manager(settings)
    return SlurmBackend(make_slurm_client(settings, tokens)), tokens


def _holds_slurm_key(settings: Settings) -> bool:
    return settings.token.key is not None or settings.token.key_file is not None


@dataclass
class GatewayRuntime(Runtime):
    """The gateway, its backend and the background tasks it runs besides its subscribers."""

    settings: Settings
    topics: TopicAdmin
    gateway: Gateway
    backend: Backend
    tokens: TokenManager | None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))

    async def start(self) -> None:
        """Topics, then the background tasks: proposal settings, token refresh, job polling."""
        topics = self.settings.kafka.topics
        await self.topics.ensure(
            [topics.job_requests, topics.job_control, topics.job_state, topics.proposal_settings],
            compacted=topics.compacted(),
        )
        gateway, backend = self.gateway, self.backend
        self.stopping.clear()
        self.spawn(
            follow_proposal_settings(
                self.settings.kafka,
                gateway.handle_settings,
                gateway.proposals.loaded,
                self.stopping,
            ),
            "proposal-settings",
        )
        if self.tokens is not None:
            self.spawn(self.tokens.keep_fresh(stop=self.stopping), "token-refresh")
        if isinstance(backend, LocalBackend):
            recovered = await backend.recover()
            if recovered:
                log.info("local backend: took over %d unfinished jobs from the journal", recovered)
        self.spawn(gateway.poll_forever(self.stopping), "job-poll")
        log.info("slurm-gateway started: backend %s", backend.name)

    async def stop(self) -> None:
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
        await self.backend.aclose()


def build_app(
    settings: Settings,
    *,
    telemetry: Telemetry | None = None,
    backend: Backend | None = None,
    topics: TopicAdmin | None = None,
    after_request: Callable[[JobRequested], None] | None = None,
) -> Service[GatewayRuntime]:
    """The gateway's app. Ports: ``backend`` (Slurm or local, from the settings by default),
    ``topics`` (Kafka's admin). ``after_request``: a test's hook, called after a job request
    was handled and before its offset is committed (crash tests); never set in production."""
    telemetry = telemetry or setup_telemetry("slurm-gateway", settings.telemetry)
    broker: KafkaBroker = make_broker(
        settings.kafka, telemetry, client_id="runstream-slurm-gateway"
    )
    tokens: TokenManager | None = None
    if backend is None:
        backend, tokens = make_backend(settings)

    async def publish_state(message: JobStateChanged) -> None:
        key = run_key(message.proposal, message.run)
        await publish(broker, settings.kafka.topics.job_state, message, key=key)

    gateway = Gateway(
        backend=backend,
        publish=publish_state,
        append_line=append_line,
        settings=settings,
        proposals=ProposalSettingsView(),
    )
    _subscribe(broker, settings, gateway, after_request)
    runtime = GatewayRuntime(
        settings, topics or KafkaTopicAdmin(settings.kafka), gateway, backend, tokens
    )
    return assemble(broker, runtime, title="runstream-slurm-gateway", version=__version__)


def _subscribe(
    broker: KafkaBroker,
    settings: Settings,
    gateway: Gateway,
    after_request: Callable[[JobRequested], None] | None,
) -> None:
    """Job requests and job control in; job state out (documented for AsyncAPI)."""
    topics = settings.kafka.topics
    handle_request: Handler[JobRequested] = gateway.handle_request
    if after_request is not None:
        hook = after_request

        async def handle_request(message: JobRequested, delivery: Delivery) -> None:
            await gateway.handle_request(message, delivery)
            hook(message)

    subscribe(
        broker,
        topics.job_requests,
        group_id=GROUP_ID,
        parser=parsers.JOB_REQUESTS,
        handler=handle_request,
        settings=settings,
        title="job requests",
    )
    subscribe(
        broker,
        topics.job_control,
        group_id=GROUP_ID,
        parser=parsers.JOB_CONTROL,
        handler=gateway.handle_cancel,
        settings=settings,
        title="job control",
    )
    document_publication(broker, topics.job_state, parsers.JOB_STATE, "Job state changes")


def create() -> FastStream:
    """Entry point ``runstream.services: slurm-gateway``."""
    settings = Settings()
    configure_logging(settings.log_level)
    return build_app(settings).app
