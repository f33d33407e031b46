"""The context-file API for ``runstream.context`` (``from runstream.context import Variable``).

Inside a worker the context runtime is on ``sys.path`` as ``rs_ctxrunner``: the
names must come from that very module, or the loader would not recognise the
variables. Elsewhere (an IDE, a notebook) the packaged copy is used.
"""

from __future__ import annotations

try:
    from rs_ctxrunner.api import (
        Cell,
        ContextFileErrors,
        DependencyError,
        Group,
        GroupError,
        Pipeline,
        RunData,
        Skip,
        Variable,
    )
except ImportError:  # not inside a worker
    from .ctxsupport.rs_ctxrunner.api import (
        Cell,
        ContextFileErrors,
        DependencyError,
        Group,
        GroupError,
        Pipeline,
        RunData,
        Skip,
        Variable,
    )

__all__ = [
    "Cell",
    "ContextFileErrors",
    "DependencyError",
    "Group",
    "GroupError",
    "Pipeline",
    "RunData",
    "Skip",
    "Variable",
]
