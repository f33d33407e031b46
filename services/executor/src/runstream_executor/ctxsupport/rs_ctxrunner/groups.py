"""``@Group``: reusable sets of variables, with DAMNIT 0.4's semantics.

A group class becomes a keyword-only dataclass with four reserved fields
(``name``, ``title``, ``tags``, ``sep``). Each instance contributes its
``@Variable`` methods as ``{group.name}.{var}``, titled
``{group.title}{sep}{var.title}``, tagged with the union of group and variable
tags. ``self#x`` annotations become ``var#`` links inside the instance, through
linked group instances or to ``Variable`` fields; a link through an optional
component that is ``None`` becomes a transient placeholder
``{group}.__missing__.{path}`` that returns None, so its dependents use their
defaults or are skipped.

Names come from ``name=`` or from the context file's assignment; a nested group
is named by its attribute path (``outer.inner``), the shortest path winning.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import sys
import types
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from .api import (
    GROUP_MARK,
    BoundVariable,
    GroupError,
    Variable,
    is_group_instance,
    normalize_tags,
    string_annotations,
)

RESERVED = {"name": None, "title": None, "tags": None, "sep": "/"}
GLOB_CHARS = "*?["
_GLOB_RE = re.compile(r"[!?*\[\]]")


def _inherited_tags(cls: type) -> Any:
    for base in cls.__mro__[1:]:
        config = base.__dict__.get(GROUP_MARK)
        if isinstance(config, dict):
            return config["tags"]
    return None


def _decorate(cls: type, tags: Any) -> type:
    own_annotations = dict(inspect.get_annotations(cls))
    clash = sorted(set(RESERVED) & set(own_annotations))
    if clash:
        raise GroupError(f"Group classes cannot define reserved fields: {', '.join(clash)}")
    clash = sorted(set(RESERVED) & set(cls.__dict__))
    if clash:
        raise GroupError(f"Group classes cannot override reserved attributes: {', '.join(clash)}")
    default_tags = normalize_tags(_inherited_tags(cls) if tags is None else tags)
    setattr(cls, GROUP_MARK, {"tags": default_tags})
    own_annotations.update({"name": str | None, "title": str | None, "tags": Any, "sep": str})
    cls.__annotations__ = own_annotations
    for field_name, default in (*RESERVED.items(), ("tags", default_tags)):
        setattr(cls, field_name, dataclasses.field(default=default, kw_only=True))
    user_post_init = getattr(cls, "__post_init__", None)  # a decorated parent's included

    def __post_init__(self: Any) -> None:
        self.tags = normalize_tags(self.tags)
        if self.title is None:
            self.title = self.name
        if user_post_init is not None:
            user_post_init(self)

    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    # dataclass() reads the defining module for string annotations; a context file's
    # module is not in sys.modules (it is executed, not imported).
    stand_in = cls.__module__ not in sys.modules
    if stand_in:
        sys.modules[cls.__module__] = types.ModuleType(cls.__module__)
    try:
        return dataclasses.dataclass(cls, kw_only=True)
    finally:
        if stand_in:
            del sys.modules[cls.__module__]


def Group(cls: type | None = None, *, tags: str | Iterable[str] | None = None) -> Any:
    """Decorate a class as a group: ``@Group`` or ``@Group(tags=...)``.

    Subclasses must be decorated too; they inherit the decorator's tags unless
    they give their own. An instance's ``tags=`` replaces the decorator's.
    """

    def wrap(klass: type) -> type:
        return _decorate(klass, tags)

    return wrap if cls is None else wrap(cls)


# -- naming ------------------------------------------------------------------------


def group_name(group: Any) -> str:
    name = group.name
    if isinstance(name, str) and name:
        return name
    kind = type(group).__name__
    if name is None:
        raise GroupError(
            f"Group instance of {kind!r} has no name. "
            "Provide name=... or assign it to a variable in the context file."
        )
    raise GroupError(
        f"Group instance of {kind!r} has invalid name {name!r}. Provide a non-empty string name."
    )


def _children(group: Any) -> list[tuple[str, Any]]:
    return [(attr, value) for attr, value in vars(group).items() if is_group_instance(value)]


def assign_names(namespace: Mapping[str, Any]) -> None:
    """Name unnamed groups by assignment or attribute path (shortest path wins)."""
    best: dict[int, tuple[Any, int, set[str]]] = {}  # id -> (group, depth, paths)
    queue: deque[tuple[Any, str, int]] = deque()

    def offer(group: Any, path: str, depth: int) -> None:
        known = best.get(id(group))
        if known is None or depth < known[1]:
            best[id(group)] = (group, depth, {path})
            queue.append((group, path, depth))
        elif depth == known[1]:
            known[2].add(path)

    for key, value in namespace.items():
        if is_group_instance(value) and not key.startswith("__"):
            offer(value, value.name or key, 0)
    expanded: set[tuple[int, int]] = set()
    while queue:
        group, path, depth = queue.popleft()
        if best[id(group)][1] != depth or (id(group), depth) in expanded:
            continue
        expanded.add((id(group), depth))
        for attr, child in _children(group):
            offer(child, f"{group.name or path}.{attr}", depth + 1)
    for group, _, paths in best.values():
        if group.name is None:
            if len(paths) > 1:
                raise GroupError(
                    f"Group instance of {type(group).__name__!r} is assigned "
                    f"to multiple names {sorted(paths)} without an explicit name."
                )
            group.name = next(iter(paths))
        if group.title is None:
            group.title = group.name.replace(".", group.sep)


def collect_groups(objects: Iterable[Any]) -> list[Any]:
    """Every group instance among ``objects`` and linked from them, each checked for a name."""
    todo = [obj for obj in objects if is_group_instance(obj)]
    found: dict[int, Any] = {}
    while todo:
        group = todo.pop()
        if id(group) in found:
            continue
        group_name(group)
        found[id(group)] = group
        todo.extend(child for _, child in _children(group))
    return list(found.values())


def check_unique(groups: Iterable[Any]) -> None:
    owners: dict[str, int] = {}
    for group in groups:
        if owners.setdefault(group.name, id(group)) != id(group):
            raise GroupError(f"Group name {group.name!r} is used by multiple group instances")


# -- expansion ------------------------------------------------------------------------


def _class_variables(group: Any) -> dict[str, Variable]:
    found: dict[str, Variable] = {}
    for klass in reversed(type(group).__mro__):
        for attr, value in klass.__dict__.items():
            if isinstance(value, Variable):
                found[attr] = value
    return found


# No annotations: every string annotation of a variable's function means something.
_returns_none = eval("lambda run: None")


def _placeholder(group: Any, path: str) -> Variable:
    """The transient stand-in for a link through an optional component that is None."""
    var = Variable(transient=True)
    var(_returns_none)
    safe = _GLOB_RE.sub("_", path)  # no glob characters in a variable name
    var.name = f"{group.name}.__missing__.{safe}"
    var.title = var.name
    var.description = None
    var._placeholder = True
    return var


def resolve_self(path: str, group: Any) -> tuple[str, Variable | None]:
    """``self#path`` of ``group`` -> (``var#`` annotation, placeholder to add or None)."""
    head, _, rest = path.partition(".")
    if rest:
        linked = getattr(group, head)  # AttributeError names the missing attribute
        if linked is None:
            placeholder = _placeholder(group, path)
            return f"var#{placeholder.name}", placeholder
        return resolve_self(rest, linked)
    try:
        target = getattr(group, head)
    except AttributeError:
        if any(c in head for c in GLOB_CHARS):  # resolved against all names later
            return f"var#{group.name}.{head}", None
        raise GroupError(
            f"Attribute {head!r} on group {group.name!r} does not exist, "
            "but is referenced as a dependency in annotation."
        ) from None
    if target is None:
        placeholder = _placeholder(group, head)
        return f"var#{placeholder.name}", placeholder
    if not isinstance(target, Variable | BoundVariable):
        raise GroupError(
            f"Attribute {head!r} on group {group.name!r} is of type "
            f"{type(target).__name__!r}, but a Variable is required for a self# dependency."
        )
    return f"var#{target.name}", None


