"""A context file as the service sees it: source, content hash, revision, definitions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream_common.messages import VariableDefinition


@dataclass(frozen=True)
class ContextSource:
    """One reading of ``context.py``; the hash is the provenance of every result."""

    path: str
    source: str
    hash: str
    revision: int

    @classmethod
    def read(cls, path: str | Path) -> ContextSource:
        p = Path(path)
        raw = p.read_bytes()
        revision = p.stat().st_mtime_ns
        return cls(
            path=str(p.resolve()),
            source=raw.decode("utf-8"),
            hash=hashlib.sha256(raw).hexdigest(),
            revision=revision,
        )


@dataclass(frozen=True)
class VarDef:
    """One variable as the worker described it (after promotion)."""

    name: str
    title: str
    description: str | None
    units: str | None
    tags: tuple[str, ...]
    data: str
    cluster: bool
    transient: bool
    summary: str | None
    line: int | None
    args: tuple[dict[str, Any], ...]
    deps: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VarDef:
        return cls(
            name=d["name"],
            title=d["title"],
            description=d.get("description"),
            units=d.get("units"),
            tags=tuple(d.get("tags") or ()),
            data=d["data"],
            cluster=bool(d["cluster"]),
            transient=bool(d["transient"]),
            summary=d.get("summary"),
            line=d.get("line"),
            args=tuple(d.get("args") or ()),
            deps=tuple(d.get("deps") or ()),
        )

    def definition(self) -> VariableDefinition:
        return VariableDefinition(
            name=self.name,
            title=self.title,
            description=self.description,
            units=self.units,
            tags=self.tags,
            data="proc" if self.data == "proc" else "raw",
            cluster=self.cluster,
        )


@dataclass(frozen=True)
class LoadedContext:
    """A context file that loaded and validated, with its variables in evaluation order."""

    source: ContextSource
    variables: dict[str, VarDef] = field(default_factory=dict)

    @property
    def order(self) -> list[str]:
        return list(self.variables)

    def all_deps(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.variables[name].deps)
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(self.variables[dep].deps)
        return seen

    def definitions(self) -> tuple[VariableDefinition, ...]:
        return tuple(v.definition() for v in self.variables.values() if not v.transient)


class ContextProblems(Exception):
    """The context file cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems
        super().__init__("\n".join(format_problem(p) for p in problems))


def format_problem(problem: dict[str, Any]) -> str:
    line = problem.get("line")
    return f"line {line}: {problem['message']}" if line else str(problem["message"])
