"""Near-duplicate statements: flagging them for the facilitator, who may then merge them.

Exact duplicates (equal `statements.normalise_text`) are refused when written; this module finds
statements that say nearly the same thing in other words: another word order, punctuation,
plurals, a word added or dropped, a typo.

How two statements are compared (standard library only):
- Words: `normalise_text` (NFKC, case-folded), split into runs of letters and digits, so that
  punctuation never counts. A light English plural folding ("shelters" -> "shelter", "families"
  -> "family", "taxes" -> "tax"). Common English function words ("the", "we", "should", ...)
  are dropped, since sharing them says nothing about meaning; a statement made only of such
  words keeps them all.
- Score: the Jaccard similarity of the two word sets, |A & B| / |A | B|. A pair is flagged when
  it reaches `JACCARD_THRESHOLD`, 7/10, compared exactly (in integers). At 0.7 a word added to a
  statement of three or more words still flags it (3/4), as does a word changed in one of six or
  more words (5/7); a word changed in a short statement ("Fund more refugee shelters" against
  "Ban more refugee shelters": 3/5) does not, nor do statements sharing a few topic words. On
  the Pol.is open data conversations this flags re-submissions with a word added ("I think ..."),
  another punctuation or a plural, and few pairs that say different things.
- Typos: a word of one statement that is one letter added, dropped, changed or swapped away from
  a word of the other (both at least `TYPO_MIN_LENGTH` letters, so "fund" and "find" stay apart)
  counts as shared, each word once: "Fund the sheltrs now" matches "Fund the shelters now"
  (3/3), while "increase" and "decrease" (two letters apart) never match.

It scales to rounds of thousands of statements without comparing every pair (and without
difflib, whose cost per pair is far higher than a set intersection). Candidates come from:
1. an inverted index (word -> statements) with prefix filtering, the standard trick of
   set-similarity joins: each statement's words are ordered rarest first, and only its first
   |A| - ceil(0.7 |A|) + 1 words are indexed and looked up. Two sets with Jaccard >= 0.7 always
   share a word within those prefixes, so no such pair is missed, while the most common words
   (which would make every statement a candidate of every other) stay out of the lookups;
2. the pairs of words one typo apart, found through their one-letter deletions (as spelling
   correctors do), and the statements holding them.
Only candidates are scored.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from sqlalchemy import select

from ..extensions import db
from ..models import Statement, StatementState, User
from .authz import require_facilitator
from .errors import NotFound
from .statements import normalise_text

JACCARD_THRESHOLD = Fraction(7, 10)
TYPO_MIN_LENGTH = 5
MAX_MATCHES = 3
EXCERPT_LENGTH = 100

WORD = re.compile(r"[^\W_]+")

# Words that carry no meaning of their own in a statement (English). Kept short on purpose:
# dropping a word that matters ("not", "no", "more", "less") would hide real differences.
STOP_WORDS = frozenset(
    (  # noqa: SIM905 - as a list literal, one word per line
        "a an and are as at be been being but by can could d do does for from had has have he "
        "her his i if in into is it its itself ll m me my of on or our ours re s she should so "
        "t than that the their them then there these they this those to us ve was we were what "
        "when where which who will with would you your"
    ).split()
)


@dataclass(frozen=True)
class NearDuplicate:
    """Another statement similar to a given one: its id, the start of its text, the score."""

    id: int
    excerpt: str
    score: float


def words(text: str) -> list[str]:
    """Return the statement's words: normalised, punctuation dropped, in order."""
    return WORD.findall(normalise_text(text))


def _fold_plural(word: str) -> str:
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def word_set(text: str) -> frozenset[str]:
    """Return the set of words two statements are compared on (see the module's docstring)."""
    folded = [_fold_plural(w) for w in words(text)]
    meaningful = frozenset(w for w in folded if w not in STOP_WORDS)
    return meaningful or frozenset(folded)


def excerpt(text: str, length: int = EXCERPT_LENGTH) -> str:
    """Return the text cut to `length` characters, with an ellipsis when cut."""
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


