"""Who may read and write which topic: the Kafka ACLs of one installation.

Each service authenticates as its own SCRAM user (the principal ``User:<name>``)
and gets exactly the topics, consumer groups and transactional ids it uses. The
table below is the single source of truth: ``runstream kafka acls`` prints it
and applies it, docs/security.md explains it, and the security tests check the
broker enforces it.

Topics are named one by one (``LITERAL``), never by prefix, so a principal
cannot touch another installation's topics or a topic added later. Only
``DESCRIBE`` is granted on the whole ``<prefix>.`` namespace: services check at
start-up that their topics (and dead-letter twins) exist, and seeing a topic's
name and partitions gives nothing away. Topics are created by the administrator
(``runstream kafka acls --apply``), not by the services.

One exception: DAMNIT's topics (``<damnit prefix>.damnit.db-<db_id>``, one per
``runs.sqlite``) appear while the store runs, so the store owns that prefix (it
creates, reads and writes them). DAMNIT 0.4's own GUI cannot authenticate (its
kafka-python clients get nothing but a broker address); an installation that
gives it a listener of its own names the principal it arrives as there
(``damnit_gui_principal``, e.g. ``ANONYMOUS`` on a plaintext listener), which may
then read and write DAMNIT's topics and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .topics import DAMNIT_TOPIC_PREFIX, Topics, damnit_db_topic, dlq

ResourceType = Literal["topic", "group", "transactional_id"]
PatternType = Literal["literal", "prefixed"]
Operation = Literal["READ", "WRITE", "DESCRIBE", "CREATE"]

# The SCRAM users of an installation, one per role.
INGEST = "ingest"
EXECUTOR = "executor"
STORE = "store"
GATEWAY = "slurm-gateway"
JOB = "job"  # cluster jobs (python -m runstream_executor.job) started by the gateway
OPERATOR = "operator"  # the runstream command of operators: also registers proposals
USER = "user"  # the runstream command of scientists: reprocess, comments, settings, cancel
GUI = "gui"  # GUIs following the change feed and sending user commands
FACILITY = "facility"  # the facility's own producer of run events
ADMIN = "admin"  # super user: creates topics, users and these ACLs; no service uses it

PRINCIPALS: tuple[str, ...] = (
    INGEST,
    EXECUTOR,
    STORE,
    GATEWAY,
    JOB,
    OPERATOR,
    USER,
    GUI,
    FACILITY,
)


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    """ALLOW ``operation`` on a resource for ``User:<principal>`` from any host."""

    principal: str
    resource: ResourceType
    name: str
    operation: Operation
    pattern: PatternType = "literal"


@dataclass(frozen=True, slots=True)
class Installation:
    """The names the ACLs are about; the defaults are the services' defaults."""

    prefix: str = "runstream"
    facility_topics: tuple[str, ...] = ()
    ingest_group: str = "runstream-ingest"
    ingest_transactional_id: str = "runstream-ingest"
    executor_group: str | None = None  # the executor's default: derived from the prefix
    store_group: str = "runstream-store"
    gateway_group: str = "runstream-slurm-gateway"
    # The store's DAMNIT projection (its settings damnit.enabled, .topic_prefix, .group_id)
    damnit: bool = True
    damnit_topic_prefix: str = DAMNIT_TOPIC_PREFIX
    store_damnit_group: str | None = None  # the store's default: <store_group>-damnit
    # Who DAMNIT 0.4's GUIs are to the broker (no credentials: e.g. ANONYMOUS on a
    # plaintext listener of their own); None: they get no access.
    damnit_gui_principal: str | None = None

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    @property
    def damnit_topics(self) -> str:
        """The name prefix of every DAMNIT database's topic (``test.damnit.db-``)."""
        return damnit_db_topic("", self.damnit_topic_prefix)

    @property
    def store_damnit_group_id(self) -> str:
        return self.store_damnit_group or f"{self.store_group}-damnit"

    @property
    def executor_group_id(self) -> str:
        if self.executor_group:
            return self.executor_group
        return "runstream-executor" if self.prefix == "runstream" else f"{self.prefix}-executor"


@dataclass(frozen=True, slots=True)
class Role:
    """What one principal does: topics it consumes (and dead-letters), reads, writes."""

    principal: str
    consumes: tuple[str, ...] = ()  # READ, and WRITE on the dead-letter twin
    reads: tuple[str, ...] = ()  # READ only (followers of compacted tables, the feed)
    writes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    transactional_id_prefix: str | None = None
    sees_prefix: bool = True  # DESCRIBE on every topic of the installation
    # Topics that appear while the service runs (named by a prefix): it may create,
    # read and write every topic under each of these prefixes.
    owns_prefixes: tuple[str, ...] = ()
    # Topics someone else creates at run time: read and write them (no CREATE).
    uses_prefixes: tuple[str, ...] = ()


