"""The local merger: joins two prompts only when one covers the other, with no network at all.

Invariant: merging never loses an ask. A group's instruction is the most specific of its
prompts, verbatim, and prompts that differ in a negation or an identifier stay apart.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import snowballstemmer
from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, Indel

from bot.merge import Merge, Reading, assemble, read_batch, tokens
from bot.model import SourcePrompt

__all__ = ["LocalMerger"]

log = logging.getLogger(__name__)

# Words that carry no ask of their own: dropping them from the comparison lets
# "please fix the login test" match "fix the login test". Negations and direction
# words (on/off, up/down, in/out) are deliberately absent.
# fmt: off
_STOPWORDS = frozenset({
    "a", "an", "the", "please", "pls", "plz", "kindly", "can", "could", "would", "will", "you",
    "someone", "somebody", "anyone", "we", "i", "me", "us", "our", "my", "your", "it", "its",
    "this", "that", "these", "those", "is", "are", "was", "be", "been", "to", "of", "for",
    "and", "also", "just", "hey", "hi", "hello", "so", "then", "now", "asap", "need", "needs",
    "want", "wants", "should", "let", "lets", "maybe", "here", "there", "thanks", "thank",
    "thx", "ty", "lgtm", "+1", "do", "does", "did", "were", "have", "has", "must", "yes", "yeah",
    "yep", "ok", "okay", "sure", "again", "really", "still", "get", "make", "look", "too",
    "everything", "throughout",
})

# Words that reverse an ask. Two prompts that differ in how many of these they hold
# are never duplicates ("add retries" vs "do not add retries").
_NEGATIONS = frozenset({
    "not", "no", "never", "without", "nor", "neither", "none", "nothing", "nobody", "nowhere",
})
# fmt: on
# Stopwords by their sorted letters, to spot a stopword typed with two letters swapped.
_STOPWORD_ANAGRAMS = {"".join(sorted(w)): w for w in _STOPWORDS if len(w) >= 3}

# Pairs of word beginnings that flip meaning while leaving the rest of the word alike,
# so that a typo-tolerant comparison never takes "install" for "uninstall" or
# "ascending" for "descending".
_OPPOSITE_PREFIXES: tuple[tuple[str, str], ...] = (
    *(("", p) for p in ("un", "dis", "de", "non", "in", "im", "il", "ir", "a", "anti", "mis")),
    ("in", "de"),
    ("in", "ex"),
    ("in", "out"),
    ("up", "down"),
    ("en", "de"),
    ("as", "des"),
    ("pre", "suf"),
    ("pre", "post"),
    ("min", "max"),
    ("over", "under"),
    ("upper", "lower"),
    ("inner", "outer"),
    ("before", "after"),
    ("on", "off"),
)

# Indel similarity at or above which two plain words count as one word mistyped
# ("login"/"logn", "test"/"tests") when deciding whether one prompt covers another.
_TYPO_SIMILARITY = 0.8
_TYPO_MIN_CHARS = 3

_STEMMER = snowballstemmer.stemmer("english")

# Words developers use for one action or thing, so that "remove the prints" can match
# "delete the print statements". Kept to pairs that never mean opposite things.
# fmt: off
_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("remove", "delete", "drop", "rid", "eliminate"),
    ("fix", "repair", "resolve", "mend"),
    ("upgrade", "bump", "update"),
    ("revert", "rollback", "undo"),
    ("cache", "memoize", "memoise"),
    ("sort", "order"),
    ("fail", "red", "broken", "broke", "break"),
    ("crash", "traceback"),
    ("annotation", "hint"),
    ("page", "screen", "view"),
    ("doc", "document", "documentation", "docs"),
    ("faster", "speed", "quicker", "optimise", "optimize", "perf", "performance"),
    ("test", "spec"),
)
# Phrases that say one of the words above.
_PHRASES = (("get rid of", "remove"), ("roll back", "revert"), ("speed up", "speed"))
# fmt: on
_CANONICAL: dict[str, str] = {
    _STEMMER.stemWord(word): _STEMMER.stemWord(words[0]) for words in _SYNONYMS for word in words
}
_PHRASE = re.compile(r"\b(" + "|".join(re.escape(p) for p, _ in _PHRASES) + r")\b", re.IGNORECASE)
_PHRASE_WORD = dict(_PHRASES)
# A covered prompt with at least this many content words merges into the prompt covering
# it whatever their lengths: the wider phrasing carries every word of its ask.
_COVERED_MIN_CONTENT = 2


@dataclass(frozen=True, slots=True)
class _Ask:
    """What the local merger extracts from one ask before comparing it with others."""

    source: SourcePrompt
    norm: str  # casefolded tokens joined by single spaces: the exact-duplicate key
    tokens: frozenset[str]  # compared tokens
    content: frozenset[str]  # compared tokens of words that are not stopwords
    content_chars: int  # letters in the distinct words, as written, that are not stopwords
    identifiers: tuple[str, ...]  # identifier-like tokens in first-seen order
    identifier_set: frozenset[str]
    negations: int

    @property
    def specificity(self) -> tuple[int, int]:
        """Bigger means more specific: more distinct content words, then more letters."""
        return len(self.content), self.content_chars


def _is_stopword(token: str) -> bool:
    """True for stopwords, and for stopwords with two letters swapped ("teh", "pelase")."""
    if token in _STOPWORDS:
        return True
    twin = _STOPWORD_ANAGRAMS.get("".join(sorted(token)))
    return twin is not None and OSA.distance(token, twin) == 1


def _canonical(token: str, is_identifier: bool) -> str:
    """The form two prompts are compared in: identifiers exact, words stemmed and mapped
    to the first of their synonyms ("deleting" -> "remov", like "removes")."""
    if is_identifier:
        return token
    stem: str = _STEMMER.stemWord(token)
    return _CANONICAL.get(stem, stem)


def _read_ask(reading: Reading) -> _Ask:
    """Read one ask for comparing: its words stemmed, synonyms and phrases made one."""
    phrased = _PHRASE.sub(lambda m: _PHRASE_WORD[m.group(1).casefold()], reading.source.text)
    compared = [(_canonical(t, is_id), t) for t, is_id in tokens(phrased)]
    return _Ask(
        source=reading.source,
        norm=" ".join(reading.words),
        tokens=frozenset(c for c, _ in compared),
        content=frozenset(c for c, t in compared if not _is_stopword(t)),
        content_chars=sum(len(t) for t in {t for _, t in compared if not _is_stopword(t)}),
        identifiers=reading.identifiers,
        identifier_set=frozenset(reading.identifiers),
        negations=sum(1 for w in reading.words if w in _NEGATIONS),
    )


def _are_opposites(u: str, v: str) -> bool:
    for p, q in _OPPOSITE_PREFIXES:
        for a, b in ((u, v), (v, u)):
            if a.startswith(p) and b.startswith(q) and a[len(p) :] == b[len(q) :]:
                return True
    return False


def _is_typo_of(u: str, v: str, identifiers: frozenset[str]) -> bool:
    """True when plain words ``u`` and ``v`` are one word spelt two ways."""
    if u in identifiers or v in identifiers or min(len(u), len(v)) < _TYPO_MIN_CHARS:
        return False
    if 2 * min(len(u), len(v)) < _TYPO_SIMILARITY * (len(u) + len(v)):
        return False  # the Indel similarity below can be at most 2*min/(sum of lengths)
    # One swap of neighbouring letters ("teh", "tset") is a typo at any length.
    is_alike = Indel.normalized_similarity(u, v) >= _TYPO_SIMILARITY or (
        len(u) == len(v) and sorted(u) == sorted(v) and OSA.distance(u, v) == 1
    )
    return is_alike and not _are_opposites(u, v)


def _covers(wide: _Ask, narrow: _Ask) -> bool:
    """True when every content word of ``narrow`` is in ``wide`` (exactly or mistyped)."""
    missing = narrow.content - wide.tokens
    if not missing:
        return True
    identifiers = wide.identifier_set | narrow.identifier_set
    candidates = wide.tokens - narrow.tokens
    return all(any(_is_typo_of(w, t, identifiers) for t in candidates) for w in missing)


def _identifiers_agree(a: _Ask, b: _Ask) -> bool:
    """True when one prompt's identifiers are all in the other's, in the same order.

    Identifiers must match exactly: "fix test_login" never matches "fix test_logout",
    and "rename a.py to b.py" never matches "rename b.py to a.py". `_covers` would
    reject the first pair too; checking here first skips the fuzzy scores cheaply.
    """
    if not (a.identifier_set <= b.identifier_set or b.identifier_set <= a.identifier_set):
        return False
    shared = a.identifier_set & b.identifier_set
    return [t for t in a.identifiers if t in shared] == [t for t in b.identifiers if t in shared]


class LocalMerger:
    """The merger that needs no network: deterministic, and fast enough to run inline.

    Two prompts are merged only when one of them *covers* the other: every content word
    of the narrower one (stopwords aside; words compared by their English stem, common
    developer synonyms such as delete/remove or bump/upgrade as one, small typos
    forgiven) is in the wider one, the two hold the same number of negations, and
    identifiers (numbers, file names, snake or camel case) appear exactly and in the
    same order. Then either the mean of rapidfuzz's ``token_set_ratio`` and
    ``token_sort_ratio`` of their normalised text (scaled to 0..1) reaches
    ``similarity_threshold``, or the narrower one has at least two content words, so a
    short ask merges into a longer one that contains it ("fix test_login" into "fix
    test_login and add a regression test"); a threshold of 1.0 turns that second way
    off. The wider phrasing becomes the group's instruction, so merging never loses an
    ask; when in doubt, prompts stay separate, because Claude reading one ask twice
    costs less than an ask that vanished. Paraphrases in other words ("make the test
    pass" vs "fix the failing test") are left to the Gemini merger.
    """

    __slots__ = ("_note", "_score_cutoff")

    name = "local"

    def __init__(self, *, similarity_threshold: float = 0.7, note: str = "") -> None:
        """Raise `ValueError` unless ``similarity_threshold`` is in (0, 1].

        ``note`` is shown by `describe`, e.g. how to turn Gemini merging on."""
        if not 0.0 < similarity_threshold <= 1.0:
            raise ValueError(
                f"similarity_threshold must be in (0, 1], got {similarity_threshold!r}"
            )
        self._score_cutoff = similarity_threshold * 100.0
        self._note = note

    def describe(self) -> str:
        return f"local ({self._note})" if self._note else "local"

    async def merge(self, prompts: Sequence[SourcePrompt]) -> Merge:
        """Merge ``prompts`` (in arrival order) into one `Merge`.

        Promises: every prompt id lands exactly once in a group or in ``dropped``;
        groups are ordered by their first prompt; no instruction is blank; a single
        prompt comes back with its text unchanged as both instruction and prompt.
        Reactions ("+1", "thanks", "👍", blank text) are dropped when some prompt in the
        batch carries an ask, and their author is credited to the group of the nearest
        ask before them (the first group when none precedes). A batch of only reactions
        is merged like asks (blank prompts aside), so no instruction is ever empty.

        Several groups render as a numbered, attributed list under a header telling
        Claude to address every item; one group renders as its instruction, preceded by
        an "Asked by" line when it has several authors.

        Raises `ValueError` for an empty batch, a repeated prompt id, or a batch whose
        every prompt is blank. Pure computation with no await: safe to cancel.
        """
        started = time.monotonic()
        readings = read_batch(prompts)
        members = self._group([_read_ask(r) for r in readings if r.is_ask])
        merge = assemble(
            readings,
            [
                # max keeps the first of equals, so ties go to the earliest phrasing.
                ([r.source.prompt_id for r in rs], max(rs, key=lambda r: r.specificity).source.text)
                for rs in members
            ],
        )
        log.debug(
            "merged %d prompts into %d groups, %d dropped",
            len(prompts),
            len(merge.groups),
            len(merge.dropped),
            extra={
                "prompt_ids": [p.prompt_id for p in prompts],
                "elapsed_s": time.monotonic() - started,
            },
        )
        return merge

    def _group(self, asks: Sequence[_Ask]) -> list[list[_Ask]]:
        """Complete-linkage grouping in arrival order.

        An exact duplicate joins its twin's group. Any other prompt joins the group whose
        every member it duplicates (the best-scoring such group when several do), else
        starts a new one. Requiring every member, not just one, stops chains like
        A~B~C from merging A with an unrelated C.
        """
        groups: list[list[_Ask]] = []
        group_by_norm: dict[str, int] = {}
        for ask in asks:
            chosen = group_by_norm.get(ask.norm)
            if chosen is None:
                best = 0.0
                for index, group in enumerate(groups):
                    weakest = 100.0
                    for member in group:
                        weakest = min(weakest, self._duplicate_score(ask, member))
                        if weakest == 0.0:
                            break
                    if weakest > best:
                        best, chosen = weakest, index
            if chosen is None:
                chosen = len(groups)
                groups.append([])
            groups[chosen].append(ask)
            group_by_norm.setdefault(ask.norm, chosen)
        return groups

    def _duplicate_score(self, a: _Ask, b: _Ask) -> float:
        """How alike ``a`` and ``b`` are (0..100), or 0.0 when they are not duplicates.

        Exact duplicates never get here: `_group` joins them by their normalised text.
        """
        if a.negations != b.negations or not _identifiers_agree(a, b):
            return 0.0
        # token_set_ratio forgives extra words (100 when one token set holds the other);
        # token_sort_ratio charges for them. Their mean lets a short ask merge into a
        # fuller phrasing of it, but not "2" (an answer) into a paragraph holding a "2".
        wide, narrow = (a, b) if len(a.content) >= len(b.content) else (b, a)
        if not _covers(wide, narrow) and not _covers(narrow, wide):
            return 0.0
        loose: float = fuzz.token_set_ratio(a.norm, b.norm, processor=None)
        strict: float = fuzz.token_sort_ratio(a.norm, b.norm, processor=None)
        score = (loose + strict) / 2
        if score >= self._score_cutoff:
            return score
        # A short ask wholly inside a longer one ("fix test_login" in "fix test_login and
        # add a regression test") merges into it; a lone word ("2", "yes") does not.
        if (
            self._score_cutoff < 100.0
            and len(narrow.content) >= _COVERED_MIN_CONTENT
            and _covers(wide, narrow)
        ):
            return self._score_cutoff
        return 0.0
