"""From outcomes to VariableResults and an HDF5 fragment (claim check).

Every stored value (data, binary summaries, previews) goes into the fragment;
the message carries inline JSON summaries, errors and the fragment's path.
A variable whose data fails to be written loses only its own result: it is
reported with the writer's error instead.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runstream_common.messages import VariableResult

from .ctxsupport.rs_ctxrunner import durable
from .outcome import Outcome

if TYPE_CHECKING:
    from .engine import Pass

MAX_ERROR_CHARS = 8000


def result_id(request_id: str, context_hash: str, names: Iterable[str], extra: str = "") -> str:
    """Stable for the same request, context revision and variable set."""
    digest = hashlib.sha256(
        "\x1f".join([request_id, context_hash, extra, *sorted(names)]).encode()
    ).hexdigest()
    return digest[:32]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def inline_summary(prepared: dict[str, Any], max_inline_chars: int) -> tuple[Any, str | None]:
    """(summary, summary_type) for the message; binary summaries stay in the fragment."""
    summary = prepared.get("summary")
    summary_type = prepared.get("summary_type")
    if summary_type in ("thumbnail", "trendline"):
        return None, summary_type
    if isinstance(summary, complex):
        if not (math.isfinite(summary.real) and math.isfinite(summary.imag)):
            return None, "complex"
        return (summary.real, summary.imag), "complex"
    if isinstance(summary, str):
        return _truncate(summary, max_inline_chars), None
    if isinstance(summary, float) and not math.isfinite(summary):
        return None, None  # JSON has no NaN/inf; the value itself is in the fragment
    if isinstance(summary, bool | int | float) or summary is None:
        return summary, None
    return str(summary), None


def variable_result(
    outcome: Outcome, *, in_fragment: bool, max_inline_chars: int = 16384
) -> VariableResult:
    if outcome.status == "error":
        return VariableResult(
            name=outcome.name,
            error=_truncate(outcome.error or "", MAX_ERROR_CHARS),
            error_cls=outcome.error_cls or "Exception",
            duration_s=outcome.duration,
        )
    if outcome.status == "none" or outcome.prepared is None:
        return VariableResult(name=outcome.name, returned_none=True, duration_s=outcome.duration)
    prep = outcome.prepared
    summary, summary_type = inline_summary(prep, max_inline_chars)
    background = prep.get("background")
    return VariableResult(
        name=outcome.name,
        summary=summary,
        summary_type=summary_type,
        summary_method=prep.get("summary_method"),
        units=prep.get("units"),
        max_diff=prep.get("max_diff"),
        bold=prep.get("bold"),
        background=tuple(background) if background is not None else None,
        in_fragment=in_fragment,
        duration_s=outcome.duration,
    )


@dataclass(frozen=True)
class WrittenResults:
    results: tuple[VariableResult, ...]
    fragment: str | None


def fragment_path(
    context_dir: str, fragment_subdir: str, proposal: int, run: int, rid: str, attempt: str
) -> Path:
    """Where one attempt writes its fragment (and ``*.writing`` before it is complete).

    ``attempt`` (the pass's processing id) makes the name unique: two executors that
    both handle the same run message (one took over the other's partition) never
    write the same file.
    """
    return Path(context_dir) / fragment_subdir / f"p{proposal}_r{run}.{rid}.{attempt[:16]}.h5"


def needs_fragment(prepared: dict[str, Any], max_inline_chars: int) -> bool:
    """See :func:`rs_ctxrunner.h5write.needs_fragment` (imported here only when used: the
    service itself never writes HDF5, so it does not load h5py and numpy)."""
    from .ctxsupport.rs_ctxrunner import h5write

    return h5write.needs_fragment(prepared, max_inline_chars)


def write_atomically(
    path: Path,
    stored: dict[str, dict[str, Any]],
    errors: dict[str, tuple[str, str]],
    *,
    start_time: float | None,
    provenance: str = "context.py",
) -> dict[str, tuple[str, str]]:
    """Write ``*.writing``, fsync, rename. Returns variables that failed to save. Blocking."""
    from .ctxsupport.rs_ctxrunner import h5write

    return h5write.write_atomically(
        str(path), stored, errors, start_time=start_time, provenance=provenance
    )


def fit_message(results: tuple[VariableResult, ...], budget: int) -> tuple[VariableResult, ...]:
    """Shorten error texts and string summaries until the results fit ``budget`` bytes of JSON.

    The full values stay in the fragment; Kafka messages have a size bound.
    """
    for limit in (MAX_ERROR_CHARS, 1000, 200, 40):
        size = sum(len(r.model_dump_json()) for r in results)
        if size <= budget:
            return results
        shortened = []
        for r in results:
            update: dict[str, object] = {}
            if r.error:
                update["error"] = _truncate(r.error, limit)
            if isinstance(r.summary, str):
                update["summary"] = _truncate(r.summary, limit)
            shortened.append(r.model_copy(update=update) if update else r)
        results = tuple(shortened)
    return results


def build_results(
    outcomes: dict[str, Outcome],
    emit: list[str],
    *,
    fragment: Path | None,
    start_time: float | None,
    max_inline_chars: int = 16384,
    include_errors_in_file: bool = False,
    always_write: bool = False,
    inline_scalars: bool = False,
) -> WrittenResults:
    """VariableResults for ``emit`` (transient and reused outcomes are skipped).

    If ``fragment`` is given and some result has stored data, the fragment is
    written there (blocking: call through ``asyncio.to_thread``).
    """
    chosen = _chosen(outcomes, emit)
    stored = {
        o.name: o.prepared
        for o in chosen
        if o.status == "ok"
        and o.prepared is not None
        and (not inline_scalars or needs_fragment(o.prepared, max_inline_chars))
    }
    failed: dict[str, tuple[str, str]] = {}
    written_path: str | None = None
    if fragment is not None and (stored or always_write):
        errors = (
            {
                o.name: (o.error or "", o.error_cls or "Exception")
                for o in chosen
                if o.status == "error"
            }
            if include_errors_in_file
            else {}
        )
        failed = write_atomically(fragment, stored, errors, start_time=start_time)
        written_path = str(fragment)
    return _assemble(outcomes, chosen, set(stored), failed, written_path, max_inline_chars)


def _chosen(outcomes: dict[str, Outcome], emit: list[str]) -> list[Outcome]:
    return [
        outcomes[n]
        for n in emit
        if n in outcomes and not outcomes[n].transient and not outcomes[n].reused
    ]


def _assemble(
    outcomes: dict[str, Outcome],
    chosen: list[Outcome],
    stored: set[str],
    failed: dict[str, tuple[str, str]],
    written_path: str | None,
    max_inline_chars: int,
) -> WrittenResults:
    """The message's results; data that failed to be written turns into that variable's error."""
    results = []
    for o in chosen:
        if o.name in failed:
            message, cls = failed[o.name]
            o = Outcome(o.name, "error", message, cls, duration=o.duration)
            outcomes[o.name] = o
        results.append(
            variable_result(
                o,
                in_fragment=written_path is not None and o.name in stored,
                max_inline_chars=max_inline_chars,
            )
        )
    return WrittenResults(tuple(results), written_path)


async def write_held_results(
    run_pass: Pass,
    outcomes: dict[str, Outcome],
    emit: list[str],
    *,
    fragment: Path,
    start_time: float | None,
    max_inline_chars: int = 16384,
) -> WrittenResults:
    """Like :func:`build_results` for a pass in hold mode: the workers keep the data,
    and the pass's own worker writes the fragment (only if some result needs it).

    The worker writes ``<fragment>.writing`` only: finish it with :func:`commit_fragment`
    (fsync, rename) once the worker is back in the pool, before publishing.
    """
    chosen = _chosen(outcomes, emit)
    stored = [
        o.name
        for o in chosen
        if o.status == "ok" and o.prepared is not None and o.prepared.get("in_fragment")
    ]
    failed: dict[str, tuple[str, str]] = {}
    written_path: str | None = None
    if stored:
        failed = await run_pass.write(fragment, stored, start_time=start_time, sync=False)
        if Path(str(fragment) + ".writing").exists():  # noqa: ASYNC240  # a stat, not I/O work
            written_path = str(fragment)
    return _assemble(outcomes, chosen, set(stored), failed, written_path, max_inline_chars)


def commit_fragment(path: str) -> None:
    """Make a fragment a worker wrote durable and put it in place. Blocking."""
    durable.commit(path)


def remove_stale_partials(fragment: str, older_than_s: float) -> list[str]:
    """Delete the ``*.writing`` files of this fragment's run left by attempts that died.

    A partial fragment is never named in a message, so nobody will read it; one older
    than a pass may last (``older_than_s``) cannot belong to a pass still writing.
    Blocking; returns the names removed.
    """
    folder, name = os.path.split(fragment)
    run_prefix = name.split(".", 1)[0] + "."  # p{P}_r{R}.
    cutoff = time.time() - older_than_s
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(run_prefix) and entry.name.endswith(".h5.writing")):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed
