"""Message models of every internal topic, and the facility's event model."""

from .commands import (
    DefineUserVariable,
    ImportDamnit,
    SetComment,
    SetProposalSetting,
    SetTags,
    SetUserVariable,
    StoreCommand,
    SyncDamnit,
    UserVariableType,
)
from .common import ProposalNo, RunNo, Selection, Trigger
from .envelope import Message, utcnow
from .facility import FacilityEvent
from .jobs import JobCancelRequested, JobRequested, JobState, JobStateChanged
from .processing import TERMINAL_STATUSES, ProcessingStateChanged, ProcessingStatus
from .proposals import ProposalRegistered, ProposalRemoved, ProposalSettingsSet
from .results import ResultsReady, VariableDefinition, VariableResult, VariablesDefined
from .runs import ReprocessRequested, RunKnown, RunRequested
from .updates import (
    CommandRejected,
    DamnitSynced,
    JobStateSet,
    ProcessingStateSet,
    RunAdded,
    Update,
    ValuesUpdated,
    ValueView,
    VariablesSet,
)
from .values import InlineSummary, ResultAttrs, SummaryType, ValueAttrs, summary_type_of

__all__ = [
    "TERMINAL_STATUSES",
    "CommandRejected",
    "DamnitSynced",
    "DefineUserVariable",
    "FacilityEvent",
    "ImportDamnit",
    "InlineSummary",
    "JobCancelRequested",
    "JobRequested",
    "JobState",
    "JobStateChanged",
    "JobStateSet",
    "Message",
    "ProcessingStateChanged",
    "ProcessingStateSet",
    "ProcessingStatus",
    "ProposalNo",
    "ProposalRegistered",
    "ProposalRemoved",
    "ProposalSettingsSet",
    "ReprocessRequested",
    "ResultAttrs",
    "ResultsReady",
    "RunAdded",
    "RunKnown",
    "RunNo",
    "RunRequested",
    "Selection",
    "SetComment",
    "SetProposalSetting",
    "SetTags",
    "SetUserVariable",
    "StoreCommand",
    "SummaryType",
    "SyncDamnit",
    "Trigger",
    "Update",
    "UserVariableType",
    "ValueAttrs",
    "ValueView",
    "ValuesUpdated",
    "VariableDefinition",
    "VariableResult",
    "VariablesDefined",
    "VariablesSet",
    "summary_type_of",
    "utcnow",
]
