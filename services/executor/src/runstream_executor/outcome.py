"""The outcome of one variable in one pass, and DAMNIT's dependency rules.

A dependency is *missing* when it failed, was skipped or returned None. A
missing dependency whose parameter has a default lets the variable run with
the default; otherwise the variable is skipped:

- some missing dependencies have errors -> ``DependencyError`` whose message is
  a tree ("Skipped due to missing dependency:" then ``├``/``└`` lines, a
  nested "(x) skipped" for dependency errors, 3-space indents), or ``Skip``
  with the same text if every one of those errors is a Skip (or an EXtra-data
  ``SourceNameError``);
- they only returned None -> ``Skip("Dependencies returned no data:\\n- 'x'")``.

Glob dependencies pass a dict of the matches that produced data and count as
missing only when none did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .context import VarDef
from .ctxsupport.rs_ctxrunner.api import SKIP_LIKE, DepEntry, dependency_message

Status = Literal["ok", "none", "error"]


@dataclass
class Outcome:
    name: str
    status: Status
    error: str | None = None
    error_cls: str | None = None
    children: tuple[Outcome, ...] = ()
    prepared: dict[str, Any] | None = None
    value: bytes | None = None
    pinned_to: Any = None  # the worker keeping the value (for dependents)
    held_by: Any = None  # the worker keeping the data to store (hold mode)
    duration: float | None = None
    reused: bool = False
    transient: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_cache(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "error_cls": self.error_cls,
            "children": [c.to_cache() for c in self.children],
            "value": self.value,
            "transient": self.transient,
        }

    @classmethod
    def from_cache(cls, d: dict[str, Any]) -> Outcome:
        return cls(
            name=d["name"],
            status=d["status"],
            error=d.get("error"),
            error_cls=d.get("error_cls"),
            children=tuple(cls.from_cache(c) for c in d.get("children") or ()),
            value=d.get("value"),
            transient=bool(d.get("transient")),
            reused=True,
        )


def _entry(dep: Outcome) -> DepEntry:
    return (dep.name, dep.error_cls or "", dep.error or "", tuple(_entry(c) for c in dep.children))


def skipped(name: str, missing: list[Outcome], *, transient: bool = False) -> Outcome:
    """The outcome of ``name`` when ``missing`` dependencies (without defaults) are missing."""
    failed = [d for d in missing if d.status == "error"]
    if failed:
        text = dependency_message(_entry(d) for d in failed)
        if all(d.error_cls in SKIP_LIKE for d in failed):
            return Outcome(name, "error", text, "Skip", transient=transient)
        return Outcome(name, "error", text, "DependencyError", tuple(failed), transient=transient)
    listing = "\n".join(f"- {d.name!r}" for d in missing)
    return Outcome(
        name, "error", f"Dependencies returned no data:\n{listing}", "Skip", transient=transient
    )


InputSpec = tuple[str, Any]


def _spec(dep: Outcome) -> InputSpec:
    if dep.value is not None:
        return ("value", dep.value)
    return ("pinned", dep.name)


def plan_inputs(
    var: VarDef, outcomes: dict[str, Outcome]
) -> tuple[dict[str, InputSpec], set[Any]] | Outcome:
    """Inputs for ``var`` (param -> spec) and the workers holding pinned values, or a skip."""
    inputs: dict[str, InputSpec] = {}
    holders: set[Any] = set()
    missing: list[str] = []
    for arg in var.args:
        if not str(arg["annotation"]).startswith("var#"):
            continue
        param, matches = arg["param"], list(arg["matches"])
        if arg["glob"]:
            good = {m: outcomes[m] for m in matches if outcomes[m].ok}
            if good:
                inputs[param] = ("glob", {m: _spec(o) for m, o in good.items()})
                holders.update(o.pinned_to for o in good.values() if o.value is None)
            elif not arg["has_default"]:
                missing.extend(m for m in matches if m not in missing)
        else:
            dep = outcomes[matches[0]]
            if dep.ok:
                inputs[param] = _spec(dep)
                if dep.value is None:
                    holders.add(dep.pinned_to)
            elif not arg["has_default"] and matches[0] not in missing:
                missing.append(matches[0])
    if missing:
        return skipped(var.name, [outcomes[m] for m in missing], transient=var.transient)
    return inputs, holders
