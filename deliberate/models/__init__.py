"""SQLAlchemy models. Import them from here: `from deliberate.models import Round, Vote`."""

from .audit import AuditEvent
from .base import MAX_ID, is_valid_id, utcnow
from .operations import AnalysisLease, RateLimitCounter
from .people import ROLE_VALUES, ApiToken, Invitation, Organisation, Role, User
from .rounds import (
    AuthorDisplay,
    GroupName,
    ModerationMode,
    ResultsVisibility,
    Round,
    RoundState,
    Statement,
    StatementOrigin,
    StatementRevision,
    StatementState,
    round_organisations,
)
from .snapshots import Snapshot
from .votes import AGREE, DISAGREE, PASS, VOTE_VALUES, Vote, VoteEvent

__all__ = [
    "AGREE",
    "MAX_ID",
    "DISAGREE",
    "PASS",
    "ROLE_VALUES",
    "VOTE_VALUES",
    "AnalysisLease",
    "ApiToken",
    "AuditEvent",
    "AuthorDisplay",
    "GroupName",
    "Invitation",
    "ModerationMode",
    "Organisation",
    "RateLimitCounter",
    "ResultsVisibility",
    "Role",
    "Round",
    "RoundState",
    "Snapshot",
    "Statement",
    "StatementOrigin",
    "StatementRevision",
    "StatementState",
    "User",
    "Vote",
    "VoteEvent",
    "is_valid_id",
    "round_organisations",
    "utcnow",
]
