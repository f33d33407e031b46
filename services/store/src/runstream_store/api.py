"""Read API for notebooks and scripts, shaped like DAMNIT's ``Damnit`` API.

    from runstream_store.api import Proposal

    p = Proposal(2212)                    # DSN from RUNSTREAM_POSTGRES_DSN, or dsn=...
    df = p.table()                        # runs as rows, variables as columns
    p[42]["xgm"].read()                   # ndarray / xarray object / str / RGBA image
    p[42, "XGM energy"].summary()         # by title works too
    p[42]["xgm"].units

Synchronous on purpose (works in Jupyter, whose event loop is already running):
database calls run on a private event loop in a background thread. Only reads;
nothing here writes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pandas as pd

from .adapters import hdf5_read
from .adapters.hdf5_merge import run_file_path
from .adapters.postgres import Repository, RunRow, VariableRow, create_pool
from .table import FIXED_TITLES, START_TIME, read_table
from .values import COMMENT, StoredValue

T = TypeVar("T")


class _LoopThread:
    """An event loop in a daemon thread; ``run`` waits for one coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="runstream-api", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Proposal:
    """One proposal's runs and variables."""

    def __init__(self, proposal: int, *, dsn: str | None = None) -> None:
        if dsn is None:
            from .settings import Settings

            dsn = Settings().postgres.dsn.get_secret_value()
        self.proposal = proposal
        self._loop = _LoopThread()
        try:
            self._pool: asyncpg.Pool = self._loop.run(create_pool(dsn, min_size=0, max_size=2))
        except BaseException:
            self._loop.close()
            raise
        self._repo = Repository(self._pool)
        context_dir = self._run(self._repo.context_dir(proposal))
        known = self._run(self._repo.runs(proposal))
        if context_dir is None and not known:
            self.close()
            raise FileNotFoundError(f"proposal {proposal} is not in the runstream database")
        self.context_dir = Path(context_dir) if context_dir else None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if not self._loop.loop.is_closed():
            try:
                self._loop.run(self._pool.close())
            finally:
                self._loop.close()

    def __enter__(self) -> Proposal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- queries
    def runs(self) -> list[int]:
        """Run numbers with a start time (pre-created runs are left out, as in DAMNIT)."""
        return [
            r.run for r in self._run(self._repo.runs(self.proposal)) if r.start_time is not None
        ]

    def variables(self) -> dict[str, str]:
        """Variable name -> title."""
        return {v.name: v.title for v in self._run(self._repo.variables(self.proposal))}

    def table(self, *, with_titles: bool = False, timezone: str = "Europe/Berlin") -> pd.DataFrame:
        """The run table: runs as rows, variables as columns (see RunTable.to_dataframe)."""
        table = self._run(read_table(self._pool, self.proposal))
        return table.to_dataframe(with_titles=with_titles, timezone=timezone)

    def run_file(self, run: int) -> Path | None:
        if self.context_dir is None:
            return None
        return run_file_path(self.context_dir, self.proposal, run)

    def __getitem__(self, key: int | tuple[int, str]) -> Any:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise TypeError("index with run or (run, variable name or title)")
            run, name = key
            return self[run][name]
        if isinstance(key, bool) or not isinstance(key, int):
            raise TypeError(f"a run number is an int, not {type(key).__name__}")
        row = self._run(self._repo.get_run(self.proposal, key))
        if row is None:
            raise KeyError(f"proposal {self.proposal} has no run {key}")
        return RunVariables(self, row)

    def __repr__(self) -> str:
        return f"<Proposal {self.proposal}>"


