"""The starter ``context.py`` that ``runstream proposal add`` writes when a folder has none."""

from __future__ import annotations

from pathlib import Path

STARTER = '''"""Context file of proposal {proposal}.

Each function decorated with @Variable becomes a column of the run table and is
evaluated for every run: when its raw data is migrated (data="raw", the default)
or when calibrated data is ready (data="proc"). Change this file at any time;
`runstream reprocess {proposal} all` evaluates it again for every run.
"""

from damnit_ctx import Variable


@Variable(title="Trains")
def n_trains(run):
    """Number of trains recorded in the run."""
    return len(run.train_ids)
'''


def write_starter(context_dir: Path, proposal: int) -> Path | None:
    """Create ``context_dir/context.py`` unless it exists; return its path if created."""
    path = context_dir / "context.py"
    if path.exists():
        return None
    context_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTER.format(proposal=proposal))
    return path
