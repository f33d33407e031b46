"""Load a context file, check it, resolve dependencies and promote data/cluster.

All problems are collected and reported together (with line numbers where the
variable's function is known), instead of stopping at the first one.
"""

from __future__ import annotations

import fnmatch
import graphlib
import traceback
import types
from typing import Any

from .api import ANNOTATION_KINDS, META_FIELDS, MYMDC_FIELDS, RunData, Variable

GLOB_CHARS = frozenset("*?[")


class ContextLoadError(Exception):
    """The context file cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems
        super().__init__("\n".join(format_problem(p) for p in problems))


def format_problem(problem: dict[str, Any]) -> str:
    line = problem.get("line")
    where = f"line {line}: " if line else ""
    return f"{where}{problem['message']}"


def is_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


def _exec_source(source: str, path: str) -> dict[str, Any]:
    module = types.ModuleType("context")
    module.__file__ = path
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ContextLoadError(
            [{"line": exc.lineno, "message": f"SyntaxError: {exc.msg}", "kind": "syntax"}]
        ) from None
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        line = None
        for frame in traceback.extract_tb(exc.__traceback__):
            if frame.filename == path:
                line = frame.lineno
        raise ContextLoadError(
            [{"line": line, "message": f"{type(exc).__name__}: {exc}", "kind": "load"}]
        ) from None
    return module.__dict__


class ContextFile:
    """The variables of one context file, checked, ordered and promoted."""

    def __init__(self, variables: dict[str, Variable], source: str, path: str) -> None:
        self.vars = variables
        self.source = source
        self.path = path
        self.deps: dict[str, dict[str, list[str]]] = {}
        self.order: list[str] = []
        self.data: dict[str, str] = {}
        self.cluster: dict[str, bool] = {}
        self._check_and_resolve()

    @classmethod
    def from_source(cls, source: str, path: str = "context.py") -> ContextFile:
        namespace = _exec_source(source, path)
        variables: dict[str, Variable] = {}
        for value in namespace.values():
            if isinstance(value, Variable) and value.func is not None and value.name:
                variables.setdefault(value.name, value)
        return cls(variables, source, path)

    # -- checking -----------------------------------------------------------------

    def _check_and_resolve(self) -> None:
        problems: list[dict[str, Any]] = []

        def problem(var: Variable | None, message: str) -> None:
            problems.append(
                {"line": var.lineno() if var else None, "message": message, "kind": "check"}
            )

        titles: dict[str, str] = {}
        for name, var in self.vars.items():
            if not all(part.isidentifier() for part in name.split(".")):
                problem(var, f"Variable name {name!r} is not a Python identifier")
            title = var.title or name
            if title in titles:
                problem(
                    var, f"Duplicate title {title!r} (variables {titles[title]!r} and {name!r})"
                )
            else:
                titles[title] = name
            if var.units is not None and (not isinstance(var.units, str) or not var.units):
                problem(var, f"Variable {name!r}: units must be a non-empty string")
            for tag in var.tags:
                if not isinstance(tag, str) or not tag:
                    problem(var, f"Variable {name!r}: tags must be non-empty strings, got {tag!r}")
            for pname, ann in var.annotations().items():
                kind, _, field = ann.partition("#")
                if kind not in ANNOTATION_KINDS or not _:
                    problem(var, f"Variable {name!r}: unknown annotation {ann!r} on {pname!r}")
                elif kind == "meta" and field not in META_FIELDS:
                    problem(var, f"Variable {name!r}: unknown meta field {ann!r}")
                elif kind == "mymdc" and field not in MYMDC_FIELDS:
                    problem(var, f"Variable {name!r}: unknown mymdc field {ann!r}")
                elif kind == "self":
                    problem(var, f"Variable {name!r}: self# is only valid inside a Group")

        # Dependencies: name or pattern -> matching variables.
        for name, var in self.vars.items():
            resolved: dict[str, list[str]] = {}
            for pname, target in var.arg_dependencies().items():
                if is_glob(target):
                    matches = [n for n in self.vars if fnmatch.fnmatchcase(n, target)]
                else:
                    matches = [target] if target in self.vars else []
                if not matches:
                    problem(
                        var, f"Missing dependency: {name!r} needs var#{target}, no such variable"
                    )
                resolved[pname] = matches
            self.deps[name] = resolved

        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for name in self.vars:
            sorter.add(name, *self.direct_deps(name))
        try:
            self.order = list(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = exc.args[1] if len(exc.args) > 1 else []
            problem(None, f"CycleError: cyclical dependencies: {' -> '.join(map(str, cycle))}")
            self.order = list(self.vars)

        if not any(p["message"].startswith("CycleError") for p in problems):
            for name in self.order:
                var = self.vars[name]
                deps = self.direct_deps(name)
                data = var.data.value
                if any(self.data.get(d) == "proc" for d in deps):
                    if var.data_explicit and var.data is RunData.RAW:
                        problem(
                            var,
                            f"Variable {name!r} is data='raw' but depends on proc data "
                            f"({', '.join(d for d in deps if self.data.get(d) == 'proc')})",
                        )
                    data = "proc"
                self.data[name] = data
                self.cluster[name] = var.cluster or any(self.cluster.get(d) for d in deps)
        if problems:
            raise ContextLoadError(problems)

    def direct_deps(self, name: str) -> list[str]:
        out: list[str] = []
        for matches in self.deps.get(name, {}).values():
            for m in matches:
                if m not in out:
                    out.append(m)
        return out

    def all_deps(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.direct_deps(name))
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(self.direct_deps(dep))
        return seen

    def definitions(self) -> list[dict[str, Any]]:
        """Plain-data description of every variable, in evaluation order."""
        out = []
        for name in self.order:
            var = self.vars[name]
            annotations = var.annotations()
            defaults = var.defaults()
            out.append(
                {
                    "name": name,
                    "title": var.title or name,
                    "description": var.description,
                    "units": var.units,
                    "tags": list(var.tags),
                    "data": self.data[name],
                    "cluster": self.cluster[name],
                    "transient": var.transient,
                    "summary": var.summary,
                    "line": var.lineno(),
                    "args": [
                        {
                            "param": pname,
                            "annotation": ann,
                            "has_default": pname in defaults,
                            "matches": self.deps[name].get(pname, []),
                            "glob": ann.startswith("var#") and is_glob(ann[4:]),
                        }
                        for pname, ann in annotations.items()
                    ],
                    "deps": self.direct_deps(name),
                }
            )
        return out
