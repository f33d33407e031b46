"""Every topic name in one place.

Internal topics share a configurable prefix (``runstream`` by default) so that
several installations, or several tests, can share one Kafka cluster. The
facility's own topics are not ours and keep their own names (see ingest
settings). Each consumed topic ``T`` has a dead-letter topic ``T.dlq``.
"""

from __future__ import annotations

from dataclasses import dataclass

DLQ_SUFFIX = ".dlq"


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


@dataclass(frozen=True, slots=True)
class Topics:
    """Names of runstream's internal topics under one prefix."""

    prefix: str = "runstream"

    def _t(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    @property
    def proposals(self) -> str:
        """Compacted, keyed by proposal: registrations and removals."""
        return self._t("proposals")

    @property
    def proposal_settings(self) -> str:
        """Compacted, keyed by proposal: the settings the store accepted."""
        return self._t("proposal-settings")

    @property
    def reprocess(self) -> str:
        """Reprocess requests from users (CLI, GUIs)."""
        return self._t("reprocess")

    @property
    def ingest_retry(self) -> str:
        """Ingest's delayed retries (proc events whose data is not ready yet)."""
        return self._t("ingest-retry")

    @property
    def runs(self) -> str:
        """Run messages for the executor, keyed by proposal/run."""
        return self._t("runs")

    @property
    def run_catalog(self) -> str:
        """Compacted, keyed by proposal/run: every run ingest has seen."""
        return self._t("run-catalog")

    @property
    def results(self) -> str:
        """Variable results for the store (inline values or fragment references)."""
        return self._t("results")

    @property
    def processing(self) -> str:
        """Processing state of runs, from the executor and job entry point."""
        return self._t("processing")

    @property
    def job_requests(self) -> str:
        """Requests to run cluster variables as Slurm jobs."""
        return self._t("jobs.requests")

    @property
    def job_control(self) -> str:
        """Cancel requests for Slurm jobs."""
        return self._t("jobs.control")

    @property
    def job_state(self) -> str:
        """Job state changes published by the slurm-gateway."""
        return self._t("jobs.state")

    @property
    def commands(self) -> str:
        """User commands for the store (comments, user variables, tags, settings)."""
        return self._t("commands")

    @property
    def updates(self) -> str:
        """The change feed for GUIs, keyed by proposal/run."""
        return self._t("updates")

    @property
    def attempts(self) -> str:
        """Compacted, keyed by consumer group/topic/partition/offset: records whose handling
        began and has not ended (a crash count each; see ``runstream_common.poison``)."""
        return self._t("attempts")

    def all(self) -> list[str]:
        """Every internal topic (not the dead-letter topics)."""
        return [
            self.proposals,
            self.proposal_settings,
            self.reprocess,
            self.ingest_retry,
            self.runs,
            self.run_catalog,
            self.results,
            self.processing,
            self.job_requests,
            self.job_control,
            self.job_state,
            self.commands,
            self.updates,
            self.attempts,
        ]

    def compacted(self) -> list[str]:
        """Topics whose latest value per key is the state (cleanup.policy=compact)."""
        return [self.proposals, self.proposal_settings, self.run_catalog, self.attempts]


DAMNIT_TOPIC_PREFIX = "test"
"""DAMNIT's GUIs listen on ``test.damnit.db-{db_id}`` (the prefix is fixed in DAMNIT 0.4)."""


def damnit_db_topic(db_id: str, prefix: str = DAMNIT_TOPIC_PREFIX) -> str:
    """The topic of one DAMNIT database (``runs.sqlite`` with metameta ``db_id``)."""
    return f"{prefix}.damnit.db-{db_id}"


def run_key(proposal: int, run: int) -> bytes:
    """Kafka key that keeps one run's messages on one partition, in order."""
    return f"{proposal}/{run}".encode()


def proposal_key(proposal: int) -> bytes:
    """Kafka key for per-proposal state."""
    return str(proposal).encode()
