"""``Pipeline``: choose variables and groups and run them in this process (DAMNIT 0.4).

A pipeline holds a compiled, checked ``ContextFile``. Build one from a context
file (``from_context_file``/``from_str``) or from items (``add``: variables,
group instances, ``dict[str, Group]`` naming groups, nested sequences); combine
(``union``), narrow (``select``, keeping dependencies), change its run
(``with_context``) and ``execute`` it. Pipelines may be nested inside a variable.

Inside a context file, ``Pipeline.default().add(...)`` adds items to what the
file contributes, and ``Pipeline.set_default(p)`` makes ``p`` the whole context.
That state lives in a context variable scoped to one load, so nested and
sequential loads do not see each other's and an exception leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import GroupError, RunData, Variable, is_group_instance

log = logging.getLogger("rs_ctxrunner")

ADD_TYPES = (
    "Pipeline.add accepts Variable or Group instances (or dict[str, Group], or sequences of them)"
)


@dataclass
class _DefaultState:
    pipeline: Pipeline
    explicit: bool = False
    used: bool = False


_DEFAULT: contextvars.ContextVar[_DefaultState | None] = contextvars.ContextVar(
    "rs_default_pipeline", default=None
)


@contextlib.contextmanager
def pipeline_scope() -> Iterator[_DefaultState]:
    """A fresh default pipeline for one context load; the previous one afterwards."""
    token = _DEFAULT.set(_DefaultState(Pipeline(name="default")))
    try:
        state = _DEFAULT.get()
        assert state is not None
        yield state
    finally:
        _DEFAULT.reset(token)


def _state() -> _DefaultState:
    state = _DEFAULT.get()
    if state is None:
        state = _DefaultState(Pipeline(name="default"))
        _DEFAULT.set(state)
    return state


def _flatten(items: Sequence[Any]) -> list[Any]:
    out: list[Any] = []

    def reject(item: Any) -> None:
        raise TypeError(f"{ADD_TYPES}; got {type(item)!r}")

    def visit(item: Any) -> None:
        if isinstance(item, Variable) or is_group_instance(item):
            out.append(item)
        elif isinstance(item, str | bytes | bytearray):
            reject(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if is_group_instance(value):
                    if value.name is None:
                        value.name = key
                    out.append(value)
                elif isinstance(value, Variable):
                    out.append(value)
                elif isinstance(value, dict):
                    visit(value)
                else:
                    reject(item)
        elif isinstance(item, Sequence):
            for sub in item:
                visit(sub)
        else:
            reject(item)

    for item in items:
        visit(item)
    return out


def _compile(
    variables: dict[str, Variable],
    groups: list[Any],
    source: str,
    path: str,
    *,
    damnit: bool = True,
) -> Any:
    """A checked ContextFile of ``variables`` plus the groups' variables.

    Problems raise what DAMNIT raises (``damnit``), or the loader's
    ``ContextLoadError`` listing every problem.
    """
    from .groups import check_unique, expand_groups, group_name
    from .loader import ContextFile, ContextLoadError

    variables = dict(variables)
    if groups:
        for group in groups:
            group_name(group)
        check_unique(groups)
        variables.update(expand_groups({g.name: g for g in groups}, variables))
    try:
        return ContextFile(variables, source, path)
    except ContextLoadError as exc:
        if not damnit:
            raise
        raise exc.damnit_exception() from None


class Pipeline:
    """Select and execute a set of variables and groups with one run context."""

    def __init__(
        self,
        proposal: int | None = None,
        run_number: int | None = None,
        *,
        name: str | None = None,
        data: Any = None,
        run_data: RunData | str | None = None,
        param_values: dict[str, Any] | None = None,
        _context: Any = None,
    ) -> None:
        self._name = name
        self.proposal = proposal
        self.run_number = run_number
        self.data = data
        self.run_data = RunData.ALL if run_data is None else RunData(run_data)
        self.param_values = dict(param_values or {})
        self._context = _context
        self._results: Any = None

    # -- the default pipeline of a context file ------------------------------------------

    @classmethod
    def default(cls) -> Pipeline:
        """The pipeline of the context file being loaded (its module items are added to it)."""
        state = _state()
        state.used = True
        return state.pipeline

    @classmethod
    def set_default(cls, pipeline: Pipeline) -> Pipeline:
        """Make ``pipeline`` the whole context of the file being loaded."""
        if not isinstance(pipeline, Pipeline):
            raise TypeError("Pipeline.set_default expects a Pipeline instance")
        state = _state()
        state.pipeline, state.explicit, state.used = pipeline, True, True
        return pipeline

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_str(cls, code: str, *, path: str = "<string>", name: str | None = None) -> Pipeline:
        from .loader import ContextFile, ContextLoadError

        try:
            ctx = ContextFile.from_source(code, path)
        except ContextLoadError as exc:
            raise exc.damnit_exception() from None
        return cls(name=name, _context=ctx)

    @classmethod
    def from_context_file(cls, path: str | Path, *, name: str | None = None) -> Pipeline:
        path = Path(path)
        return cls.from_str(path.read_text(), path=str(path.absolute()), name=name)

    def copy(self) -> Pipeline:
        return Pipeline(
            self.proposal,
            self.run_number,
            name=self._name,
            data=self.data,
            run_data=self.run_data,
            param_values=dict(self.param_values),
            _context=self._context,
        )

    def add(self, *items: Any) -> Pipeline:
        """Add variables and group instances (or dicts of groups, or sequences of them)."""
        return self._add(items)

    def _add(
        self,
        items: Sequence[Any],
        *,
        damnit: bool = True,
        source: str | None = None,
        path: str | None = None,
    ) -> Pipeline:
        flat = _flatten(items)
        base = self._context
        variables = dict(base.vars) if base is not None else {}
        groups = []
        for item in flat:
            if isinstance(item, Variable):
                known = variables.get(item.name or "")
                if known is not None and known is not item:
                    raise GroupError(f"Duplicate variable name {item.name!r}")
                variables[item.name or ""] = item
            else:
                groups.append(item)
        if source is None:
            source = base.source if base is not None else ""
        if path is None:
            path = base.path if base is not None else "<pipeline>"
        self._context = _compile(variables, groups, source, path, damnit=damnit)
        self._results = None
        return self

    def compiled(self, source: str, path: str, items: Sequence[Any] = ()) -> Any:
        """This pipeline's context plus ``items``, as the context file at ``path``.

        For the loader: problems raise its ``ContextLoadError`` listing all of them.
        """
        return self._add(items, damnit=False, source=source, path=path).context

    def union(self, other: Pipeline, *, on_conflict: str = "error") -> Pipeline:
        """Variables of both (the same object once); same names: error, left or right wins."""
        if not isinstance(other, Pipeline):
            raise TypeError("Pipeline.union expects a Pipeline instance")
        if on_conflict not in ("error", "left", "right"):
            raise ValueError("on_conflict must be 'error', 'left', or 'right'")
        left = self.context
        variables = dict(left.vars)
        for name, var in other.context.vars.items():
            known = variables.get(name)
            if known is None or known is var:
                variables[name] = var
            elif on_conflict == "error":
                raise GroupError(f"Duplicate variable name {name!r}")
            elif on_conflict == "right":
                variables[name] = var
        merged = self.copy()
        merged._context = _compile(variables, [], left.source, left.path)
        return merged

    def with_context(
        self,
        *,
        name: str | None = None,
        proposal: int | None = None,
        run_number: int | None = None,
        run_data: RunData | str | None = None,
        data: Any = None,
        param_values: dict[str, Any] | None = None,
    ) -> Pipeline:
        """A copy with these run-context fields replaced (the original is unchanged)."""
        new = self.copy()
        if name is not None:
            new._name = name
        if proposal is not None:
            new.proposal = proposal
        if run_number is not None:
            new.run_number = run_number
        if run_data is not None:
            new.run_data = RunData(run_data)
        if data is not None:
            new.data = data
        if param_values is not None:
            new.param_values = dict(param_values)
        return new

    def select(
        self,
        *,
        variables: Sequence[str] = (),
        match: Sequence[str] = (),
        run_data: RunData | str | None = None,
        cluster: bool | None = None,
    ) -> Pipeline:
        """A copy with only the selected variables and their dependencies.

        ``variables``: exact names; ``match``: case-insensitive substrings of titles.
        """
        selected = self.copy()
        run_data = RunData.ALL if run_data is None else RunData(run_data)
        selected._context = self.context.filter(
            run_data=run_data, cluster=cluster, name_matches=match, variables=variables
        )
        return selected

    # -- running -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        parts = [*self.param_values, str(self.proposal), str(self.run_number)]
        if self._context is not None:
            parts += list(self._context.vars)
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]

    def execute(self, *, data: Any = None, param_values: dict[str, Any] | None = None) -> Any:
        """Evaluate the variables for one run; returns ``Results`` (``.cells``, ``.errors``).

        The run is ``data`` (or the pipeline's ``data``), else EXtra-data's
        ``open_run(proposal, run_number)``: proc variables are dropped with a
        warning if the run has no proc data.
        """
        if self.proposal is None or self.run_number is None:
            raise ValueError("proposal and run_number must be set")
        ctx = self.context
        run = data if data is not None else self.data
        if run is None:
            ctx, run = self._open_run(ctx)
        params = {**self.param_values, **(param_values or {})}
        self._results = ctx.execute(run, self.run_number, self.proposal, params, label=self.name)
        return self._results

    def _open_run(self, ctx: Any) -> tuple[Any, Any]:
        import extra_data

        if any(ctx.data[n] == "proc" for n in ctx.vars):
            try:
                extra_data.open_run(self.proposal, self.run_number, data="proc")
            except FileNotFoundError:
                log.warning("Proc data is unavailable, only raw variables will be executed.")
                ctx = ctx.filter(run_data=RunData.RAW)
        kind = "raw" if self.run_data is RunData.RAW else "all"
        return ctx, extra_data.open_run(self.proposal, self.run_number, data=kind)

    @property
    def results(self) -> Any:
        """The ``Results`` of the last ``execute()`` (None after a change)."""
        return self._results

    @property
    def context(self) -> Any:
        if self._context is None:
            self._context = _compile({}, [], "", "<pipeline>")
        return self._context

    @property
    def vars(self) -> dict[str, Variable]:
        return dict(self.context.vars)

    def vars_to_dict(self, inc_transient: bool = False) -> dict[str, dict[str, Any]]:
        return dict(self.context.vars_to_dict(inc_transient=inc_transient))

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r}: {len(self.context.vars)} variables>"


__all__ = ["Pipeline", "pipeline_scope"]
