"""deliberate's opinion-analysis engine: Pol.is's math, faithfully, plus what deliberate adds.

Pure numpy + standard library (no Flask, no SQLAlchemy, nothing else from deliberate), so it
can be tested, benchmarked and reused on its own. The specification is
``../shared/design/opinion-analysis.md``; every deliberate difference from Pol.is is documented
in the module that makes it.

>>> votes = Votes.from_arrays(participant, statement, value, created=None)
>>> result = run_analysis(votes, moderation=Moderation(rejected=frozenset({3})), state=None)
>>> result.to_dict(); result.state; result.priorities; result.group_of(pid)

Sign convention: agree = +1, disagree = -1, pass = 0, not seen = no vote.
"""

from .matrix import Moderation, Votes
from .pipeline import STATE_VERSION, AnalysisResult, Params, run_analysis
from .priorities import draw_weighted, routing_weights

__all__ = [
    "Votes",
    "Moderation",
    "Params",
    "AnalysisResult",
    "run_analysis",
    "draw_weighted",
    "routing_weights",
    "STATE_VERSION",
]