def _at_least(shared: int, union: int, threshold: Fraction) -> bool:
    # Exact: shared / union >= numerator / denominator, in integers.
    return shared * threshold.denominator >= threshold.numerator * union


def _within_one_edit(a: str, b: str) -> bool:
    """Whether a and b differ by at most one letter added, dropped or changed, or one swap."""
    if a == b:
        return True
    if len(a) > len(b):
        a, b = b, a
    if len(b) - len(a) > 1:
        return False
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    if a[i + 1 :] == b[i + 1 :]:
        return True
    return i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]


def _is_typo(a: str, b: str) -> bool:
    return (
        min(len(a), len(b)) >= TYPO_MIN_LENGTH
        and a.isalpha()
        and b.isalpha()
        and _within_one_edit(a, b)
    )


def _typo_pairs(only_a: Iterable[str], only_b: Iterable[str]) -> int:
    """Return how many words of one set are a typo away from a word of the other (greedy)."""
    left = sorted(only_b)
    found = 0
    for word in sorted(only_a):
        for k, other in enumerate(left):
            if _is_typo(word, other):
                del left[k]
                found += 1
                break
    return found


def score_pair(text_a: str, text_b: str) -> float:
    """Return the near-duplicate score of two texts, or 0.0 when they are not near-duplicates."""
    return _score(word_set(text_a), word_set(text_b))


def _score(a: frozenset[str], b: frozenset[str], typos_possible: bool = True) -> float:
    shared = len(a & b)
    union = len(a) + len(b) - shared
    if union == 0:
        return 0.0
    if _at_least(shared, union, JACCARD_THRESHOLD):
        return shared / union
    most = min(len(a), len(b)) - shared if typos_possible else 0  # typo pairs at most
    if most and _at_least(shared + most, union - most, JACCARD_THRESHOLD):
        typos = _typo_pairs(a - b, b - a)
        if typos and _at_least(shared + typos, union - typos, JACCARD_THRESHOLD):
            return (shared + typos) / (union - typos)
    return 0.0


def _typo_word_pairs(vocabulary: Iterable[str]) -> list[tuple[str, str]]:
    """Return the pairs of distinct words one typo apart, found without comparing every pair.

    Two words within one edit share a key among themselves and their one-letter deletions
    (a letter changed or two letters swapped: a deletion of each; a letter added: the shorter
    word itself), so only words sharing a key are compared.
    """
    by_key: dict[str, list[str]] = defaultdict(list)
    for word in sorted(vocabulary):
        if len(word) < TYPO_MIN_LENGTH or not word.isalpha():
            continue
        keys = {word} | {word[:k] + word[k + 1 :] for k in range(len(word))}
        for key in keys:
            by_key[key].append(word)
    pairs: set[tuple[str, str]] = set()
    for group in by_key.values():
        for n, word in enumerate(group):
            for other in group[n + 1 :]:
                if _is_typo(word, other):
                    pairs.add((word, other))
    return sorted(pairs)


def _jaccard_candidates(
    sets: list[frozenset[str]], postings: dict[str, list[int]], wanted: set[int] | None
) -> dict[tuple[int, int], bool]:
    """1. The pairs (i < j) that may share JACCARD_THRESHOLD of their words (with False: no
    typo pair known yet), by prefix filtering; with `wanted`, only the pairs of those.

    A statement's words are ordered rarest first (then alphabetically: a fixed order). Two sets
    with Jaccard >= t share a word within each one's first |A| - ceil(t |A|) + 1 words, and the
    size of the other lies between t |A| and |A| / t.
    """
    threshold = JACCARD_THRESHOLD
    candidates: dict[tuple[int, int], bool] = {}

    def prefix(a: frozenset[str]) -> list[str]:
        ordered = sorted(a, key=lambda w: (len(postings[w]), w))
        return ordered[: len(a) - math.ceil(threshold * len(a)) + 1]

    if wanted is not None:  # each wanted statement against every other, by the full postings
        for i in sorted(wanted):
            a = sets[i]
            smallest, largest = math.ceil(threshold * len(a)), math.floor(len(a) / threshold)
            for w in prefix(a):
                for j in postings[w]:
                    if j != i and smallest <= len(sets[j]) <= largest:
                        candidates.setdefault((j, i) if j < i else (i, j), False)
        return candidates
    # The whole set: statements in order of size, so that each is looked up among the smaller
    # ones already indexed (by their prefixes) and the size filter only has to look back.
    index: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(sets)), key=lambda i: (len(sets[i]), i)):
        a = sets[i]
        smallest = math.ceil(threshold * len(a))
        for w in prefix(a):
            for j in index[w]:
                if len(sets[j]) >= smallest:
                    candidates.setdefault((j, i) if j < i else (i, j), False)
            index[w].append(i)
    return candidates


