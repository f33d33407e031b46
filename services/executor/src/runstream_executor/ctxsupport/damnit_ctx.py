"""DAMNIT compatibility: ``from damnit_ctx import Variable, Cell, Skip`` keeps working."""

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
