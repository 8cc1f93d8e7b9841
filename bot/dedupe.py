"""Merging a batch of prompts into one instruction for Claude.

Invariant: every source prompt is accounted for exactly once, either in one
`MergeGroup` or in `Merge.dropped`. Participants' text is data: the merger never acts
on what it says, and the merged prompt delimits each participant's text as one item.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, Indel

from bot.model import MergeGroup, SourcePrompt

__all__ = ["Deduper", "LocalDeduper", "Merge"]

log = logging.getLogger(__name__)

_HEADER = (
    "Several teammates asked for the following. Address every item; "
    "where two items conflict, say so and ask before choosing."
)


@dataclass(frozen=True, slots=True)
class Merge:
    """The outcome of merging one batch.

    ``prompt`` is the one instruction sent to Claude, with its authors attributed.
    ``groups`` are in order of their first prompt; each stands for prompts that ask the
    same thing. ``dropped`` holds the ids of prompts judged pure noise ("+1", "thanks");
    their authors are credited in the group they supported.

    Construction raises `ValueError` when the merge is malformed on its own terms: no
    groups, a group without prompts, authors or instruction, a blank prompt, or an id
    that appears twice. Use `validate` to check it against the batch it came from.
    """

    prompt: str
    groups: tuple[MergeGroup, ...]
    dropped: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a Merge needs at least one group")
        if not self.prompt.strip():
            raise ValueError("a Merge needs a non-blank prompt")
        for index, group in enumerate(self.groups):
            if not group.prompt_ids:
                raise ValueError(f"group {index} has no prompt ids")
            if not group.authors:
                raise ValueError(f"group {index} has no authors")
            if not group.instruction.strip():
                raise ValueError(f"group {index} has a blank instruction")
        counts = Counter([*(i for g in self.groups for i in g.prompt_ids), *self.dropped])
        repeated = sorted(i for i, n in counts.items() if n > 1)
        if repeated:
            raise ValueError(f"prompt ids {repeated} appear more than once in the merge")

    def validate(self, sources: Sequence[SourcePrompt]) -> None:
        """Raise `ValueError` unless this merge accounts for exactly ``sources``' ids.

        Every source id must appear (in a group or in ``dropped``) and no other id may.
        Together with the checks made at construction, this means exactly once.
        """
        expected = {s.prompt_id for s in sources}
        seen = {i for g in self.groups for i in g.prompt_ids} | set(self.dropped)
        missing = sorted(expected - seen)
        invented = sorted(seen - expected)
        if missing or invented:
            raise ValueError(
                f"merge does not match its batch: missing ids {missing}, unknown ids {invented}"
            )


class Deduper(Protocol):
    """Turns a batch of accepted prompts into one instruction.

    ``merge`` raises `ValueError` for an empty batch or repeated prompt ids; otherwise
    the returned `Merge` accounts for every prompt exactly once (see `Merge.validate`).
    """

    name: str

    async def merge(self, prompts: Sequence[SourcePrompt]) -> Merge: ...


# Token characters: word characters plus the punctuation that lives inside paths,
# identifiers and flags (`src/app.py`, `test_login`, `--dry-run`, `c++`, `don't`).
_TOKEN = re.compile(r"[\w./\\:#@+'-]+")
_CAMEL = re.compile(r"[a-z][A-Z]")
_IDENTIFIER_CHARS = frozenset("_./\\:#@+-")
_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'"})

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
    "thx", "ty", "lgtm", "+1", "do", "does", "did", "were", "have", "has", "must",
})

# Words that reverse an ask. Two prompts that differ in how many of these they hold
# are never duplicates ("add retries" vs "do not add retries").
_NEGATIONS = frozenset({
    "not", "no", "never", "without", "nor", "neither", "none", "nothing", "nobody", "nowhere",
})

# Contractions are spelt out so that "don't add retries" is "do not add retries".
_CONTRACTIONS = {
    "dont": "do not", "doesnt": "does not", "didnt": "did not", "cant": "can not",
    "cannot": "can not", "wont": "will not", "wouldnt": "would not", "shouldnt": "should not",
    "isnt": "is not", "arent": "are not", "wasnt": "was not", "werent": "were not",
    "mustnt": "must not", "neednt": "need not", "havent": "have not", "hasnt": "has not",
    "aint": "is not",
}

# A message made only of these (and the batch's author names) is a reaction, not an ask.
_NOISE_WORDS = frozenset({
    "+1", "same", "here", "me", "too", "i", "agree", "agreed", "as", "above", "with", "to",
    "that", "this", "thanks", "thank", "you", "thx", "ty", "tysm", "much", "so", "a", "lot",
    "ditto", "lgtm", "seconded", "second", "exactly", "great", "nice", "cool", "awesome",
    "thumbsup", "pray", "heart", "tada",
})
# fmt: on
# Stopwords by their sorted letters, to spot a stopword typed with two letters swapped.
_STOPWORD_ANAGRAMS = {"".join(sorted(w)): w for w in _STOPWORDS if len(w) >= 3}
_PLUS_N = re.compile(r"\+\d+")

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


@dataclass(frozen=True, slots=True)
class _Reading:
    """What the local deduper extracts from one prompt before comparing it."""

    source: SourcePrompt
    norm: str  # casefolded tokens joined by single spaces: the exact-duplicate key
    tokens: frozenset[str]
    content: frozenset[str]  # tokens minus stopwords: what the prompt asks for
    identifiers: tuple[str, ...]  # identifier-like tokens in first-seen order
    identifier_set: frozenset[str]
    negations: int
    is_noise: bool
    is_blank: bool

    @property
    def specificity(self) -> tuple[int, int]:
        """Bigger means more specific: more distinct content words, then more letters."""
        return len(self.content), sum(len(t) for t in self.content)


def _clean(raw: str) -> str:
    """Trim a raw token to the part that means something.

    Quotes go from both ends, sentence punctuation from the end, and leading dashes
    unless a digit follows (so `--verbose` reads as `verbose` but `-1` stays `-1`).
    """
    token = raw.strip("'")
    token = token.rstrip(".:'-")
    token = token.lstrip(":'")
    if token.startswith("..") and "/" not in token:
        token = token.lstrip(".")
    if token.startswith("-") and not token.lstrip("-")[:1].isdigit():
        token = token.lstrip("-")
    return token


def _is_identifier(token: str) -> bool:
    """True for tokens that must match exactly: numbers, paths, snake/camel case, ids."""
    if any(c.isdigit() for c in token) or _CAMEL.search(token):
        return True
    return any(c in _IDENTIFIER_CHARS for c in token)


def _tokens(text: str) -> list[tuple[str, bool]]:
    """Split ``text`` into casefolded tokens, each with whether it is identifier-like."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    out: list[tuple[str, bool]] = []
    for raw in _TOKEN.findall(text):
        token = _clean(raw)
        if not any(c.isalnum() for c in token):
            continue
        # Apostrophes inside words are spelling, not meaning: don't == dont.
        token = token.replace("'", "")
        folded = token.casefold()
        if folded in _CONTRACTIONS:
            out.extend((word, False) for word in _CONTRACTIONS[folded].split())
        else:
            out.append((folded, _is_identifier(token)))
    return out


