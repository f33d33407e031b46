"""Load a context file, check it, resolve dependencies and promote data/cluster.

All problems are collected and reported together (with line numbers where the
variable's function is known), instead of stopping at the first one.
"""

from __future__ import annotations

import fnmatch
import graphlib
import os
import traceback
import types
from collections.abc import Callable, Iterable
from typing import Any

from .api import (
    ANNOTATION_KINDS,
    META_FIELDS,
    MYMDC_FIELDS,
    ContextFileErrors,
    RunData,
    Variable,
    is_group_instance,
)
from .groups import assign_names, expand_groups

GLOB_CHARS = frozenset("*?[")


_Problem = Callable[..., None]  # problem(variable or None, message, kind="check")


class ContextLoadError(Exception):
    """The context file cannot be used; ``problems`` lists every reason.

    ``cause`` is the exception that stopped loading (the context code raised, a
    group is misused), if one did; ``damnit_exception()`` is what DAMNIT's
    ``Pipeline.from_str`` would raise for these problems.
    """

    def __init__(self, problems: list[dict[str, Any]], cause: BaseException | None = None) -> None:
        self.problems = problems
        self.cause = cause
        super().__init__("\n".join(format_problem(p) for p in problems))

    def damnit_exception(self) -> BaseException:
        if self.cause is not None:
            return self.cause
        by_kind = {p.get("kind"): p["message"] for p in self.problems}
        if "cycle" in by_kind:
            return graphlib.CycleError(by_kind["cycle"].removeprefix("CycleError: "))
        if "dependency" in by_kind:
            return KeyError(by_kind["dependency"])
        return ContextFileErrors(p["message"] for p in self.problems)


def format_problem(problem: dict[str, Any]) -> str:
    line = problem.get("line")
    where = f"line {line}: " if line else ""
    return f"{where}{problem['message']}"


def is_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


def _line_in(exc: BaseException, path: str) -> int | None:
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == path:
            line = frame.lineno
    return line


def _failure(exc: BaseException, path: str, kind: str) -> ContextLoadError:
    message = f"{type(exc).__name__}: {exc}"
    return ContextLoadError([{"line": _line_in(exc, path), "message": message, "kind": kind}], exc)


def _exec_source(source: str, path: str) -> tuple[dict[str, Any], Any]:
    """Run the context code; returns its namespace and the default-pipeline state."""
    module = types.ModuleType("context")
    module.__file__ = path
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ContextLoadError(
            [{"line": exc.lineno, "message": f"SyntaxError: {exc.msg}", "kind": "syntax"}], exc
        ) from None
    from .pipeline import pipeline_scope

    try:
        with pipeline_scope() as state:
            exec(code, module.__dict__)
    except Exception as exc:
        raise _failure(exc, path, "load") from None
    return module.__dict__, state


