"""``runstream kafka acls`` and ``runstream kafka password``: the administrator's side of Kafka.

``acls`` prints who may read and write which topic (``runstream_common.acls``)
and, with ``--apply``, creates the installation's topics and those ACLs on the
broker. ``password`` sets (or rotates) a SCRAM user's password. Both connect
with the administrator's credentials from the usual ``RUNSTREAM_KAFKA_*``
variables; the services never hold them.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from runstream_common.acls import Grant, Installation
    from runstream_common.settings import KafkaSettings

out = Console()
err = Console(stderr=True)

kafka_app = typer.Typer(
    help="Kafka administration: topics, ACLs and SCRAM users (needs the admin credentials).",
    no_args_is_help=True,
)

SCRAM_ITERATIONS = 8192


def installation(
    prefix: str, facility_topics: list[str] | None, damnit_gui_principal: str | None = None
) -> Installation:
    """The names the services use, from the same variables they read (docs/security.md)."""
    from runstream_common.acls import Installation

    if not facility_topics:
        facility_topics = list(_service_settings("ingest").facility_topics)
    damnit = _service_settings("store").damnit  # RUNSTREAM_STORE_DAMNIT__*
    env = os.environ.get
    return Installation(
        prefix=prefix,
        facility_topics=tuple(facility_topics),
        ingest_group=env("RUNSTREAM_INGEST_GROUP_ID", "runstream-ingest"),
        ingest_transactional_id=env("RUNSTREAM_INGEST_TRANSACTIONAL_ID", "runstream-ingest"),
        executor_group=env("RUNSTREAM_EXECUTOR_GROUP_ID") or None,
        store_group=env("RUNSTREAM_STORE_GROUP_ID", "runstream-store"),
        damnit=damnit.enabled,
        damnit_topic_prefix=damnit.topic_prefix,
        store_damnit_group=damnit.group_id,
        damnit_gui_principal=damnit_gui_principal or None,
    )


def _service_settings(service: str) -> Any:
    """A service's settings from the environment, found like `runstream serve` finds it."""
    import importlib
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="runstream.services") if e.name == service]
    package = ep.value.split(":", 1)[0].split(".", 1)[0]
    return importlib.import_module(f"{package}.settings").Settings()


def _admin(settings: KafkaSettings) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({**settings.librdkafka_config(), "log_level": 3})


