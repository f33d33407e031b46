"""Reading deploy/compose without docker: variable interpolation as compose does it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+alt}; $$ escapes.
VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class InterpolationError(Exception):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines ignored; quotes stripped)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ValueError(f"{path}:{number}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def references(text: str) -> list[tuple[str, str | None]]:
    """(variable, operator) for every ${...} or $VAR in ``text``."""
    found = []
    for match in VARIABLE.finditer(text):
        if match.group(0) == "$$":
            continue
        name = match.group("name") or match.group("bare")
        found.append((name, match.group("op")))
    return found


def references_in(value: Any) -> list[tuple[str, str | None]]:
    """References in every string of a parsed YAML structure (comments are not values)."""
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in references_in(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in references_in(item)]
    return references(value) if isinstance(value, str) else []


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` (any YAML structure) with every string interpolated from ``env``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if empty else str(current)
        if op in (":?", "?"):
            if empty:
                raise InterpolationError(f"{name}: {arg or 'required'}")
            return str(current)
        if op in (":+", "+"):
            return "" if empty else arg
        return "" if current is None else current

    return VARIABLE.sub(replace, value)


def load_compose(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The compose file with YAML anchors/merge keys resolved and variables interpolated."""
    data = yaml.load(
        path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )
    return {k: v for k, v in interpolate(data, env).items() if not k.startswith("x-")}


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a mapping (list form ``KEY=VALUE`` accepted)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}
