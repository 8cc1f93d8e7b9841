"""The hostile-input corpus: ``tests/data/hostile/<category>.jsonl``, one case per line.

Every line is a JSON object with an ``id`` (unique across the corpus), its ``category`` (the
file's name), an ``expect`` (what must happen: the names each category allows are in
`EXPECTS`) and the input: ``text`` (a str; ``prefix`` + ``text`` * ``repeat`` + ``suffix``
when those are given) or ``b64`` (raw bytes), ``token``, ``command``. ``transports`` limits a
case to some of `TRANSPORTS` (all when absent; ``note`` says why), and ``on`` maps a transport
to the fields it overrides there (``{"websocket": {"expect": "closed", "close_code": 1007}}``).

Texts may name run-time values as ``{{name}}`` (tokens minted at start, a fake's ids): `fill`
replaces them, and a name the caller does not provide is an error, not an empty string.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "CATEGORIES",
    "CONTROL_CHARS",
    "CORPUS_DIR",
    "EXPECTS",
    "TRANSPORTS",
    "Case",
    "CorpusError",
    "fill",
    "load",
    "load_all",
    "placeholders",
]

CORPUS_DIR = Path(__file__).parent / "data" / "hostile"
TRANSPORTS = ("memory", "websocket", "discord", "slack")
EXPECTS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "control": frozenset({"sanitized", "refused", "closed", "malformed"}),
        "size": frozenset({"refused", "sanitized", "verbatim", "closed"}),
        "flood": frozenset({"paced"}),
        "tokens": frozenset({"refused", "slowed"}),
        "shell": frozenset({"refused", "ran", "timed_out", "capped", "impostor_refused"}),
        "output": frozenset({"safe_output", "no_unfurl"}),
        "files": frozenset({"mode", "log_free_of"}),
        "exfil": frozenset({"kept_out"}),
    }
)
CATEGORIES = tuple(EXPECTS)
# What must never reach Claude: C0/C1 controls but \t and \n, DEL, bidi embeddings, overrides
# and isolates (bot.safety's invariant, restated here so the corpus is checked independently).
CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_INPUT_KEYS = ("text", "b64", "token", "token_json", "command")


class CorpusError(ValueError):
    """A corpus line is malformed; the message names the file, the line and the key."""


@dataclass(frozen=True, slots=True)
class Case:
    """One corpus line. ``fields`` is the whole line, read-only."""

    id: str
    category: str
    expect: str
    transports: tuple[str, ...]
    fields: Mapping[str, Any] = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def on(self, transport: str) -> Case:
        """The case as it applies to ``transport`` (its ``on`` overrides merged in)."""
        override = dict(self.fields.get("on", {}).get(transport, {}))
        if not override:
            return self
        merged = {**self.fields, **override}
        return Case(self.id, self.category, merged["expect"], self.transports, _frozen(merged))

    def text(self, values: Mapping[str, str] | None = None, key: str = "text") -> str:
        """``prefix + fields[key] * repeat + suffix``, with ``{{name}}`` filled from ``values``."""
        body = fill(self.fields[key], values or {})
        repeat = int(self.fields.get("repeat", 1))
        prefix = fill(self.fields.get("prefix", ""), values or {})
        suffix = fill(self.fields.get("suffix", ""), values or {})
        return prefix + body * repeat + suffix

    def data(self) -> bytes:
        """The raw bytes of a ``b64`` case."""
        return base64.b64decode(self.fields["b64"], validate=True)


def fill(template: str, values: Mapping[str, str]) -> str:
    """``template`` with every ``{{name}}`` replaced; KeyError names a missing value."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for {{{{{name}}}}} in {template[:60]!r}")
        return values[name]

    return _PLACEHOLDER.sub(replace, template)


def placeholders(template: str) -> list[str]:
    """The names ``template`` refers to, in order."""
    return _PLACEHOLDER.findall(template)


def load(category: str) -> list[Case]:
    """Every case of ``category``, in file order; CorpusError for a malformed line."""
    if category not in EXPECTS:
        raise CorpusError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    path = CORPUS_DIR / f"{category}.jsonl"
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            cases.append(_parse(line, category, f"{path.name}:{number}"))
    return cases


def load_all() -> list[Case]:
    """The whole corpus; CorpusError also for an id used twice."""
    cases = [case for category in CATEGORIES for case in load(category)]
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise CorpusError(f"id {case.id!r} is used twice")
        seen.add(case.id)
    return cases


def _parse(line: str, category: str, where: str) -> Case:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{where}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CorpusError(f"{where}: a case is a JSON object")
    for key in ("id", "category", "expect"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise CorpusError(f"{where}: {key} must be a non-empty string")
    if raw["category"] != category:
        raise CorpusError(f"{where}: category {raw['category']!r} in the {category} file")
    transports = tuple(raw.get("transports", TRANSPORTS))
    unknown = sorted(set(transports) - set(TRANSPORTS)) + sorted(
        set(raw.get("on", {})) - set(transports)
    )
    if unknown or not transports:
        raise CorpusError(f"{where}: transports must be some of {TRANSPORTS}, got {unknown}")
    for expect in [
        raw["expect"],
        *(o.get("expect", raw["expect"]) for o in raw.get("on", {}).values()),
    ]:
        if expect not in EXPECTS[category]:
            raise CorpusError(
                f"{where}: expect {expect!r} is not one of {sorted(EXPECTS[category])}"
            )
    if category in ("control", "size") and not any(k in raw for k in _INPUT_KEYS):
        raise CorpusError(f"{where}: an input ({' or '.join(_INPUT_KEYS)}) is required")
    if "b64" in raw:
        try:
            base64.b64decode(raw["b64"], validate=True)
        except ValueError as exc:
            raise CorpusError(f"{where}: b64 is not base64 ({exc})") from None
    if raw["expect"] == "sanitized" and not isinstance(raw.get("clean"), str):
        raise CorpusError(f"{where}: a sanitized case needs the exact clean text")
    if raw["expect"] == "refused" and category != "tokens" and "reason_contains" not in raw:
        raise CorpusError(f"{where}: a refused case needs reason_contains")
    return Case(raw["id"], category, raw["expect"], transports, _frozen(raw))


def _frozen(raw: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(raw))
