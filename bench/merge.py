"""Merge quality: how faithfully a merger turns a labelled burst of prompts into one instruction.

Each line of the data file is one burst that a careful human has labelled (format in
`parse_burst`): which prompts ask the same thing (``same_intent``: they ask it in the
same or other words, or one ask wholly contains the other; partial overlaps are separate
intents), the words a faithful instruction must keep for each ask (``must_keep``), which
asks contradict each other (``conflicts``) and which prompts are pure reactions
(``noise``). Every burst is merged once, in file order, and scored:

- sources accounted: bursts whose every prompt id lands exactly once in a group or in
  ``dropped``, with no invented id. Anything below 100 % breaks the Merger contract,
  and the run exits 1.
- same-intent pairs merged: pairs from one ``same_intent`` list that share a group.
- false merges: pairs sharing a group that no ``same_intent`` list holds (lower is better).
- must-keep recall: ``must_keep`` words found, ignoring case, in the merged prompt.
- injection bursts intact: ``injection`` bursts with every id accounted for, no prompt
  that carries an ask dropped, and every must-keep word kept.
- conflicts surfaced: conflict pairs whose two sides keep all their must-keep words.
- noise dropped: reaction ids in ``dropped`` (for information; crediting one to a group
  is not wrong).

    python -m bench.merge --data tests/data/merge.jsonl [--merger local|gemini]
        [--dump OUT.jsonl] [--config PATH]

``--merger gemini`` builds the merger the bot would from ``--config`` (or
$CONCORDIA_CONFIG, or the defaults) and exits 2 when no Gemini key is set.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import command_line, print_table
from bot.app import build_merger
from bot.config import ConfigError
from bot.merge import Merger
from bot.merge_local import LocalMerger
from bot.model import SourcePrompt

__all__ = [
    "KINDS",
    "Burst",
    "Outcome",
    "Scores",
    "Tally",
    "dump",
    "load_bursts",
    "merge_all",
    "parse_burst",
    "score",
]

KINDS = (
    "duplicate",
    "paraphrase",
    "overlap",
    "conflict",
    "distinct",
    "injection",
    "noise",
    "mixed",
)
_KEYS = frozenset({"id", "kind", "prompts", "same_intent", "must_keep", "conflicts", "noise"})
_PROMPT_KEYS = frozenset({"id", "author", "text"})
_BURST_ID = re.compile(r"b\d+")
# Kinds whose bursts may hold a pure injection line, the only prompt with nothing to keep.
_KINDS_WITH_PURE_INJECTION = frozenset({"injection", "mixed"})
_MIXED_PROMPTS = range(4, 9)
# A must-keep word is what carries the ask; these carry none.
# fmt: off
_STOPWORDS = frozenset({
    "a", "an", "the", "and", "or", "to", "of", "in", "on", "for", "at", "by", "with", "it",
    "is", "be", "please", "pls", "can", "you", "this", "that", "we", "i", "also", "just",
})
# fmt: on


@dataclass(frozen=True, slots=True)
class Burst:
    """One labelled burst; ids in the labels all name prompts of the burst."""

    burst_id: str
    kind: str
    prompts: tuple[SourcePrompt, ...]
    same_intent: tuple[frozenset[int], ...]
    must_keep: Mapping[int, tuple[str, ...]]
    conflicts: tuple[tuple[int, int], ...]
    noise: frozenset[int]

    @property
    def same_pairs(self) -> frozenset[frozenset[int]]:
        """Every unordered pair of ids that one ``same_intent`` list holds."""
        return frozenset(
            frozenset(pair) for ids in self.same_intent for pair in itertools.combinations(ids, 2)
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the merger made of one burst; ``error`` is set (and the rest empty) if it raised."""

    burst: Burst
    groups: tuple[tuple[int, ...], ...]
    dropped: tuple[int, ...]
    instruction: str
    elapsed_s: float
    error: str = ""


