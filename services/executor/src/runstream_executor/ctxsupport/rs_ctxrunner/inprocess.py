"""Evaluate a ContextFile in this process, one variable after another (``Pipeline.execute``).

The service evaluates variables in warm workers instead (``engine``); both follow
DAMNIT's rules (damnit.md §1.2, §1.7): a variable that raises loses only its own
result; a dependency that failed, was skipped or returned None is *missing*, and
a dependent without a default for it is skipped with a ``DependencyError`` tree,
a ``Skip`` (when every missing dependency was skipped) or ``Skip("Dependencies
returned no data: ...")``. Transient results reach dependents but are not kept,
nor are their errors.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .api import SKIP_LIKE, Cell, DependencyError, Skip, Variable

log = logging.getLogger("rs_ctxrunner")


class Results:
    """What one execution produced: ``cells`` (name -> Cell) and ``errors`` (name -> exception)."""

    def __init__(self, cells: dict[str, Any], errors: dict[str, BaseException], ctx: Any) -> None:
        self.cells = cells
        self.errors = errors
        self.ctx = ctx

    def save(self, damnit_dir: str | os.PathLike[str], proposal: int, run: int) -> Path:
        """Write DAMNIT's per-run layout to ``<damnit_dir>/extracted_data/p{P}_r{R}.*.h5``.

        A value that cannot be stored becomes that variable's error in the file.
        """
        from . import h5write
        from .prepare import prepare

        folder = Path(damnit_dir) / "extracted_data"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"p{proposal}_r{run}.", suffix=".writing.h5", dir=folder)
        os.close(fd)
        stored: dict[str, dict[str, Any]] = {}
        errors = {n: (str(e), type(e).__name__) for n, e in self.errors.items()}
        start = self.cells.get("start_time")
        for name, cell in self.cells.items():
            if name == "start_time" or cell.data is None:
                continue
            try:
                stored[name] = prepare(self.ctx.vars[name], cell)
            except Exception as exc:
                errors[name] = (str(exc), type(exc).__name__)
        h5write.write_file(
            tmp, stored, errors, start_time=None if start is None else float(start.data)
        )
        final = Path(tmp.removesuffix(".writing.h5") + ".ready.h5")
        os.replace(tmp, final)
        return final


def _start_time(run: Any) -> float:
    if _is_data_collection(run):
        from .runs import run_start_time

        found = run_start_time(run)
        if found is not None:
            return found
    return time.time()


def _is_data_collection(run: Any) -> bool:
    reader = sys.modules.get("extra_data.reader")
    cls = getattr(reader, "DataCollection", None)
    return isinstance(cls, type) and isinstance(run, cls)


def _proposal_path(run: Any) -> Any:
    if not _is_data_collection(run):
        return ""
    return Path(*Path(run.files[0].filename).parts[:-3])


class _Metadata:
    """``mymdc#`` fields through ``extra_proposal``, looked up once per execution."""

    def __init__(self, proposal: int, run_number: int) -> None:
        self.proposal, self.run_number = proposal, run_number
        self._run: Any = None

    def get(self, field: str) -> Any:
        if self._run is None:
            try:
                import extra_proposal
            except ImportError:
                raise RuntimeError(
                    f"mymdc#{field}: extra_proposal is not installed in this environment"
                ) from None
            self._run = extra_proposal.Proposal(self.proposal)[self.run_number]
        return getattr(self._run, field)()