def _wait(futures: dict[Any, Any], what: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """Wait for confluent-kafka futures; return the failures (not those named in ``ignore``)."""
    failures = []
    for key, future in futures.items():
        try:
            future.result(timeout=60)
        except Exception as exc:
            error = exc.args[0] if exc.args else None
            name = getattr(error, "name", None)
            if callable(name) and name() in ignore:
                continue
            failures.append(f"{what} {key}: {exc}")
    return failures


def create_topics(settings: KafkaSettings, inst: Installation) -> list[str]:
    """Create every topic of ``inst`` (with dead-letter twins) that does not exist yet."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
    from runstream_common.acls import topics_to_create

    names, compacted = topics_to_create(inst)
    admin = _admin(settings)
    new = [
        NewTopic(
            name,
            num_partitions=settings.topic_partitions,
            replication_factor=settings.replication_factor,
            config={"cleanup.policy": "compact"} if name in compacted else {},
        )
        for name in names
    ]
    return _wait(admin.create_topics(new), "topic", ignore=("TOPIC_ALREADY_EXISTS",))


def _binding(grant: Grant) -> Any:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    return AclBinding(
        ResourceType[grant.resource.upper()],
        grant.name,
        ResourcePatternType[grant.pattern.upper()],
        f"User:{grant.principal}",
        "*",
        AclOperation[grant.operation],
        AclPermissionType.ALLOW,
    )


def apply_grants(settings: KafkaSettings, grants: list[Grant], wait_s: float = 30.0) -> list[str]:
    """Create the ACLs; return once the broker enforces them (or the failures)."""
    import time

    admin = _admin(settings)
    bindings = [_binding(g) for g in grants]
    failures = _wait(admin.create_acls(bindings), "ACL")
    if failures:
        return failures
    # The controller has them; wait until the broker's authorizer does too, so clients
    # started right after this command are not refused for a moment.
    deadline = time.monotonic() + wait_s
    while (missing := set(bindings) - _described(admin)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"ACL {b}: created but not in effect after {wait_s:g} s" for b in missing]


def _described(admin: Any) -> set[Any]:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    every = AclBindingFilter(  # None: any name, principal and host
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,  # type: ignore[arg-type]
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    return set(admin.describe_acls(every).result(timeout=30))


def _print_grants(grants: list[Grant]) -> None:
    from rich.table import Table

    table = Table(title="Kafka ACLs (ALLOW, any host)")
    for column in ("principal", "operation", "resource", "name", "pattern"):
        table.add_column(column, overflow="fold")
    for g in grants:
        table.add_row(f"User:{g.principal}", g.operation, g.resource, g.name, g.pattern)
    out.print(table)


@kafka_app.command("acls")
def acls(
    facility_topic: Annotated[
        list[str] | None,
        typer.Option(
            "--facility-topic",
            help="A facility topic ingest reads (repeat; default: RUNSTREAM_INGEST_FACILITY_TOPICS "
            "or ingest's defaults)",
        ),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Create the topics and the ACLs on the broker")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ACLs as JSON")] = False,
    damnit_gui_principal: Annotated[
        str | None,
        typer.Option(
            "--damnit-gui-principal",
            help="The principal DAMNIT 0.4's GUIs arrive as on a listener of their own (they "
            "cannot authenticate; e.g. ANONYMOUS on a plaintext listener): may read and write "
            "DAMNIT's topics only (docs/security.md)",
        ),
    ] = None,
) -> None:
    """Who may read and write which topic; with --apply, create topics and ACLs (idempotent)."""
    from dataclasses import asdict

    from runstream_common.acls import grants as all_grants
    from runstream_common.settings import KafkaSettings

    settings = KafkaSettings()
    inst = installation(settings.topic_prefix, facility_topic, damnit_gui_principal)
    grants = all_grants(inst)
    if as_json:
        out.print_json(data=[asdict(g) for g in grants])
    elif not apply:
        _print_grants(grants)
    if not apply:
        return
    failures = create_topics(settings, inst)
    failures += apply_grants(settings, grants)
    if failures:
        for line in failures:
            err.print(f"[red]error:[/] {line}")
        raise typer.Exit(1)
    if not as_json:
        out.print(
            f"applied {len(grants)} ACLs for prefix {inst.prefix!r} and "
            f"{len(inst.facility_topics)} facility topics as {settings.sasl_username or 'anonymous'}"
        )


@kafka_app.command("password")
def password(
    user: Annotated[str, typer.Argument(help="SCRAM user name (e.g. executor)")],
    mechanism: Annotated[
        str, typer.Option(help="SCRAM-SHA-512 or SCRAM-SHA-256")
    ] = "SCRAM-SHA-512",
) -> None:
    """Create a SCRAM user or rotate its password; the password is read from standard input."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )
    from runstream_common.secrets import placeholder_reason
    from runstream_common.settings import KafkaSettings

    secret = sys.stdin.readline().rstrip("\n")
    if len(secret) < 16:
        err.print("[red]error:[/] give a password of at least 16 characters on standard input")
        raise typer.Exit(2)
    reason = placeholder_reason(secret)
    if reason:
        err.print(f"[red]error:[/] not a real password: {reason}")
        raise typer.Exit(2)
    kind = ScramMechanism[mechanism.replace("-", "_")]
    upsert = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(kind, SCRAM_ITERATIONS), secret.encode()
    )
    admin = _admin(KafkaSettings())
    failures = _wait(admin.alter_user_scram_credentials([upsert]), "user")
    if failures:
        for line in failures:
            err.print(f"[red]error:[/] {line}")
        raise typer.Exit(1)
    out.print(f"password of Kafka user {user!r} set ({mechanism})")


def register(app: typer.Typer) -> None:
    app.add_typer(kafka_app, name="kafka")