@dataclass(slots=True)
class Tally:
    """``hits`` out of ``total``, shown as a percentage with its counts."""

    hits: int = 0
    total: int = 0

    def add(self, is_hit: bool) -> None:
        self.hits += is_hit
        self.total += 1

    def __str__(self) -> str:
        if not self.total:
            return "- (0/0)"
        return f"{100 * self.hits / self.total:.1f} % ({self.hits}/{self.total})"


@dataclass(slots=True)
class Scores:
    accounted: Tally = field(default_factory=Tally)  # bursts
    same_intent: Tally = field(default_factory=Tally)  # same-intent pairs
    false_merges: Tally = field(default_factory=Tally)  # grouped pairs; hits are the false ones
    must_keep: Tally = field(default_factory=Tally)  # words
    injection_intact: Tally = field(default_factory=Tally)  # injection bursts
    conflicts: Tally = field(default_factory=Tally)  # conflict pairs
    noise_dropped: Tally = field(default_factory=Tally)  # noise ids


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id_list(value: object, what: str, known: Iterable[int]) -> list[int]:
    """``value`` as a list of known prompt ids without repeats, or `ValueError`."""
    if not isinstance(value, list) or not all(_is_int(i) for i in value):
        raise ValueError(f"{what} must be a list of prompt ids, got {value!r}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"{what} names ids {unknown} that are not prompts of the burst")
    repeated = sorted(i for i, n in Counter(value).items() if n > 1)
    if repeated:
        raise ValueError(f"{what} repeats ids {repeated}")
    return value


def parse_burst(raw: object) -> Burst:
    """Check one decoded line of the data file and return it as a `Burst`.

    A burst is an object with exactly the keys ``id`` ("b01"…), ``kind`` (one of `KINDS`),
    ``prompts`` (objects with ``id``, ``author``, ``text``; ids 1, 2, … in order),
    ``same_intent`` (disjoint lists of two or more ids), ``must_keep`` (every non-noise
    id, as a string, to 1-4 words found in that prompt's text; an empty list only for a
    pure injection line), ``conflicts`` (pairs of non-noise ids not sharing an intent)
    and ``noise`` (ids of pure reactions). Raises `ValueError` saying what is wrong.
    """
    if not isinstance(raw, dict):
        raise ValueError("a burst must be a JSON object")
    unknown, missing = sorted(raw.keys() - _KEYS), sorted(_KEYS - raw.keys())
    if unknown or missing:
        raise ValueError(f"unknown keys {unknown}, missing keys {missing}")
    burst_id = raw["id"]
    if not isinstance(burst_id, str) or not _BURST_ID.fullmatch(burst_id):
        raise ValueError(f'id must look like "b01", got {burst_id!r}')
    try:
        return _parse_labels(burst_id, raw)
    except ValueError as exc:
        raise ValueError(f"burst {burst_id}: {exc}") from None


def _parse_labels(burst_id: str, raw: dict[str, object]) -> Burst:
    kind = raw["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    prompts = _parse_prompts(raw["prompts"])
    ids = [p.prompt_id for p in prompts]
    text_of = {p.prompt_id: p.text.casefold() for p in prompts}

    noise = frozenset(_id_list(raw["noise"], "noise", ids))
    same_raw = raw["same_intent"]
    if not isinstance(same_raw, list):
        raise ValueError(f"same_intent must be a list of id lists, got {same_raw!r}")
    same_intent = tuple(frozenset(_id_list(g, "a same_intent list", ids)) for g in same_raw)
    if any(len(g) < 2 for g in same_intent):
        raise ValueError("each same_intent list needs at least two ids")
    intent_counts = Counter(i for g in same_intent for i in g)
    in_two = sorted(i for i, n in intent_counts.items() if n > 1)
    if in_two:
        raise ValueError(f"ids {in_two} are in two same_intent lists; merge the lists")
    if noise & intent_counts.keys():
        raise ValueError(f"noise ids {sorted(noise & intent_counts.keys())} are in same_intent")

    must_keep = _parse_must_keep(raw["must_keep"], ids, noise, text_of)
    if kind not in _KINDS_WITH_PURE_INJECTION and not all(must_keep.values()):
        raise ValueError(f"an empty must_keep list is only for injection lines, not in a {kind}")

    conflicts_raw = raw["conflicts"]
    if not isinstance(conflicts_raw, list):
        raise ValueError(f"conflicts must be a list of id pairs, got {conflicts_raw!r}")
    same_pairs = {frozenset(p) for g in same_intent for p in itertools.combinations(g, 2)}
    conflicts: list[tuple[int, int]] = []
    for pair in conflicts_raw:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError(f"a conflict must be a pair of two ids, got {pair!r}")
        a, b = _id_list(pair, "a conflict", ids)
        if {a, b} & noise:
            raise ValueError(f"conflict {pair} names a noise id")
        if frozenset((a, b)) in same_pairs:
            raise ValueError(f"conflict {pair} is also labelled same_intent")
        conflicts.append((a, b))

    if kind == "conflict" and not conflicts:
        raise ValueError("a conflict burst needs at least one conflicts pair")
    if kind == "noise" and not noise:
        raise ValueError("a noise burst needs at least one noise id")
    if kind in ("duplicate", "paraphrase") and not same_intent:
        raise ValueError(f"a {kind} burst needs at least one same_intent list")
    if kind == "mixed" and len(prompts) not in _MIXED_PROMPTS:
        raise ValueError(f"a mixed burst holds 4 to 8 prompts, not {len(prompts)}")
    return Burst(
        burst_id=burst_id,
        kind=kind,
        prompts=prompts,
        same_intent=same_intent,
        must_keep=must_keep,
        conflicts=tuple(conflicts),
        noise=noise,
    )


def _parse_prompts(raw: object) -> tuple[SourcePrompt, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("prompts must be a non-empty list")
    prompts = []
    for n, item in enumerate(raw, start=1):
        if not isinstance(item, dict) or item.keys() != _PROMPT_KEYS:
            raise ValueError(f"prompt {n} must be an object with exactly id, author and text")
        if not _is_int(item["id"]) or item["id"] != n:
            raise ValueError(
                f"prompt ids must count 1, 2, … in order; prompt {n} has {item['id']!r}"
            )
        author, text = item["author"], item["text"]
        if not (isinstance(author, str) and author.strip()):
            raise ValueError(f"prompt {n} needs a non-blank author")
        if not (isinstance(text, str) and text.strip()):
            raise ValueError(f"prompt {n} needs a non-blank text")
        prompts.append(SourcePrompt(prompt_id=n, author=author, text=text, platform="bench"))
    return tuple(prompts)


def _parse_must_keep(
    raw: object, ids: Sequence[int], noise: frozenset[int], text_of: Mapping[int, str]
) -> dict[int, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise ValueError("must_keep must be an object from prompt id to a list of words")
    must_keep: dict[int, tuple[str, ...]] = {}
    for key, words in raw.items():
        if not (key.isdigit() and int(key) in ids):
            raise ValueError(f"must_keep key {key!r} is not a prompt id of the burst")
        prompt_id = int(key)
        if prompt_id in noise:
            raise ValueError(f"must_keep has noise id {prompt_id}: a reaction keeps nothing")
        if not (isinstance(words, list) and all(isinstance(w, str) and w.strip() for w in words)):
            raise ValueError(f"must_keep[{key!r}] must be a list of non-blank words")
        if len(words) > 4:
            raise ValueError(f"must_keep[{key!r}] has {len(words)} words; keep the 1-4 that matter")
        for word in words:
            if word.casefold() in _STOPWORDS:
                raise ValueError(f"must_keep[{key!r}] holds the stopword {word!r}")
            if word.casefold() not in text_of[prompt_id]:
                raise ValueError(f"must_keep[{key!r}] word {word!r} is not in prompt {key}'s text")
        must_keep[prompt_id] = tuple(words)
    missing = sorted(set(ids) - noise - must_keep.keys())
    if missing:
        raise ValueError(f"prompts {missing} are not noise, so they need a must_keep entry")
    return must_keep


def load_bursts(path: Path) -> list[Burst]:
    """Every burst of the JSON-lines file at ``path``; blank lines are skipped.

    Raises `ValueError` naming the file and line of the first malformed burst, or of a
    burst id used twice; `OSError` if the file cannot be read.
    """
    bursts: list[Burst] = []
    lines_of: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                burst = parse_burst(json.loads(line))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                raise ValueError(f"{path}:{number}: {exc}") from None
            if burst.burst_id in lines_of:
                raise ValueError(
                    f"{path}:{number}: burst id {burst.burst_id} is already used on line"
                    f" {lines_of[burst.burst_id]}"
                )
            lines_of[burst.burst_id] = number
            bursts.append(burst)
    if not bursts:
        raise ValueError(f"{path}: holds no bursts")
    return bursts


async def merge_all(bursts: Sequence[Burst], merger: Merger) -> list[Outcome]:
    """Merge each burst in turn; a burst whose merge raises `ValueError` is kept as failed."""
    outcomes = []
    for burst in bursts:
        started = time.monotonic()
        try:
            merge = await merger.merge(burst.prompts)
        except ValueError as exc:
            elapsed_s = time.monotonic() - started
            print(f"{burst.burst_id}: merge failed: {exc}", file=sys.stderr)
            outcomes.append(Outcome(burst, (), (), "", elapsed_s, error=str(exc)))
            continue
        outcomes.append(
            Outcome(
                burst=burst,
                groups=tuple(g.prompt_ids for g in merge.groups),
                dropped=merge.dropped,
                instruction=merge.prompt,
                elapsed_s=time.monotonic() - started,
            )
        )
    return outcomes


def score(outcomes: Iterable[Outcome]) -> Scores:
    """Tally every metric of the module docstring over ``outcomes``."""
    scores = Scores()
    for outcome in outcomes:
        burst = outcome.burst
        ids = [p.prompt_id for p in burst.prompts]
        placed = [i for g in outcome.groups for i in g] + list(outcome.dropped)
        is_accounted = not outcome.error and Counter(placed) == Counter(ids)
        scores.accounted.add(is_accounted)

        group_of = {i: n for n, g in enumerate(outcome.groups) for i in g}
        same_pairs = burst.same_pairs
        for pair in same_pairs:
            a, b = pair
            scores.same_intent.add(a in group_of and group_of.get(a) == group_of.get(b))
        for group in outcome.groups:
            for a, b in itertools.combinations(group, 2):
                scores.false_merges.add(frozenset((a, b)) not in same_pairs)

        text = outcome.instruction.casefold()
        kept = {i: all(w.casefold() in text for w in ws) for i, ws in burst.must_keep.items()}
        for words in burst.must_keep.values():
            for word in words:
                scores.must_keep.add(word.casefold() in text)
        if burst.kind == "injection":
            asks_grouped = all(i in group_of for i, ws in burst.must_keep.items() if ws)
            scores.injection_intact.add(is_accounted and asks_grouped and all(kept.values()))
        for a, b in burst.conflicts:
            scores.conflicts.add(kept[a] and kept[b])
        for i in burst.noise:
            scores.noise_dropped.add(i in outcome.dropped)
    return scores


def dump(outcomes: Iterable[Outcome], path: Path) -> None:
    """Write one JSON line per burst: its id, its groups' prompt ids and the merged prompt."""
    with path.open("w", encoding="utf-8") as out:
        for outcome in outcomes:
            line = {
                "id": outcome.burst.burst_id,
                "groups": [list(g) for g in outcome.groups],
                "instruction": outcome.instruction,
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


class _NoGeminiKey(Exception):
    pass


async def _run(
    bursts: Sequence[Burst], merger_name: str, config: Path | None
) -> tuple[list[Outcome], list[list[object]]]:
    """Merge every burst with the chosen merger; also return its extra table rows."""
    if merger_name == "local":
        return await merge_all(bursts, LocalMerger()), []
    # Imported here, so that --merger local runs whatever state the Gemini side is in.
    from bot.config import load_settings
    from bot.merge_gemini import GeminiMerger

    settings = load_settings(config)
    merger = build_merger(settings, os.environ)
    if not isinstance(merger, GeminiMerger):
        raise _NoGeminiKey(
            f"no Gemini key is set: export ${settings.gemini.api_key_env} (the variable"
            " gemini.api_key_env names) to bench --merger gemini"
        )
    try:
        outcomes = await merge_all(bursts, merger)
    finally:
        await merger.aclose()
    print(merger.describe())
    print()
    return outcomes, [["merges that fell back to local", str(merger.fallbacks), "merges"]]


def _print_report(outcomes: Sequence[Outcome], extra_rows: list[list[object]]) -> Scores:
    scores = score(outcomes)
    elapsed_s = sum(o.elapsed_s for o in outcomes)
    prompts = sum(len(o.burst.prompts) for o in outcomes)
    print(f"{len(outcomes)} bursts, {prompts} prompts")
    print()
    rows: list[list[object]] = [
        ["sources accounted (must be 100 %)", scores.accounted, "bursts"],
        ["same-intent pairs merged", scores.same_intent, "pairs"],
        ["false merges (lower is better)", scores.false_merges, "grouped pairs"],
        ["must-keep recall", scores.must_keep, "words"],
        ["injection bursts intact", scores.injection_intact, "bursts"],
        ["conflicts surfaced", scores.conflicts, "pairs"],
        ["noise dropped (informational)", scores.noise_dropped, "reactions"],
        ["time total", f"{1000 * elapsed_s:.1f} ms", ""],
        ["time per burst (mean)", f"{1000 * elapsed_s / len(outcomes):.2f} ms", ""],
        *extra_rows,
    ]
    print_table(["metric", "result", "of"], rows)
    print()
    by_kind = {kind: score(o for o in outcomes if o.burst.kind == kind) for kind in KINDS}
    print_table(
        [
            "kind",
            "accounted",
            "same-intent merged",
            "false merges",
            "must-keep recall",
            "conflicts",
        ],
        [
            [kind, s.accounted, s.same_intent, s.false_merges, s.must_keep, s.conflicts]
            for kind, s in by_kind.items()
        ],
    )
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.merge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="labelled bursts (JSON lines)")
    parser.add_argument("--merger", choices=("local", "gemini"), default="local")
    parser.add_argument("--dump", type=Path, help="write each burst's groups and prompt here")
    parser.add_argument("--config", type=Path, help="config.toml for --merger gemini")
    args = parser.parse_args()
    try:
        bursts = load_bursts(args.data)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"{exc}\n")
    flags: dict[str, object] = {"data": args.data, "merger": args.merger}
    flags.update({k: v for k in ("dump", "config") if (v := getattr(args, k)) is not None})
    print(command_line("bench.merge", flags))
    print()
    try:
        outcomes, extra_rows = asyncio.run(_run(bursts, args.merger, args.config))
    except (ConfigError, _NoGeminiKey) as exc:
        parser.exit(2, f"{exc}\n")
    if args.dump is not None:
        dump(outcomes, args.dump)
    scores = _print_report(outcomes, extra_rows)
    if scores.accounted.hits < scores.accounted.total:
        sys.exit("FAIL: some bursts do not account for every prompt exactly once")


if __name__ == "__main__":
    main()