class _Run:
    """The state of one execution."""

    def __init__(self, ctx: Any, run: Any, run_number: int, proposal: int, params: dict[str, Any]):
        self.ctx, self.run, self.run_number, self.proposal = ctx, run, run_number, proposal
        self.params = params
        self.values: dict[str, Any] = {}  # dependency values (None results are left out)
        self.errors: dict[str, BaseException] = {}
        self.metadata = _Metadata(proposal, run_number)

    def arguments(self, name: str, var: Variable) -> tuple[dict[str, Any], list[str], list[str]]:
        """Keyword arguments, missing dependencies and missing parameters of ``var``."""
        from .loader import is_glob

        kwargs: dict[str, Any] = {}
        missing: list[str] = []
        no_value: list[str] = []
        defaults = var.defaults()
        for param, ann in var.annotations().items():
            kind, _, field = ann.partition("#")
            if kind == "var":
                matches = self.ctx.deps[name].get(param, [])
                present = [m for m in matches if m in self.values]
                if is_glob(field) and present:
                    kwargs[param] = {m: self.values[m] for m in present}
                elif not is_glob(field) and present:
                    kwargs[param] = self.values[field]
                elif param not in defaults:
                    missing.extend(m for m in matches if m not in missing)
            elif kind == "param":
                if field in self.params:
                    kwargs[param] = self.params[field]
                elif param not in defaults:
                    no_value.append(ann)
            elif kind == "mymdc":
                kwargs[param] = self.metadata.get(field)
            elif ann == "meta#run_number":
                kwargs[param] = self.run_number
            elif ann == "meta#proposal":
                kwargs[param] = self.proposal
            elif ann == "meta#proposal_path":
                kwargs[param] = _proposal_path(self.run)
            else:
                raise RuntimeError(f"Unknown path {ann!r} for variable {var.title!r}")
        return kwargs, missing, no_value

    def skipped(self, missing: list[str]) -> Exception:
        failed = [(dep, self.errors[dep]) for dep in missing if dep in self.errors]
        if not failed:
            listing = "".join(f"\n- {dep!r}" for dep in missing)
            return Skip(f"Dependencies returned no data:{listing}")
        error = DependencyError(failed)
        if all(type(exc).__name__ in SKIP_LIKE for _, exc in failed):
            return Skip(str(error))
        return error


def _evaluate(var: Variable, run: Any, kwargs: dict[str, Any]) -> Any:
    assert var.func is not None
    value = var.func(run, **kwargs)
    if var.transient:
        return value if isinstance(value, Cell) else _Transient(value)
    cell = value if isinstance(value, Cell) else Cell(value)
    if cell.summary is None:
        cell.summary = var.summary
    if cell.units is None:
        cell.units = var.units
    return cell


class _Transient:
    """A transient result: any object, no checks."""

    def __init__(self, data: Any) -> None:
        self.data = data


def execute(
    ctx: Any,
    run: Any,
    run_number: int,
    proposal: int,
    params: dict[str, Any],
    *,
    label: str = "",
) -> Results:
    """Evaluate every variable of ``ctx`` for one run, in dependency order."""
    prefix = f"[{label}] " if label and label != "default" else ""
    state = _Run(ctx, run, run_number, proposal, params)
    cells: dict[str, Any] = {"start_time": Cell(_start_time(run))}
    for name in ctx.order:
        var = ctx.vars[name]
        started = time.perf_counter()
        try:
            kwargs, missing, no_value = state.arguments(name, var)
            if missing:
                log.warning(
                    "%sSkipping %s because of missing dependencies: %s",
                    prefix,
                    name,
                    ", ".join(missing),
                )
                state.errors[name] = state.skipped(missing)
                continue
            if no_value:
                raise Skip(f"no value given for {', '.join(no_value)}")
            cell = _evaluate(var, run, kwargs)
        except Exception as exc:
            sys.stdout.flush()
            if isinstance(exc, Skip):
                log.error("%sSkipped %s: %s", prefix, name, exc)
            else:
                log.error("%sCould not get data for %s", prefix, name, exc_info=True)
            state.errors[name] = exc
            continue
        sys.stdout.flush()
        log.info("%sComputed %s in %.03f s", prefix, name, time.perf_counter() - started)
        if not var.transient:
            cells[name] = cell
        if cell.data is not None:
            state.values[name] = cell.data
    errors = {n: e for n, e in state.errors.items() if not ctx.vars[n].transient}
    return Results(cells, errors, ctx)


__all__ = ["Results", "execute"]