class ContextFile:
    """The variables of one context file, checked, ordered and promoted.

    Variables are never modified: promotion (``data`` to proc, ``cluster``
    through dependents) is kept in ``data`` and ``cluster``.
    """

    def __init__(self, variables: dict[str, Variable], source: str, path: str) -> None:
        self.vars = variables
        self.source = source
        self.path = path
        self.deps: dict[str, dict[str, list[str]]] = {}
        self.order: list[str] = []
        self.data: dict[str, str] = {}
        self.cluster: dict[str, bool] = {}
        self._check_and_resolve()

    @property
    def code(self) -> str:
        return self.source

    @classmethod
    def from_source(cls, source: str, path: str = "context.py") -> ContextFile:
        """Run a context file's code and collect its variables and groups.

        Module-level variables and group instances are collected, unless the code
        used ``Pipeline.default()`` (then it and the module's items) or
        ``Pipeline.set_default(p)`` (then only ``p``).
        """
        namespace, state = _exec_source(source, path)
        variables = {
            v.name: v
            for v in list(namespace.values())
            if isinstance(v, Variable) and v.func is not None and v.name
        }
        try:
            if not state.used:
                variables.update(expand_groups(namespace, variables))
                return cls(variables, source, path)
            assign_names(namespace)
            items: list[Any] = []
            if not state.explicit:
                groups = [v for v in namespace.values() if is_group_instance(v)]
                items = [*variables.values(), *groups]
            context: ContextFile = state.pipeline.compiled(source, path, items)
            return context
        except ContextLoadError:
            raise
        except Exception as exc:  # GroupError, AttributeError of a self# link, ...
            raise _failure(exc, path, "group") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ContextFile:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        return cls.from_source(source, os.path.abspath(path))

    # -- checking -----------------------------------------------------------------

    def _check_and_resolve(self) -> None:
        problems: list[dict[str, Any]] = []

        def problem(var: Variable | None, message: str, kind: str = "check") -> None:
            problems.append(
                {"line": var.lineno() if var else None, "message": message, "kind": kind}
            )

        self._check_variables(problem)
        self._resolve_dependencies(problem)
        if self._order(problem):
            self._propagate_data_and_cluster(problem)
        if problems:
            raise ContextLoadError(problems)

    def _check_variables(self, problem: _Problem) -> None:
        """Names, unique titles, units, tags and argument annotations."""
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
            self._check_annotations(name, var, problem)

    @staticmethod
    def _check_annotations(name: str, var: Variable, problem: _Problem) -> None:
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

    def _resolve_dependencies(self, problem: _Problem) -> None:
        """Dependencies: name or pattern -> matching variables."""
        for name, var in self.vars.items():
            resolved: dict[str, list[str]] = {}
            for pname, target in var.arg_dependencies().items():
                if is_glob(target):
                    matches = [n for n in self.vars if fnmatch.fnmatchcase(n, target)]
                else:
                    matches = [target] if target in self.vars else []
                if not matches:
                    problem(
                        var,
                        f"Missing dependency: {name!r} needs var#{target}, no such variable",
                        "dependency",
                    )
                resolved[pname] = matches
            self.deps[name] = resolved

    def _order(self, problem: _Problem) -> bool:
        """Evaluation order, dependencies first; False (and a problem) on a cycle."""
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for name in self.vars:
            sorter.add(name, *self.direct_deps(name))
        try:
            self.order = list(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = exc.args[1] if len(exc.args) > 1 else []
            problem(
                None,
                f"CycleError: cyclical dependencies: {' -> '.join(map(str, cycle))}",
                "cycle",
            )
            self.order = list(self.vars)
            return False
        return True

    def _propagate_data_and_cluster(self, problem: _Problem) -> None:
        """A variable depending on proc data is proc; on a cluster variable, cluster."""
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

    # -- DAMNIT's ContextFile interface ------------------------------------------------

    def check(self) -> None:
        """Nothing to do: a ContextFile is checked when it is made (DAMNIT compatibility)."""

    def ordered_vars(self) -> tuple[str, ...]:
        return tuple(self.order)

    def all_dependencies(self, *variables: Variable) -> set[str]:
        out: set[str] = set()
        for var in variables:
            out |= self.all_deps(var.name or "")
        return out

    def filter(
        self,
        run_data: RunData | str = RunData.ALL,
        cluster: bool | None = None,
        name_matches: Iterable[str] = (),
        variables: Iterable[str] = (),
    ) -> ContextFile:
        """The selected variables plus everything they depend on (see ``select_names``)."""
        candidates = [(n, self.data[n], self.cluster[n], v.title) for n, v in self.vars.items()]
        keep = select_names(
            candidates, self.all_deps, RunData(run_data).value, variables, name_matches, cluster
        )
        return ContextFile(
            {n: self.vars[n] for n in self.vars if n in keep}, self.source, self.path
        )

    def vars_to_dict(self, inc_transient: bool = False) -> dict[str, dict[str, Any]]:
        """Variable metadata as DAMNIT stores it (transient variables only if asked)."""
        return {
            name: {
                "title": var.title,
                "description": var.description,
                "tags": var.tags,
                "attributes": None,
                "type": None,
            }
            for name, var in self.vars.items()
            if inc_transient or not var.transient
        }

    def execute(
        self,
        run: Any,
        run_number: int,
        proposal: int,
        param_values: dict[str, Any] | None = None,
        *,
        label: str = "",
    ) -> Any:
        """Evaluate every variable in this process, in order (DAMNIT's ``execute``)."""
        from .inprocess import execute

        return execute(self, run, run_number, proposal, param_values or {}, label=label)

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


# (name, data after promotion, cluster after promotion, title) of one variable
Candidate = tuple[str, str, bool, str | None]


def select_names(
    candidates: Iterable[Candidate],
    all_deps: Callable[[str], set[str]],
    data: str,
    names: Iterable[str] = (),
    match: Iterable[str] = (),
    cluster: bool | None = None,
) -> set[str]:
    """Names to evaluate: the selection plus every dependency of it (DAMNIT's filter).

    ``data`` raw/proc keeps variables of that kind, all keeps every one;
    ``cluster`` keeps only (non-)cluster ones. ``names`` are exact variable names,
    ``match`` case-insensitive substrings of **titles** only (DAMNIT's ``--match``);
    a variable is selected if either selects it, every one if both are empty.
    """
    names = tuple(names)
    match = tuple(m.lower() for m in match)
    chosen: set[str] = set()
    for name, kind, is_cluster, title in candidates:
        if data in ("raw", "proc") and kind != data:
            continue
        if cluster is not None and is_cluster != cluster:
            continue
        if (names or match) and not (
            name in names or any(m in (title or name).lower() for m in match)
        ):
            continue
        chosen.add(name)
    closure = set(chosen)
    for name in chosen:
        closure |= all_deps(name)
    return closure
