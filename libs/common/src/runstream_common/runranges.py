"""Run numbers as people type them: ``42``, ``10-20``, ``1,3,5-7``, or ``all``."""

from __future__ import annotations

import re

from .limits import MAX_INT32, MAX_RUNS_PER_REQUEST

_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def parse_runs(tokens: list[str]) -> list[int] | None:
    """Sorted, distinct run numbers; None for ``all``. Raises ValueError with a readable reason."""
    if [t.strip().lower() for t in tokens] == ["all"]:
        return None
    runs: set[int] = set()
    for token in tokens:
        for part in token.split(","):
            part = part.strip()
            if not part:
                raise ValueError(f"empty run number in {token!r}")
            if part.lower() == "all":
                raise ValueError("'all' stands alone: it cannot be combined with run numbers")
            if part.isdigit():
                runs.add(_run(part))
                continue
            m = _RANGE.match(part)
            if m is None:
                raise ValueError(
                    f"{part!r} is not a run number or a range (examples: 42, 10-20, 1,3,5-7, all)"
                )
            first, last = _run(m[1]), _run(m[2])
            if last < first:
                raise ValueError(f"range {part!r} goes backwards (did you mean {last}-{first}?)")
            if last - first + 1 > MAX_RUNS_PER_REQUEST:
                raise ValueError(
                    f"range {part!r} has {last - first + 1} runs; one request takes at most "
                    f"{MAX_RUNS_PER_REQUEST}"
                )
            runs.update(range(first, last + 1))
            if len(runs) > MAX_RUNS_PER_REQUEST:
                break
    if len(runs) > MAX_RUNS_PER_REQUEST:
        raise ValueError(f"{len(runs)} runs; one request takes at most {MAX_RUNS_PER_REQUEST}")
    if not runs:
        raise ValueError("no run numbers given")
    return sorted(runs)


def _run(text: str) -> int:
    value = int(text)
    if value > MAX_INT32:
        raise ValueError(f"run {value} is beyond the largest run number ({MAX_INT32})")
    return value
