"""Entry point run inside a Slurm job for ``cluster=True`` variables.

    python -m runstream_executor.job --proposal P --run R --context-dir D \\
        --proposal-dir D --trigger raw|proc|all --request-id ID --job-request-id ID \\
        [--var NAME]... [--context-python PYTHON]

Evaluates exactly the selected cluster variables of one run (their non-cluster
dependencies are reused from the run's earlier pass when kept, else
recomputed) and publishes ResultsReady and ProcessingStateChanged like the
service does. Kafka settings come from the executor's Settings (environment:
``RUNSTREAM_EXECUTOR_KAFKA__BOOTSTRAP_SERVERS``, ``RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS``,
``RUNSTREAM_KAFKA_TOPIC_PREFIX``...). Exit status 0 when the results were
published (even if variables failed), 1 when it could not run or publish,
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from faststream.kafka import KafkaBroker
from opentelemetry import context as otel_context
from opentelemetry.propagate import extract
from pydantic import BaseModel
from runstream_common.errors import ServiceUnavailable
from runstream_common.kafka import make_broker
from runstream_common.messages import ProcessingStatus
from runstream_common.telemetry import setup_telemetry

from .adapters.kafka import KafkaPublisher
from .handlers import RunProcessor, request_for_job
from .modes import JobPass
from .pool_set import PoolSet
from .settings import Settings

log = logging.getLogger("runstream.executor.job")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runstream_executor.job", description=__doc__)
    p.add_argument("--proposal", type=int, required=True)
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--context-dir", required=True)
    p.add_argument("--proposal-dir", required=True)
    p.add_argument("--trigger", choices=["raw", "proc", "all"], default="all")
    p.add_argument("--request-id", required=True)
    p.add_argument("--job-request-id", required=True)
    p.add_argument("--var", action="append", default=[], dest="names", metavar="NAME")
    p.add_argument("--context-python", default=None)
    return p.parse_args(argv)


class PatientPublisher:
    """Retries publishes while Kafka is away, for up to ``window_s`` per message.

    A batch job cannot hand its message back to Kafka for redelivery the way a
    consumer can: giving up would lose the job's results, so it waits instead.
    """

    def __init__(self, inner: KafkaPublisher, window_s: float) -> None:
        self.inner = inner
        self.window_s = window_s

    async def publish(self, topic: str, message: BaseModel, key: bytes) -> None:
        deadline = time.monotonic() + self.window_s
        delay = 0.5
        while True:
            try:
                await self.inner.publish(topic, message, key)
                return
            except ServiceUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Kafka unavailable, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)


async def _connect(broker: KafkaBroker, window_s: float) -> None:
    deadline = time.monotonic() + window_s
    delay = 0.5
    while True:
        try:
            await broker.connect()
            return
        except Exception as exc:  # aiokafka raises several kinds while the broker is down
            if time.monotonic() + delay > deadline:
                raise ServiceUnavailable(f"Kafka unavailable: {exc}") from exc
            log.warning("Kafka unavailable at start, retrying in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)


def _continue_trace() -> object | None:
    """Attach the trace the gateway handed over (``TRACEPARENT``), if any."""
    carrier = {
        name: os.environ[name.upper()]
        for name in ("traceparent", "tracestate")
        if os.environ.get(name.upper())
    }
    if not carrier:
        return None
    return otel_context.attach(extract(carrier))


async def run_job(args: argparse.Namespace, settings: Settings) -> int:
    _continue_trace()
    # Telemetry makes every publish carry the trace on to the store.
    telemetry = setup_telemetry("executor-job", settings.telemetry)
    broker = make_broker(settings.kafka, telemetry, client_id="runstream-executor-job")
    pools = PoolSet(settings)
    slurm_job = os.environ.get("SLURM_JOB_ID")
    try:
        await _connect(broker, settings.job_publish_window_s)
        publisher = PatientPublisher(KafkaPublisher(broker), settings.job_publish_window_s)
        processor = RunProcessor(settings, pools, publisher, settings.kafka.topics)
        if args.context_python:
            processor.proposal_settings[args.proposal] = {"context_python": args.context_python}
        req = request_for_job(
            request_id=args.request_id,
            proposal=args.proposal,
            run=args.run,
            trigger=args.trigger,
            context_dir=args.context_dir,
            proposal_dir=args.proposal_dir,
        )
        report = await processor.process(
            req,
            JobPass(
                job_request_id=args.job_request_id,
                names=tuple(args.names),
                slurm_job_id=int(slurm_job) if slurm_job and slurm_job.isdigit() else None,
            ),
        )
    except Exception as exc:
        log.error("cluster job could not run or publish: %s: %s", type(exc).__name__, exc)
        return 1
    finally:
        await pools.close()
        await broker.stop()
    if report.status is ProcessingStatus.FAILED:
        log.error("cluster job failed: %s", report.reason)
        return 1
    log.info("published %s: %s", report.processing_id, report.counts)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args = parse_args(argv)
    settings = Settings()
    return asyncio.run(run_job(args, settings))


if __name__ == "__main__":
    sys.exit(main())
