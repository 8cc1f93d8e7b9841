"""Input sanitising and output neutralising: what reaches Claude is plain text, what reaches chat
neither pings a whole channel nor shows a configured secret.

Invariant: `sanitize_prompt` returns text with no terminal control sequence, no C0/C1 control
other than ``\\n`` and ``\\t``, no DEL and no bidi override, so what Claude reads is what every
participant saw; a `Redactor` never lets a configured secret through, even split across deltas.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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


class Redactor:
    """Replaces every configured secret with ``[redacted]``.

    Secrets shorter than `MIN_SECRET_CHARS` are ignored. At each position the longest secret
    that matches wins, so a secret that contains another is redacted whole.
    """

    __slots__ = ("_longest_chars", "_pattern", "_prefixes", "_secrets")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._prefixes: frozenset[str] = frozenset()
        self._longest_chars = 0
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Redact these too from now on (a rotated invite token, a token first seen in use)."""
        fresh = {s for s in secrets if len(s) >= MIN_SECRET_CHARS} - self._secrets
        if not fresh:
            return
        self._secrets |= fresh
        kept = sorted(self._secrets, key=lambda s: (-len(s), s))
        # Python's alternation is ordered, so listing the longest first makes it win.
        self._pattern = re.compile("|".join(map(re.escape, kept))) if kept else None
        self._prefixes = frozenset(s[:i] for s in kept for i in range(1, len(s)))
        self._longest_chars = len(kept[0]) if kept else 0

    @property
    def longest_chars(self) -> int:
        """Length of the longest secret kept; 0 when there is none."""
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
        if pattern is None:
            return delta
        buf = self._held + delta
        prefixes = self._redactor._prefixes
        # Whether a secret matches at position q depends only on buf[q:q + longest]; only the
        # positions closer than that to the end can still change their answer, and only if
        # what follows them is a proper prefix of some secret.
        undecided_from = len(buf) - self._redactor._longest_chars + 1
        out: list[str] = []
        pos = 0
        while True:
            match = pattern.search(buf, pos)
            stop = match.start() if match is not None else len(buf)
            # A match at `stop` is undecided too when a longer secret could still match there.
            held = next(
                (q for q in range(max(pos, undecided_from), stop + 1) if buf[q:] in prefixes),
                None,
            )
            if held is not None:
                out.append(buf[pos:held])
                pos = held
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