def roles(inst: Installation) -> list[Role]:
    """Every principal's role in ``inst`` (docs/architecture.md's topic table, per principal)."""
    t = inst.topics
    facility = inst.facility_topics
    damnit = (inst.damnit_topics,) if inst.damnit else ()
    gui: list[Role] = []
    if inst.damnit and inst.damnit_gui_principal:
        gui.append(Role(inst.damnit_gui_principal, uses_prefixes=damnit, sees_prefix=False))
    return [
        Role(
            INGEST,
            consumes=(*facility, t.reprocess, t.ingest_retry),
            reads=(t.proposals, t.run_catalog, t.processing),
            writes=(t.runs, t.run_catalog, t.processing, t.ingest_retry),
            groups=(inst.ingest_group,),
            transactional_id_prefix=inst.ingest_transactional_id,
        ),
        Role(
            EXECUTOR,
            consumes=(t.runs, t.proposal_settings),
            reads=(t.proposals, t.attempts),  # the registry; crash counts
            writes=(t.results, t.processing, t.job_requests, t.attempts),
            groups=(inst.executor_group_id,),
        ),
        Role(
            STORE,
            consumes=(t.results, t.run_catalog, t.processing, t.job_state, t.commands, t.proposals),
            reads=(t.attempts,),  # crash counts of results records (poison records)
            writes=(t.updates, t.proposal_settings, t.attempts),
            groups=(inst.store_group, *([inst.store_damnit_group_id] if inst.damnit else [])),
            owns_prefixes=damnit,  # DAMNIT's per-database topics, created as they appear
        ),
        Role(
            GATEWAY,
            consumes=(t.job_requests, t.job_control, t.proposal_settings),
            writes=(t.job_state,),
            groups=(inst.gateway_group,),
        ),
        Role(JOB, writes=(t.results, t.processing)),
        Role(
            OPERATOR,
            reads=(t.updates, t.proposals, t.run_catalog),
            writes=(t.proposals, t.reprocess, t.commands, t.job_control),
        ),
        Role(
            USER,
            reads=(t.updates, t.proposals, t.run_catalog),
            writes=(t.reprocess, t.commands, t.job_control),
        ),
        Role(GUI, reads=(t.updates,), writes=(t.reprocess, t.commands)),
        Role(FACILITY, writes=facility, sees_prefix=False),
        *gui,
    ]


def grants(inst: Installation) -> list[Grant]:
    """The ACL bindings of ``inst``, sorted and without duplicates."""
    return grants_of(roles(inst), inst)


_OWN: tuple[Operation, ...] = ("CREATE", "READ", "WRITE", "DESCRIBE")
_USE: tuple[Operation, ...] = ("READ", "WRITE", "DESCRIBE")


def grants_of(all_roles: list[Role], inst: Installation) -> list[Grant]:
    """The ACL bindings that give each of ``all_roles`` what it does, and nothing more."""
    out: set[Grant] = set()
    for role in all_roles:
        p = role.principal
        if role.sees_prefix:
            out.add(Grant(p, "topic", f"{inst.prefix}.", "DESCRIBE", "prefixed"))
        for topic in role.consumes:
            out.add(Grant(p, "topic", topic, "READ"))
            out.add(Grant(p, "topic", dlq(topic), "WRITE"))
        for topic in role.reads:
            out.add(Grant(p, "topic", topic, "READ"))
        for topic in role.writes:
            out.add(Grant(p, "topic", topic, "WRITE"))
        for owned in role.owns_prefixes:
            for operation in _OWN:
                out.add(Grant(p, "topic", owned, operation, "prefixed"))
        for used in role.uses_prefixes:
            for operation in _USE:
                out.add(Grant(p, "topic", used, operation, "prefixed"))
        for group in role.groups:
            out.add(Grant(p, "group", group, "READ"))
        if role.transactional_id_prefix:
            tid = role.transactional_id_prefix
            out.add(Grant(p, "transactional_id", tid, "WRITE", "prefixed"))
            out.add(Grant(p, "transactional_id", tid, "DESCRIBE", "prefixed"))
    # READ and WRITE imply DESCRIBE, so the facility's topics (outside the prefix) need no more.
    return sorted(out)


def topics_to_create(inst: Installation) -> tuple[list[str], set[str]]:
    """Every topic of ``inst`` with its dead-letter twin, and which of them are compacted."""
    names: list[str] = []
    for topic in [*inst.topics.all(), *inst.facility_topics]:
        names += [topic, dlq(topic)]
    return names, set(inst.topics.compacted())


def may(inst: Installation, principal: str, operation: Operation, topic: str) -> bool:
    """Whether the table lets ``principal`` do ``operation`` on ``topic`` (for tests and docs)."""
    for grant in grants(inst):
        if grant.principal != principal or grant.resource != "topic":
            continue
        if grant.operation != operation:
            continue
        if grant.name == topic or (grant.pattern == "prefixed" and topic.startswith(grant.name)):
            return True
    return False


def principals_writing(inst: Installation, topic: str) -> list[str]:
    """Who may write ``topic`` (docs/security.md's "who can write what")."""
    every = [*PRINCIPALS, *([inst.damnit_gui_principal] if inst.damnit_gui_principal else [])]
    return [p for p in every if may(inst, p, "WRITE", topic)]
