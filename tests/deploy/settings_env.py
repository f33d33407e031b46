"""What each service's Settings class needs from the environment, by introspection.

A service is found through its ``runstream.services`` entry point; its Settings
class is ``<top-level package>.settings.Settings`` (docs/development.md).
"""

from __future__ import annotations

import functools
import importlib
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings


@dataclass(frozen=True)
class SettingField:
    """One leaf setting: its path in the Settings model and the variables that set it."""

    path: tuple[str, ...]
    env_names: frozenset[str]
    required: bool  # no default: the service cannot start without it
    secret: bool  # a SecretStr (possibly optional)
    optional: bool  # None is allowed

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def service_entry_points() -> dict[str, str]:
    """Service name -> ``module:factory`` of the ``runstream.services`` group."""
    return {ep.name: ep.value for ep in entry_points(group="runstream.services")}


def settings_class(service: str) -> type[BaseSettings]:
    module = service_entry_points()[service].split(":", 1)[0]
    package = module.split(".", 1)[0]
    cls = importlib.import_module(f"{package}.settings").Settings
    assert issubclass(cls, BaseSettings), f"{package}.settings.Settings is not a BaseSettings"
    return typing.cast(type[BaseSettings], cls)


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _args(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _leaves(
    model: type[BaseModel], prefixes: list[str], path: tuple[str, ...]
) -> Iterator[SettingField]:
    for name, info in model.model_fields.items():
        yield from _field(name, info, prefixes, path)


def _field(
    name: str, info: FieldInfo, prefixes: list[str], path: tuple[str, ...]
) -> Iterator[SettingField]:
    names = [f"{prefix}{name}".upper() for prefix in prefixes]
    nested = _model_type(info.annotation)
    if nested is not None:
        child_prefixes = [f"{n}__" for n in names]
        if issubclass(nested, BaseSettings):
            # A block with its own prefix (RUNSTREAM_KAFKA_...): read when it is built.
            child_prefixes.append(str(nested.model_config.get("env_prefix", "")))
        yield from _leaves(nested, child_prefixes, (*path, name))
        return
    members = _args(info.annotation)
    yield SettingField(
        path=(*path, name),
        env_names=frozenset(names),
        required=info.is_required(),
        secret=any(m is SecretStr for m in members),
        optional=type(None) in members,
    )


@functools.cache
def setting_fields(service: str) -> tuple[SettingField, ...]:
    cls = settings_class(service)
    prefix = str(cls.model_config.get("env_prefix", ""))
    assert cls.model_config.get("env_nested_delimiter") == "__", cls
    return tuple(_leaves(cls, [prefix], ()))


@functools.cache
def known_variables() -> frozenset[str]:
    """Every RUNSTREAM_* variable some service's Settings (or the CLI) reads."""
    names: set[str] = set()
    for service in service_entry_points():
        for field in setting_fields(service):
            names |= field.env_names
            # a nested model may also be given whole, as JSON
            for env in field.env_names:
                parts = env.split("__")
                names |= {"__".join(parts[:i]) for i in range(1, len(parts))}
    return frozenset(names | cli_variables())


def cli_variables() -> set[str]:
    """Environment variables of ``runstream`` command options (e.g. RUNSTREAM_HEARTBEAT_FILE)."""
    import typer.main

    from runstream.cli import app

    command = typer.main.get_command(app)
    found: set[str] = set()
    for sub in getattr(command, "commands", {}).values():
        for param in sub.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                found.add(envvar)
            elif envvar:
                found |= set(envvar)
    return found


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` holding exactly ``env`` plus non-runstream variables of the process."""
    saved = dict(os.environ)
    try:
        for key in list(os.environ):
            if key.startswith("RUNSTREAM_") or key in ("XFEL_DATA_ROOT", "SLURM_JWT"):
                del os.environ[key]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_settings(service: str, env: Mapping[str, str]) -> Any:
    """The service's Settings as the given container environment makes them.

    Typed ``Any``: the class is found at run time, and callers read its fields."""
    with environment(env):
        return settings_class(service)()


def lookup(settings: BaseModel, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for part in path:
        value = getattr(value, part)
    return value


# When an optional secret is needed, as a function of the loaded settings. Every
# optional SecretStr field of every service must be listed (a test checks it), so
# a new secret setting cannot slip through without a rule for the deployments.
CONDITIONAL_SECRETS: dict[tuple[str, ...], Callable[[Any], bool]] = {
    ("kafka", "sasl_password"): lambda s: s.kafka.security_protocol.startswith("SASL"),
    # the local backend needs no Slurm key (and must not hold one its jobs could read)
    ("token", "key"): lambda s: (
        s.backend == "slurm" and s.token.source == "hs256" and s.token.key_file is None
    ),
    # cluster jobs publish as their own Kafka user
    ("job", "kafka_password"): lambda s: (
        s.kafka.security_protocol.startswith("SASL") and not s.job.pass_kafka_password
    ),
    # the web table's bearer token, when writes need one
    ("write_token",): lambda s: s.write_access == "token",
}


def needed_variables(service: str, env: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """Settings (dotted) that ``env`` must provide, each with the variables that can.

    Needed: fields without a default, non-optional secrets (a default secret is a
    development value, never right in a deployment), and optional secrets whose
    CONDITIONAL_SECRETS rule says the loaded settings use them.
    """
    settings = load_settings(service, env)
    needed: dict[str, frozenset[str]] = {}
    for field in setting_fields(service):
        if field.required or (field.secret and not field.optional):
            needed[field.dotted] = field.env_names
        elif field.secret:
            rule = CONDITIONAL_SECRETS[field.path]
            if rule(settings):
                needed[field.dotted] = field.env_names
    return needed
