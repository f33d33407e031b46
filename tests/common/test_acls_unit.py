"""The ACL table: who may write which topic (docs/security.md's table is this one)."""

from __future__ import annotations

import pytest
from runstream_common import acls
from runstream_common.acls import Installation, grants, may, principals_writing, roles
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
        acls.STORE: {("group", "runstream-store", "READ")},
        acls.GATEWAY: {("group", "runstream-slurm-gateway", "READ")},
    }
    assert Installation().executor_group_id == "runstream-executor"


def test_topics_to_create_have_dead_letter_twins_and_compaction() -> None:
    names, compacted = acls.topics_to_create(INST)
    assert set(names) == {
        t for topic in [*T.all(), *INST.facility_topics] for t in (topic, dlq(topic))
    }
    assert compacted == set(T.compacted())


def test_topics_that_appear_at_run_time_are_owned_by_prefix() -> None:
    role = acls.Role("store", owns_prefixes=("test.damnit.db-",))
    inst = Installation(prefix="rs")
    import dataclasses

    extended = [dataclasses.replace(r, owns_prefixes=role.owns_prefixes) if r.principal == "store"
                else r for r in roles(inst)]  # fmt: skip
    owned = {
        (g.operation, g.name)
        for g in acls.grants_of(extended, inst)
        if g.principal == "store" and g.pattern == "prefixed" and g.name.startswith("test.")
    }
    assert owned == {(op, "test.damnit.db-") for op in ("CREATE", "READ", "WRITE", "DESCRIBE")}