def _is_stopword(token: str) -> bool:
    """True for stopwords, and for stopwords with two letters swapped ("teh", "pelase")."""
    if token in _STOPWORDS:
        return True
    twin = _STOPWORD_ANAGRAMS.get("".join(sorted(token)))
    return twin is not None and OSA.distance(token, twin) == 1


def _read(prompt: SourcePrompt, author_words: frozenset[str]) -> _Reading:
    """Read one prompt; ``author_words`` are the batch's names, so "same as bob" is noise."""
    pairs = _tokens(prompt.text)
    words = [t for t, _ in pairs]
    tokens = frozenset(words)
    identifiers = tuple(dict.fromkeys(t for t, is_id in pairs if is_id))
    is_noise = all(
        w in _NOISE_WORDS or w.lstrip("@") in author_words or _PLUS_N.fullmatch(w) for w in words
    )
    return _Reading(
        source=prompt,
        norm=" ".join(words),
        tokens=tokens,
        content=frozenset(t for t in tokens if not _is_stopword(t)),
        identifiers=identifiers,
        identifier_set=frozenset(identifiers),
        negations=sum(1 for w in words if w in _NEGATIONS),
        is_noise=is_noise,
        is_blank=not prompt.text.strip(),
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


def _covers(wide: _Reading, narrow: _Reading) -> bool:
    """True when every content word of ``narrow`` is in ``wide`` (exactly or mistyped)."""
    missing = narrow.content - wide.tokens
    if not missing:
        return True
    identifiers = wide.identifier_set | narrow.identifier_set
    candidates = wide.tokens - narrow.tokens
    return all(any(_is_typo_of(w, t, identifiers) for t in candidates) for w in missing)


def _identifiers_agree(a: _Reading, b: _Reading) -> bool:
    """True when one prompt's identifiers are all in the other's, in the same order.

    Identifiers must match exactly: "fix test_login" never matches "fix test_logout",
    and "rename a.py to b.py" never matches "rename b.py to a.py". `_covers` would
    reject the first pair too; checking here first skips the fuzzy scores cheaply.
    """
    if not (a.identifier_set <= b.identifier_set or b.identifier_set <= a.identifier_set):
        return False
    shared = a.identifier_set & b.identifier_set
    return [t for t in a.identifiers if t in shared] == [t for t in b.identifiers if t in shared]


def _attribution(authors: Iterable[str]) -> str:
    # Names are data too: one line each, so no name can start a list item of its own.
    return ", ".join(" ".join(name.split()) or "someone" for name in authors)


def _render(groups: Sequence[MergeGroup]) -> str:
    """The prompt Claude receives for ``groups``; see `LocalDeduper.merge`."""
    if len(groups) == 1:
        group = groups[0]
        if len(group.authors) == 1:
            return group.instruction
        return f"Asked by {_attribution(group.authors)}:\n{group.instruction}"
    lines = [_HEADER]
    for number, group in enumerate(groups, start=1):
        marker = f"{number}. "
        indent = " " * len(marker)
        first, *rest = group.instruction.strip().splitlines()
        lines.append(f"{marker}({_attribution(group.authors)}) {first}")
        # Continuation lines are indented under their item, so a participant's text
        # can never start a numbered item of its own.
        lines.extend(indent + line if line.strip() else "" for line in rest)
    return "\n".join(lines)


class LocalDeduper:
    """The deduper that needs no network: deterministic, and fast enough to run inline.

    Two prompts are merged only when one of them *covers* the other: every content word
    of the narrower one (stopwords aside, small typos forgiven) is in the wider one, the
    two hold the same number of negations, identifiers (numbers, file names, snake or
    camel case) appear exactly and in the same order, and the mean of rapidfuzz's
    ``token_set_ratio`` and ``token_sort_ratio`` of their normalised text (scaled to
    0..1) reaches ``similarity_threshold``. The wider phrasing becomes the group's
    instruction, so merging never loses an ask; when in doubt, prompts stay separate,
    because Claude reading one ask twice costs less than an ask that vanished.
    Paraphrases in other words ("make the test pass" vs "fix the failing test") are
    left to the Gemini deduper.
    """

    __slots__ = ("_score_cutoff",)

    name = "local"

    def __init__(self, *, similarity_threshold: float = 0.7) -> None:
        """Raise `ValueError` unless ``similarity_threshold`` is in (0, 1]."""
        if not 0.0 < similarity_threshold <= 1.0:
            raise ValueError(
                f"similarity_threshold must be in (0, 1], got {similarity_threshold!r}"
            )
        self._score_cutoff = similarity_threshold * 100.0

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
        if not prompts:
            raise ValueError("cannot merge an empty batch of prompts")
        ids = [p.prompt_id for p in prompts]
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(f"prompt ids {repeated} appear more than once in the batch")

        author_words = frozenset(
            w.casefold() for p in prompts for w in re.findall(r"\w+", p.author)
        )
        readings = [_read(p, author_words) for p in prompts]
        carries = [not r.is_noise for r in readings]
        if not any(carries):
            carries = [not r.is_blank for r in readings]
        if not any(carries):
            raise ValueError("cannot merge a batch in which every prompt is blank")

        members = self._group([r for r, c in zip(readings, carries, strict=True) if c])
        group_of = {r.source.prompt_id: g for g, rs in enumerate(members) for r in rs}
        # Each reaction supports the group of the nearest ask before it. Reactions ahead
        # of every ask support the first group, which the first ask always opens.
        authors: list[dict[str, None]] = [{} for _ in members]
        supported = 0
        for reading, carried in zip(readings, carries, strict=True):
            if carried:
                supported = group_of[reading.source.prompt_id]
            authors[supported][reading.source.author] = None

        groups = tuple(
            MergeGroup(
                prompt_ids=tuple(r.source.prompt_id for r in rs),
                authors=tuple(names),
                # max keeps the first of equals, so ties go to the earliest phrasing.
                instruction=max(rs, key=lambda r: r.specificity).source.text,
            )
            for rs, names in zip(members, authors, strict=True)
        )
        dropped = tuple(r.source.prompt_id for r, c in zip(readings, carries, strict=True) if not c)
        merge = Merge(prompt=_render(groups), groups=groups, dropped=dropped)
        log.debug(
            "merged %d prompts into %d groups, %d dropped",
            len(prompts),
            len(groups),
            len(dropped),
            extra={"prompt_ids": ids, "elapsed_s": time.monotonic() - started},
        )
        return merge

    def _group(self, readings: Sequence[_Reading]) -> list[list[_Reading]]:
        """Complete-linkage grouping in arrival order.

        An exact duplicate joins its twin's group. Any other prompt joins the group whose
        every member it duplicates (the best-scoring such group when several do), else
        starts a new one. Requiring every member, not just one, stops chains like
        A~B~C from merging A with an unrelated C.
        """
        groups: list[list[_Reading]] = []
        group_by_norm: dict[str, int] = {}
        for reading in readings:
            chosen = group_by_norm.get(reading.norm)
            if chosen is None:
                best = 0.0
                for index, group in enumerate(groups):
                    weakest = 100.0
                    for member in group:
                        weakest = min(weakest, self._duplicate_score(reading, member))
                        if weakest == 0.0:
                            break
                    if weakest > best:
                        best, chosen = weakest, index
            if chosen is None:
                chosen = len(groups)
                groups.append([])
            groups[chosen].append(reading)
            group_by_norm.setdefault(reading.norm, chosen)
        return groups

    def _duplicate_score(self, a: _Reading, b: _Reading) -> float:
        """How alike ``a`` and ``b`` are (0..100), or 0.0 when they are not duplicates.

        Exact duplicates never get here: `_group` joins them by their normalised text.
        """
        if a.negations != b.negations or not _identifiers_agree(a, b):
            return 0.0
        # token_set_ratio forgives extra words (100 when one token set holds the other);
        # token_sort_ratio charges for them. Their mean lets a short ask merge into a
        # fuller phrasing of it, but not "2" (an answer) into a paragraph holding a "2".
        loose: float = fuzz.token_set_ratio(
            a.norm, b.norm, processor=None, score_cutoff=max(0.0, 2 * self._score_cutoff - 100)
        )
        if not loose:
            return 0.0
        strict: float = fuzz.token_sort_ratio(a.norm, b.norm, processor=None)
        score = (loose + strict) / 2
        if score < self._score_cutoff or not (_covers(a, b) or _covers(b, a)):
            return 0.0
        return score
