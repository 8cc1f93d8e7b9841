"""Input sanitising and output neutralising: what reaches Claude is plain text, what reaches chat
neither pings a whole channel nor shows a configured secret.

Invariant: `sanitize_prompt` returns text with no terminal control sequence, no C0/C1 control
other than ``\\n`` and ``\\t``, no DEL and no bidi override, so what Claude reads is what every
participant saw; a `Redactor` never lets a configured secret through, even split across deltas,
whether written as is, spaced out, reversed, in base64 (or base64url) or in hex.

Redaction is the last line of defence, not the defence: the agent must not be able to read the
secrets at all. A model that is asked to leak one can always find an encoding not listed here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import NamedTuple

from bot import ConcordiaError

__all__ = [
    "MIN_SECRET_CHARS",
    "REDACTED",
    "ChatSafeStream",
    "Redactor",
    "StreamRedactor",
    "UnsafeInput",
    "clean_name",
    "neutralize_mentions",
    "sanitize_prompt",
    "strip_controls",
]

REDACTED = "[redacted]"
"""What a secret is replaced with."""

MIN_SECRET_CHARS = 8
"""Shorter secrets are ignored: redacting every "admin" or "1234" would mangle ordinary text."""


class UnsafeInput(ConcordiaError):
    """A prompt cannot be made safe by removing characters (NUL bytes, invalid UTF-8)."""


# ECMA-48 string controls (OSC, DCS, SOS, PM, APC) run to BEL or ST (ESC \ or 8-bit 0x9C). An
# unterminated string swallows the rest of the input, as it would on a terminal: hiding a
# payload there must not smuggle text to Claude that no participant saw.
_STRING_BODY = r"[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
_CSI_TAIL = (
    r"[0-?]*[ -/]*[@-~]"  # parameters, intermediates, final byte (incl. ESC[?2004h, ESC[200~)
)

_CONTROL = re.compile(
    r"\x1b(?:"
    r"[\]PX^_]"
    + _STRING_BODY  # ESC ] OSC, ESC P DCS, ESC X SOS, ESC ^ PM, ESC _ APC
    + r"|\["
    + _CSI_TAIL  # ESC [ CSI
    + r"|[ -/]*[0-~]"  # other escape sequences: ESC 7, ESC c, ESC ( B, ESC = ...
    r")?"  # a lone ESC goes too
    r"|[\x90\x98\x9d\x9e\x9f]"
    + _STRING_BODY  # 8-bit DCS, SOS, OSC, PM, APC
    + r"|\x9b"
    + _CSI_TAIL  # 8-bit CSI
    # C0 except \t \n \r (ESC is above), DEL, C1, bidi embeddings/overrides (U+202A-U+202E)
    # and isolates (U+2066-U+2069): the Trojan Source characters (CVE-2021-42574).
    + "|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
)
# Every match of _CONTROL (and every \r) starts with one of these. The alternation above gets no
# first-character optimisation from `re`; this single class does, and clean text skips `sub`.
_ANY_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


_SURROGATE = re.compile("[\ud800-\udfff]")


def sanitize_prompt(raw: str | bytes) -> str:
    """Return ``raw`` as plain text fit to send to Claude.

    Removes every terminal control and escape sequence (CSI incl. private modes and bracketed
    paste markers, OSC, DCS/SOS/PM/APC strings, two-character escapes, their 8-bit C1 forms),
    every other C0/C1 control except ``\\n`` and ``\\t``, DEL, and the Unicode bidi
    embeddings, overrides and isolates. Backspace is removed, not applied. ``\\r\\n`` and a lone
    ``\\r`` become ``\\n``. Everything else, whitespace at either end included, is kept: the
    caller decides what an empty prompt is. Pure and idempotent.

    Raises:
        UnsafeInput: ``raw`` is bytes that are not valid UTF-8, text holding a lone
            surrogate (no UTF-8 can encode it), or contains a NUL.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsafeInput("prompt is not valid UTF-8") from exc
    else:
        text = raw
    if "\x00" in text:
        raise UnsafeInput("prompt contains a NUL byte")
    if _SURROGATE.search(text):  # JSON's "\ud800" escapes reach us as str, not bytes
        raise UnsafeInput("prompt is not valid UTF-8 (it holds a lone surrogate)")
    if _ANY_CONTROL.search(text) is None:
        return text
    text = _CONTROL.sub("", text)
    # After removal, so "a\r\x1b[K\n" becomes one line break, not two.
    return text.replace("\r\n", "\n").replace("\r", "\n")