def find_near_duplicates(
    statements: Iterable[tuple[int, str]],
    limit: int = MAX_MATCHES,
    only: Iterable[int] | None = None,
) -> dict[int, list[NearDuplicate]]:
    """Return, per statement id, its most similar other statements (best first, at most `limit`).

    `statements` are (id, text) pairs. Statements without a near-duplicate are left out. The
    result depends only on the input set: ties are broken by the lower id. `only`: the ids to
    find near-duplicates of (among all of `statements`), e.g. one page of a long list; each
    gets exactly what it gets from the whole computation, at a cost that grows with the
    statements' words, not with the pairs of the whole set.
    """
    items = sorted(dict(statements).items())
    sets = [word_set(text) for _, text in items]
    postings: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for w in s:
            postings[w].append(i)
    wanted = None
    if only is not None:
        only_ids = set(only)
        wanted = {i for i, (sid, _) in enumerate(items) if sid in only_ids}
    # Candidate pairs (i < j) -> whether they hold a pair of words one typo apart.
    candidates = _jaccard_candidates(sets, postings, wanted)

    # 2. Pairs with a word one typo away from a word of the other.
    for u, v in _typo_word_pairs(postings):
        for i in postings[u]:
            for j in postings[v]:
                if i != j and (wanted is None or i in wanted or j in wanted):
                    candidates[(j, i) if j < i else (i, j)] = True

    matches: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for (i, j), typos_possible in candidates.items():
        score = _score(sets[i], sets[j], typos_possible)
        if score > 0:
            if wanted is None or i in wanted:
                matches[i].append((score, j))
            if wanted is None or j in wanted:
                matches[j].append((score, i))

    result: dict[int, list[NearDuplicate]] = {}
    for i, found in matches.items():
        found.sort(key=lambda pair: (-pair[0], pair[1]))
        result[items[i][0]] = [
            NearDuplicate(items[j][0], excerpt(items[j][1]), round(score, 3))
            for score, j in found[:limit]
        ]
    return result


def round_near_duplicates(
    actor: User | None, round_id: int, only: Iterable[int] | None = None
) -> dict[int, list[NearDuplicate]]:
    """Return the near-duplicates among a round's statements that are not rejected (facilitators).

    Pending and accepted statements are compared; rejected ones (merged ones included) are
    neither flagged nor offered as the statement another one duplicates. `only`: those of
    these statements (one page of the moderation queue), each compared with the whole round.
    """
    require_facilitator(actor)
    from .rounds import find_round

    round_ = find_round(round_id)
    if round_ is None:
        raise NotFound("No such round.")
    rows = db.session.execute(
        select(Statement.id, Statement.text).where(
            Statement.round_id == round_.id,
            Statement.moderation_state != StatementState.REJECTED.value,
        )
    )
    return find_near_duplicates(((row.id, row.text) for row in rows), only=only)


__all__ = [
    "JACCARD_THRESHOLD",
    "NearDuplicate",
    "find_near_duplicates",
    "round_near_duplicates",
    "score_pair",
    "word_set",
    "words",
]
