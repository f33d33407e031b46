"""The ACL table: who may write which topic (docs/security.md's table is this one)."""

from __future__ import annotations

import pytest
from runstream_common import acls
from runstream_common.acls import Grant, Installation, grants, may, principals_writing, roles
from runstream_common.topics import dlq

pytestmark = pytest.mark.unit

INST = Installation(prefix="rs", facility_topics=("facility.daq", "facility.cal"))
T = INST.topics


def test_who_may_write_each_topic() -> None:
    writers = {topic: principals_writing(INST, topic) for topic in T.all()}
    assert writers == {
        T.proposals: [acls.OPERATOR],  # registering a proposal decides which code runs
        T.proposal_settings: [acls.STORE],
        T.reprocess: [acls.OPERATOR, acls.USER, acls.GUI],
        T.ingest_retry: [acls.INGEST],
        T.runs: [acls.INGEST],
        T.run_catalog: [acls.INGEST],
        T.results: [acls.EXECUTOR, acls.JOB],
        T.processing: [acls.INGEST, acls.EXECUTOR, acls.JOB],
        T.job_requests: [acls.EXECUTOR],
        T.job_control: [acls.OPERATOR, acls.USER],
        T.job_state: [acls.GATEWAY],
        T.commands: [acls.OPERATOR, acls.USER, acls.GUI],
        T.updates: [acls.STORE],
        T.attempts: [acls.EXECUTOR, acls.STORE],  # their crash counts (poison records)
    }
    assert principals_writing(INST, "facility.daq") == [acls.FACILITY]


def test_every_consumer_may_dead_letter_and_nobody_else() -> None:
    for role in roles(INST):
        for topic in role.consumes:
            assert may(INST, role.principal, "READ", topic)
            assert may(INST, role.principal, "WRITE", dlq(topic))
    # a dead-letter topic is written by the consumers of its topic only
    assert principals_writing(INST, dlq(T.results)) == [acls.STORE]
    assert principals_writing(INST, dlq(T.runs)) == [acls.EXECUTOR]


def test_topics_are_named_one_by_one_and_only_described_by_prefix() -> None:
    for grant in grants(INST):
        if grant.pattern == "prefixed" and grant.resource == "topic":
            if grant.name == INST.damnit_topics:  # DAMNIT's topics: the store's alone
                assert grant.principal == acls.STORE
                continue
            assert grant.operation == "DESCRIBE"
            assert grant.name == "rs."
    assert not may(INST, acls.EXECUTOR, "WRITE", "rs.something-new")
    assert not may(INST, acls.FACILITY, "DESCRIBE", T.runs), "the facility sees only its topics"


def test_groups_and_transactional_ids() -> None:
    by_principal: dict[str, set[tuple[str, str, str]]] = {}
    for grant in grants(INST):
        if grant.resource != "topic":
            by_principal.setdefault(grant.principal, set()).add(
                (grant.resource, grant.name, grant.operation)
            )
    assert by_principal == {
        acls.INGEST: {
            ("group", "runstream-ingest", "READ"),
            ("transactional_id", "runstream-ingest", "WRITE"),
            ("transactional_id", "runstream-ingest", "DESCRIBE"),
        },
        acls.EXECUTOR: {("group", "rs-executor", "READ")},  # the executor's prefix-derived group
        # its own group and the one that follows GUI edits on DAMNIT's topics
        acls.STORE: {
            ("group", "runstream-store", "READ"),
            ("group", "runstream-store-damnit", "READ"),
        },
        acls.GATEWAY: {("group", "runstream-slurm-gateway", "READ")},
    }
    assert Installation().executor_group_id == "runstream-executor"


def test_topics_to_create_have_dead_letter_twins_and_compaction() -> None:
    names, compacted = acls.topics_to_create(INST)
    assert set(names) == {
        t for topic in [*T.all(), *INST.facility_topics] for t in (topic, dlq(topic))
    }
    assert compacted == set(T.compacted())


def test_the_store_owns_damnits_topics_and_reads_registrations() -> None:
    """DAMNIT's per-database topics appear at run time: the store creates and uses them."""
    owned = {
        (g.principal, g.operation, g.name)
        for g in grants(INST)
        if g.pattern == "prefixed" and g.name.startswith("test.")
    }
    assert owned == {
        (acls.STORE, op, "test.damnit.db-") for op in ("CREATE", "READ", "WRITE", "DESCRIBE")
    }
    topic = "test.damnit.db-5f1c0e4a"
    assert principals_writing(INST, topic) == [acls.STORE]
    assert may(INST, acls.STORE, "READ", topic)  # the GUIs' edits
    assert not may(INST, acls.GUI, "READ", topic)
    assert not may(INST, acls.STORE, "WRITE", "other.damnit.db-5f1c0e4a")
    # the store learns context folders from registrations (and may dead-letter them)
    assert may(INST, acls.STORE, "READ", T.proposals)
    # the executor reads the registry (run messages must name its folders), never writes it
    assert may(INST, acls.EXECUTOR, "READ", T.proposals)
    assert not may(INST, acls.EXECUTOR, "WRITE", T.proposals)
    assert principals_writing(INST, T.proposals) == [acls.OPERATOR]
    # the prefix and the group follow the store's settings
    other = Installation(prefix="rs", damnit_topic_prefix="xfel", store_damnit_group="edits")
    assert principals_writing(other, "xfel.damnit.db-1") == [acls.STORE]
    assert principals_writing(other, topic) == []
    assert Grant(acls.STORE, "group", "edits", "READ") in grants(other)
    off = Installation(prefix="rs", damnit=False)
    assert principals_writing(off, topic) == []
    assert not any("damnit" in g.name for g in grants(off))


def test_damnit_guis_get_damnits_topics_only_when_named() -> None:
    topic = "test.damnit.db-5f1c0e4a"
    assert not any(g.principal == "ANONYMOUS" for g in grants(INST))
    open_gui = Installation(prefix="rs", damnit_gui_principal="ANONYMOUS")
    theirs = {(g.resource, g.name, g.operation, g.pattern)
              for g in grants(open_gui) if g.principal == "ANONYMOUS"}  # fmt: skip
    assert theirs == {("topic", "test.damnit.db-", op, "prefixed")
                      for op in ("READ", "WRITE", "DESCRIBE")}  # fmt: skip
    assert principals_writing(open_gui, topic) == [acls.STORE, "ANONYMOUS"]
    assert not may(open_gui, "ANONYMOUS", "CREATE", topic)  # the store creates them
    for other in T.all():
        assert not may(open_gui, "ANONYMOUS", "READ", other)
        assert not may(open_gui, "ANONYMOUS", "WRITE", other)
