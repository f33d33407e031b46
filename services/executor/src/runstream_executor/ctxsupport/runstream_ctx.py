"""runstream's own name for the context-file API (same objects as ``damnit_ctx``)."""

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