# Between two characters of a spelled-out secret: up to 4 of anything but an ASCII letter or
# digit ("a b c", "a-b-c", '"a", "b"', one character a line, or nothing: the literal secret).
_SPELLED_GAP = r"[^A-Za-z0-9]{0,4}"
# GNU base64 wraps at 76 columns; allow a line break (CRLF included) anywhere.
_BASE64_GAP = r"\s{0,2}"
# xxd's "7b22 6465" grouping and xxd -p's line breaks, "\x41\x42", "41:42".
_HEX_GAP = r"[^0-9A-Fa-f]{0,2}"
_GAP_WIDEST_CHARS = {_SPELLED_GAP: 4, _BASE64_GAP: 2, _HEX_GAP: 2}
_BASE64URL = str.maketrans("+/", "-_")
# `re` parses nested groups recursively: the nested-optional pattern of a 250-place form
# already raises RecursionError (measured on 3.11), and an env secret or its hex can be longer.
# Compiling grows with it too (10 tokens: 57 ms at 32 places, 99 ms at 64). Past this many
# places, a tail that begins with a form's first places is held back as if it could still
# match: holding back more than needed is safe, and such a tail is a leak in the making anyway.
_PARTIAL_PLACES = 32


class _Form(NamedTuple):
    """One way a secret can be written: the characters allowed at each place, in order, and
    the pattern for what may stand between two places."""

    places: tuple[str, ...]
    gap: str

    def longest_chars(self) -> int:
        """Length of the longest text this form matches (every gap at its widest)."""
        return len(self.places) + _GAP_WIDEST_CHARS[self.gap] * (len(self.places) - 1)

    def branches(self) -> list[tuple[str, str]]:
        """The form's pattern as (first character, pattern of the rest) pairs."""
        rest = "".join(self.gap + _place(chars) for chars in self.places[1:])
        return [(first, rest) for first in self.places[0]]

    def partial_branches(self) -> list[tuple[str, str]]:
        """Like `branches`, for a pattern anchored at the end that matches any text that could
        still grow into this form: ``c0(?:G(?:c1(?:G(?:c2)?)?)?)?\\Z`` for places c0 c1 c2."""
        kept = self.places[:_PARTIAL_PLACES]
        nested = r"[\s\S]*" if len(kept) < len(self.places) else ""
        for chars in reversed(kept[1:]):
            nested = f"(?:{self.gap}(?:{_place(chars)}{nested})?)?"
        return [(first, nested + r"\Z") for first in kept[0]]


def _place(chars: str) -> str:
    return re.escape(chars) if len(chars) == 1 else f"[{re.escape(chars)}]"


