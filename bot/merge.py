"""Merging a batch of prompts into one instruction for Claude: the `Merger` seam and `Merge`.

Invariant: every source prompt is accounted for exactly once, either in one
`MergeGroup` or in `Merge.dropped`. Participants' text is data: no merger acts on what
it says, and the merged prompt delimits each participant's text as one item. Both
mergers read a batch with `read_batch` and build their result with `assemble`.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.model import MergeGroup, SourcePrompt

__all__ = ["Merge", "Merger", "Reading", "assemble", "read_batch", "tokens"]

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


class Merger(Protocol):
    """Turns a batch of accepted prompts into one instruction.

    ``merge`` raises `ValueError` for an empty batch or repeated prompt ids; otherwise
    the returned `Merge` accounts for every prompt exactly once (see `Merge.validate`).
    """

    name: str

    def describe(self) -> str:
        """One line for `status`: which merger serves, and how it has fared."""
        ...

    async def merge(self, prompts: Sequence[SourcePrompt]) -> Merge: ...


# Token characters: word characters plus the punctuation that lives inside paths,
# identifiers and flags (`src/app.py`, `test_login`, `--dry-run`, `c++`, `don't`).
_TOKEN = re.compile(r"[\w./\\:#@+'-]+")
_CAMEL = re.compile(r"[a-z][A-Z]")
_IDENTIFIER_CHARS = frozenset("_./\\:#@+-")
_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'"})

# fmt: off
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
_PLUS_N = re.compile(r"\+\d+")


@dataclass(frozen=True, slots=True)
class Reading:
    """One prompt of a batch as both mergers read it, before either compares or sends it."""

    source: SourcePrompt
    words: tuple[str, ...]  # casefolded tokens, contractions spelt out
    identifiers: tuple[str, ...]  # identifier-like tokens in first-seen order
    is_ask: bool  # False for a reaction ("+1", "thanks", blank) set aside from the merge


def _clean(raw: str) -> str:
    """Trim a raw token to the part that means something.

    Quotes go from both ends, sentence punctuation and a path's slash from the end, and
    leading dashes unless a digit follows (`--verbose` reads as `verbose`, `-1` stays `-1`).
    """
    token = raw.strip("'")
    token = token.rstrip(".:'-")
    token = token.rstrip("/") or token  # src/worker/ is src/worker
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


def tokens(text: str) -> list[tuple[str, bool]]:
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


def _is_reaction(words: Sequence[str], author_words: frozenset[str]) -> bool:
    """True for a message made only of reaction words, "+N" and the batch's author names."""
    return all(
        w in _NOISE_WORDS or w.lstrip("@") in author_words or _PLUS_N.fullmatch(w) for w in words
    )


def read_batch(prompts: Sequence[SourcePrompt]) -> list[Reading]:
    """Read a batch: each prompt's `Reading`, in arrival order.

    Reactions ("+1", "thanks", "same as bob", blank) carry no ask when some prompt in the
    batch does; in a batch of only reactions every non-blank prompt counts as an ask, so
    that no merge is ever empty. Raises `ValueError` for an empty batch, a repeated id,
    or all-blank text.
    """
    if not prompts:
        raise ValueError("cannot merge an empty batch of prompts")
    repeated = sorted(i for i, n in Counter(p.prompt_id for p in prompts).items() if n > 1)
    if repeated:
        raise ValueError(f"prompt ids {repeated} appear more than once in the batch")
    author_words = frozenset(w.casefold() for p in prompts for w in re.findall(r"\w+", p.author))
    pairs = [tokens(p.text) for p in prompts]
    words = [tuple(t for t, _ in ps) for ps in pairs]
    carries = [not _is_reaction(ws, author_words) for ws in words]
    if not any(carries):
        carries = [bool(p.text.strip()) for p in prompts]
    if not any(carries):
        raise ValueError("cannot merge a batch in which every prompt is blank")
    return [
        Reading(
            source=prompt,
            words=ws,
            identifiers=tuple(dict.fromkeys(t for t, is_id in ps if is_id)),
            is_ask=carried,
        )
        for prompt, ps, ws, carried in zip(prompts, pairs, words, carries, strict=True)
    ]


def assemble(
    readings: Sequence[Reading],
    parts: Sequence[tuple[Sequence[int], str]],
    conflicts: Sequence[tuple[int, int]] = (),
) -> Merge:
    """Build the `Merge` for ``parts`` (prompt ids and instruction, in the order to render).

    ``parts`` must cover exactly the prompts that carry an ask. Each reaction supports the
    part holding the nearest ask before it (the part holding the first ask when none
    precedes), and its author is credited there. ``conflicts`` are pairs of part indexes.
    """
    part_of = {pid: index for index, (ids, _) in enumerate(parts) for pid in ids}
    first_ask = next(r.source.prompt_id for r in readings if r.is_ask)
    authors: list[dict[str, None]] = [{} for _ in parts]
    order = {r.source.prompt_id: n for n, r in enumerate(readings)}
    supported = part_of[first_ask]
    for reading in readings:
        if reading.is_ask:
            supported = part_of[reading.source.prompt_id]
        authors[supported][reading.source.author] = None
    groups = tuple(
        MergeGroup(
            prompt_ids=tuple(sorted(ids, key=order.__getitem__)),
            authors=tuple(names),
            instruction=instruction,
        )
        for (ids, instruction), names in zip(parts, authors, strict=True)
    )
    dropped = tuple(r.source.prompt_id for r in readings if not r.is_ask)
    return Merge(prompt=_render(groups, conflicts), groups=groups, dropped=dropped)


def _attribution(authors: Iterable[str]) -> str:
    # Names are data too: one line each, so no name can start a list item of its own.
    return ", ".join(" ".join(name.split()) or "someone" for name in authors)


def _render(groups: Sequence[MergeGroup], conflicts: Sequence[tuple[int, int]] = ()) -> str:
    """The prompt Claude receives for ``groups``.

    One group renders as its instruction, preceded by an "Asked by" line when it has
    several authors; several render as a numbered, attributed list under `_HEADER`.
    ``conflicts`` (pairs of group indexes) become a closing line naming the items that
    contradict each other, so Claude asks instead of silently picking a side.
    """
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
    for a, b in sorted({tuple(sorted(pair)) for pair in conflicts}):
        lines.append(
            f"Items {a + 1} and {b + 1} contradict each other: "
            "ask which to follow before acting on either."
        )
    return "\n".join(lines)