def expand_group(group: Any) -> dict[str, Variable]:
    """This instance's variables (and placeholders), bound to it and renamed."""
    if group.title is None:
        group.title = group.name
    out: dict[str, Variable] = {}
    for var in _class_variables(group).values():
        assert var.func is not None
        bound = var.func.__get__(group, type(group))
        new = copy.copy(var)
        new.func = bound
        new.name = f"{group.name}.{var.name}"
        new.title = f"{group.title}{group.sep}{var.title}"
        new.tags = tuple(sorted(set(group.tags) | set(var.tags)))
        annotations: dict[str, str] = {}
        for pname, ann in string_annotations(bound).items():
            if ann.startswith("self#"):
                ann, placeholder = resolve_self(ann[len("self#") :], group)
                if placeholder is not None:
                    out[placeholder.name or ""] = placeholder
            annotations[pname] = ann
        new._annotation_overrides = annotations
        out[new.name] = new
    return out


def expand_groups(
    namespace: Mapping[str, Any], existing: Mapping[str, Variable] | None = None
) -> dict[str, Variable]:
    """The variables of every group in ``namespace`` (named here), checked for clashes."""
    assign_names(namespace)
    groups = collect_groups(namespace.values())
    check_unique(groups)
    taken = set(existing or {})
    out: dict[str, Variable] = {}
    for group in groups:
        variables = expand_group(group)
        for name in variables:
            if name in taken or name in out:
                raise GroupError(f"Duplicate variable name {name!r} from group {group.name!r}")
        out.update(variables)
    return out


__all__ = [
    "Group",
    "assign_names",
    "check_unique",
    "collect_groups",
    "expand_group",
    "expand_groups",
    "group_name",
    "resolve_self",
]