class RunVariables:
    """The variables of one run."""

    def __init__(self, proposal: Proposal, row: RunRow) -> None:
        self._p = proposal
        self._row = row
        self.proposal = proposal.proposal
        self.run = row.run
        self.file = proposal.run_file(row.run)
        self._values: dict[str, StoredValue] = proposal._run(
            proposal._repo.current_values(proposal.proposal, row.run)
        )
        self._variables: dict[str, VariableRow] = {
            v.name: v for v in proposal._run(proposal._repo.variables(proposal.proposal))
        }

    def _title(self, name: str) -> str:
        if name in FIXED_TITLES:
            return FIXED_TITLES[name]
        var = self._variables.get(name)
        return var.title if var is not None else name

    def keys(self) -> list[str]:
        """Variables with a value for this run (errors and cleared values are left out)."""
        names = [n for n, v in self._values.items() if not v.cleared and v.error is None]
        if self._row.start_time is not None:
            names.append(START_TIME)
        return sorted(set(names))

    def titles(self) -> list[str]:
        return [self._title(n) for n in self.keys()]

    def __contains__(self, key: object) -> bool:
        """Like ``keys()``: variables with a value (by name or title)."""
        names = self.keys()
        return key in names or key in [self._title(n) for n in names]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def _resolve(self, key: str) -> str:
        if key in self._values or (key == START_TIME and self._row.start_time is not None):
            return key
        for name in [*self._values, START_TIME]:
            if self._title(name) == key:
                return name
        raise KeyError(f"run {self.run} of proposal {self.proposal} has no variable {key!r}")

    def __getitem__(self, key: str) -> VariableData:
        if not isinstance(key, str):
            raise TypeError(f"a variable is named by a str, not {type(key).__name__}")
        name = self._resolve(key)
        return VariableData(self, name)

    def __repr__(self) -> str:
        return f"<RunVariables p{self.proposal} r{self.run}: {len(self.keys())} variables>"


class VariableData:
    """One variable of one run."""

    def __init__(self, run: RunVariables, name: str) -> None:
        self._rv = run
        self.name = name
        self.title = run._title(name)
        self.proposal = run.proposal
        self.run = run.run
        self.file = run.file
        self._value = run._values.get(name)
        self._variable = run._variables.get(name)

    @property
    def units(self) -> str | None:
        if self._value is not None and self._value.units:
            return self._value.units
        return self._variable.units if self._variable is not None else None

    @property
    def error(self) -> tuple[str, str] | None:
        """``(message, class)`` when the variable failed for this run."""
        if self._value is not None and self._value.error is not None:
            return self._value.error, self._value.error_cls or ""
        return None

    @property
    def provenance(self) -> str | None:
        return self._value.provenance if self._value is not None else None

    def _from_db(self) -> bool:
        return self.name == COMMENT or (
            self._variable is not None and self._variable.user_type is not None
        )

    def read(self) -> Any:
        """The stored data: ndarray or numpy scalar, str, xarray object, RGBA image, ..."""
        if self.name == START_TIME:
            return self._rv._row.start_time
        if self._from_db():
            return self.summary()
        if self.error is not None:
            message, cls = self.error
            raise KeyError(f"{self.name} failed for run {self.run}: {cls}: {message}")
        if self.file is None:
            raise KeyError(f"{self.name}: the proposal has no folder for run files")
        return hdf5_read.read_data(self.file, self.name)

    def summary(self) -> Any:
        """The summary: a value, a complex, a (2, N) trendline or a thumbnail as RGBA array."""
        if self.name == START_TIME:
            return self._rv._row.start_time
        if self._value is None:
            return None
        if self._value.kind == "blob":
            if self.file is None:
                raise KeyError(f"{self.name}: the proposal has no folder for run files")
            return hdf5_read.read_summary(self.file, self.name)
        if self._value.kind == "complex":
            return complex(*self._value.inline_summary)  # type: ignore[misc]
        return self._value.inline_summary

    def preview_data(self) -> Any:
        """The explicit preview, else the data if it is 1-D/2-D (None for datasets)."""
        if self.file is not None:
            try:
                return hdf5_read.read_preview(self.file, self.name)
            except KeyError:
                pass
        data = self.read()
        ndim = getattr(data, "ndim", 0)
        if hasattr(data, "data_vars") or ndim not in (1, 2, 3):
            return None
        return data

    def history(self) -> list[tuple[StoredValue, bool]]:
        """Every value recorded for this variable and run, oldest first (with 'superseded')."""
        p = self._rv._p
        return p._run(p._repo.history(self.proposal, self.run, self.name))

    def __repr__(self) -> str:
        return f"<VariableData {self.name!r} p{self.proposal} r{self.run}>"