def _forms(secret: str) -> set[_Form]:
    """Every form of ``secret`` that `Redactor` recognises."""
    forms = {_Form(tuple(secret), _SPELLED_GAP), _Form(tuple(secret[::-1]), _SPELLED_GAP)}
    data = secret.encode()
    # Inside a longer encoded text the secret starts at any offset modulo 3. Skipping its first
    # 0, 1 or 2 bytes puts the rest on a group boundary; the whole groups made only of secret
    # bytes then encode the same whatever surrounds them.
    for skip in range(3):
        whole = data[skip : skip + (len(data) - skip) // 3 * 3]
        stable = base64.b64encode(whole).decode("ascii")
        if len(stable) >= MIN_SECRET_CHARS:
            forms.add(_Form(tuple(stable), _BASE64_GAP))
            forms.add(_Form(tuple(stable.translate(_BASE64URL)), _BASE64_GAP))
    forms.add(_Form(tuple(c + c.upper() if c.isalpha() else c for c in data.hex()), _HEX_GAP))
    return forms


def _compile_by_first_char(branches: Iterable[tuple[str, str]]) -> re.Pattern[str]:
    """One alternation of the branches, in their order, grouped by first character.

    Branches that start with different characters never match at the same position, so the
    grouping keeps the order where it matters. `re` then rejects most positions on one
    character test and tries only that character's few branches at the others (50,000
    characters of Markdown, 10 tokens: 0.8 ms against 1.2 ms for the flat alternation)."""
    groups: dict[str, list[str]] = {}
    for first, rest in branches:
        groups.setdefault(first, []).append(rest)
    return re.compile(
        "|".join(f"{re.escape(first)}(?:{'|'.join(rests)})" for first, rests in groups.items())
    )


class Redactor:
    """Replaces every configured secret with ``[redacted]``.

    Each secret is recognised written as is, with up to 4 characters other than ASCII letters
    and digits between any two of its characters (``a b c``, ``a-b-c``, ``"a", "b"``), reversed
    (with the same separators), as base64 or base64url of its UTF-8 bytes at any alignment
    inside a longer encoded text (the whole groups that depend on the secret alone, with up to 2
    whitespace characters between any two), and as hex of its UTF-8 bytes in either case (with
    up to 2 non-hex characters between any two digits). This is the last line of defence: a
    secret the agent can read, it can leak in an encoding not listed here.

    Secrets shorter than `MIN_SECRET_CHARS` are ignored. At each position the longest form
    that matches wins, so a secret that contains another is redacted whole.
    """

    __slots__ = ("_longest_chars", "_partial", "_pattern", "_secrets")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._partial: re.Pattern[str] | None = None
        self._longest_chars = 0
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Redact these too from now on (a rotated invite token, a token first seen in use)."""
        fresh = {s for s in secrets if len(s) >= MIN_SECRET_CHARS} - self._secrets
        if not fresh:
            return
        self._secrets |= fresh
        forms = sorted(
            {form for secret in self._secrets for form in _forms(secret)},
            key=lambda form: (-len(form.places), form),
        )
        # Python's alternation is ordered, so listing the longest first makes it win.
        self._pattern = _compile_by_first_char(b for form in forms for b in form.branches())
        self._partial = _compile_by_first_char(b for form in forms for b in form.partial_branches())
        self._longest_chars = max(form.longest_chars() for form in forms)

    @property
    def longest_chars(self) -> int:
        """Length of the longest text that can match (a secret in its widest form); 0 when
        there is no secret."""
        return self._longest_chars

    def redact(self, text: str) -> str:
        """Return ``text`` with every secret replaced by ``[redacted]``. Pure."""
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)


class StreamRedactor:
    """Redacts a text that arrives in pieces, where a secret may straddle two pieces.

    Contract: the concatenation of every `feed` result and the final `flush` equals
    ``redactor.redact`` of the concatenation of every fed piece. `feed` holds back only the
    trailing characters that could still begin a secret, at most ``longest_chars - 1`` of them.
    Not safe to share between tasks; one stream, one owner.
    """

    __slots__ = ("_held", "_redactor")

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._held = ""

    def feed(self, delta: str) -> str:
        """Take the next piece; return the text that is now safe to emit (maybe "")."""
        pattern = self._redactor._pattern
        partial = self._redactor._partial
        if pattern is None or partial is None:
            return delta
        buf = self._held + delta
        # Whether a secret matches at position q depends only on buf[q:q + longest]; only the
        # positions closer than that to the end can still change their answer, and only if
        # what follows them could still grow into a match.
        undecided_from = len(buf) - self._redactor._longest_chars + 1
        out: list[str] = []
        pos = 0
        while True:
            match = pattern.search(buf, pos)
            stop = match.start() if match is not None else len(buf)
            # A match at `stop` is undecided too when a longer form could still match there.
            first = max(pos, undecided_from)
            undecided = partial.search(buf, first) if first <= stop else None
            if undecided is not None and undecided.start() <= stop:
                out.append(buf[pos : undecided.start()])
                pos = undecided.start()
                break
            out.append(buf[pos:stop])
            if match is None:
                pos = len(buf)
                break
            out.append(REDACTED)
            pos = match.end()
        self._held = buf[pos:]
        return "".join(out)

    def flush(self) -> str:
        """Return whatever is held back, redacted, and start afresh. Idempotent."""
        rest, self._held = self._held, ""
        return self._redactor.redact(rest)


_MASS_MENTION = re.compile(r"@(?=everyone|here)", re.IGNORECASE)


_NAME_CHARS = 64


def clean_name(name: str) -> str:
    """A display name fit to show anywhere: no controls or bidi overrides, one line, capped.

    Names are chosen by participants (the WebSocket client's ``--name``, a chat display
    name) and are quoted to Claude and to every client, so they get the prompt's rules."""
    text = " ".join(strip_controls(name).split())[:_NAME_CHARS].strip()
    return text or "someone"


def neutralize_mentions(text: str) -> str:
    """Make ``@everyone`` and ``@here`` (any case) unable to ping, by putting U+200B after "@".

    Deliberately not word-bounded: a ZWSP inside "me@heresy" is invisible and harmless, a
    missed ping is not. Idempotent. Platform-specific syntax (``<@&id>``, ``<!channel>``) is the
    adapters' job.
    """
    return _MASS_MENTION.sub("@\u200b", text)


# Output may be cut mid-sequence between two deltas: an introducer this close to the end of
# what has arrived is held back until the rest comes. Every emitted piece is stripped anyway,
# so the hold only keeps a split sequence's tail from showing up as stray text.
_INTRODUCERS = re.compile("[\x1b\x90\x98\x9b\x9d\x9e\x9f]")
_ESCAPE_HOLD_CHARS = 64
# "@every" at the end of one delta and "one" at the start of the next must still be caught.
_MENTION_TAIL = re.compile(r"@[A-Za-z]{0,7}$")


def strip_controls(text: str) -> str:
    """Remove control and escape sequences from output (NUL included, no error): the
    terminals of `concordia join` clients render what Claude writes."""
    if _ANY_CONTROL.search(text) is None:
        return text
    text = _CONTROL.sub("", text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


class ChatSafeStream:
    """Claude's streamed output made fit for chat: no control sequences, no configured
    secret, no mass mention, even when any of them is split across deltas.

    The concatenation of every `feed` and the final `flush` is the safe form of the whole
    text. One stream per turn, owned by the runner.
    """

    __slots__ = ("_raw", "_redactor", "_tail")

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = StreamRedactor(redactor)
        self._raw = ""
        self._tail = ""

    def feed(self, delta: str) -> str:
        """Take the next delta; return what is safe to show now (maybe "")."""
        buf = self._raw + delta
        cut = len(buf)
        for match in _INTRODUCERS.finditer(buf, max(0, len(buf) - _ESCAPE_HOLD_CHARS)):
            cut = match.start()
            break
        self._raw = buf[cut:]
        text = self._tail + self._redactor.feed(strip_controls(buf[:cut]))
        mention = _MENTION_TAIL.search(text)
        cut = mention.start() if mention else len(text)
        self._tail = text[cut:]
        return neutralize_mentions(text[:cut])

    def flush(self) -> str:
        """Return everything held back, made safe; the stream starts afresh."""
        text = self._tail + self._redactor.feed(strip_controls(self._raw)) + self._redactor.flush()
        self._raw = self._tail = ""
        return neutralize_mentions(text)
