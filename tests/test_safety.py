"""bot.safety: prompt sanitising, secret redaction (whole and streamed), mention neutralising."""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
from collections.abc import Callable

import pytest

from bot import ConcordiaError
from bot.safety import (
    MIN_SECRET_CHARS,
    REDACTED,
    Redactor,
    StreamRedactor,
    UnsafeInput,
    clean_name,
    neutralize_mentions,
    sanitize_prompt,
)

# Everything sanitize_prompt must never let through.
_FORBIDDEN = {chr(c) for c in range(0x20) if chr(c) not in "\n\t"} | {
    chr(c) for c in range(0x7F, 0xA0)
}
_FORBIDDEN |= {chr(c) for c in range(0x202A, 0x202F)} | {chr(c) for c in range(0x2066, 0x206A)}


# --------------------------------------------------------------------------- sanitize_prompt


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii",
        "café naïve Ångström",
        "日本語のテキスト、中文",
        "emoji 😀 👩‍👩‍👧 🇫🇷 ✓",
        "  leading and trailing whitespace \n\n",
        "tabs\tstay\tput\n",
        "",
        "   ",
        "right-to-left text: שלום עולם مرحبا",
    ],
)
def test_ordinary_text_is_untouched(text):
    assert sanitize_prompt(text) == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # CSI: SGR colours, cursor movement, erase
        ("\x1b[31mred\x1b[0m text", "red text"),
        ("\x1b[1;38;5;196mbold\x1b[m", "bold"),
        ("a\x1b[2Kb\x1b[10;20Hc", "abc"),
        # CSI private modes and bracketed paste markers
        ("\x1b[?2004hready\x1b[?2004l", "ready"),
        ("\x1b[200~pasted text\x1b[201~", "pasted text"),
        ("\x1b[?25l\x1b[?1049hscreen", "screen"),
        # OSC ended by BEL or by ST (ESC \), payload and all
        ("\x1b]0;window title\x07after", "after"),
        ("\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1b]52;c;aGlkZGVu\x07clip", "clip"),
        # an unterminated OSC swallows the rest, as on a terminal
        ("visible\x1b]0;hidden instructions", "visible"),
        # DCS, SOS, PM, APC strings
        ("\x1bPq#0;2;0;0;0#0~~\x1b\\x", "x"),
        ("\x1bXsos payload\x1b\\y", "y"),
        ("\x1b^pm payload\x1b\\z", "z"),
        ("\x1b_apc payload\x1b\\w", "w"),
        # two-character escapes
        ("\x1b7saved\x1b8", "saved"),
        ("\x1b(Bcharset\x1b)0", "charset"),
        ("\x1bcreset\x1b=\x1b>", "reset"),
        ("lone escape\x1b", "lone escape"),
        ("\x1b\x1b[31mdouble", "double"),
        # 8-bit C1 forms
        ("\x9b31mred\x9b0m", "red"),
        ("\x9b?25lhidden cursor", "hidden cursor"),
        ("\x9d0;title\x07after", "after"),
        ("\x9d0;title\x9cafter", "after"),
        ("\x90dcs\x9cafter", "after"),
        ("next\x85line", "nextline"),
        ("a\x80\x8f\x91b", "ab"),
        ("a\x9fapc string runs to the end", "a"),
        # C0 controls, DEL, backspace (removed, not applied)
        ("bell\x07 ring", "bell ring"),
        ("abc\x08\x08\x08xyz", "abcxyz"),
        ("del\x7fete", "delete"),
        ("form\x0cfeed\x0bvt", "formfeedvt"),
        ("\x01\x02\x03\x04\x05\x06\x0e\x0f\x10\x1a\x1c\x1f", ""),
        # line endings
        ("a\r\nb\rc\n", "a\nb\nc\n"),
        ("progress 10%\rprogress 100%\r\n", "progress 10%\nprogress 100%\n"),
        ("a\r\x1b[K\nb", "a\nb"),
        # bidi embeddings, overrides and isolates (Trojan Source)
        ("access\u202e \u2066// check\u2069 \u2066if (admin)\u2069", "access // check if (admin)"),
        ("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069x", "x"),
    ],
)
def test_controls_and_sequences_are_removed(raw, expected):
    assert sanitize_prompt(raw) == expected


def test_bytes_are_decoded_as_utf8():
    assert sanitize_prompt("héllo \x1b[1m✓".encode()) == "héllo ✓"


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"caf\xe9", b"\xc3", b"ok \xed\xa0\x80 surrogate"])
def test_invalid_utf8_is_refused(raw):
    with pytest.raises(UnsafeInput, match="not valid UTF-8"):
        sanitize_prompt(raw)


@pytest.mark.parametrize("raw", ["a\x00b", "\x00", b"nul\x00byte", "\x1b]0;\x00\x07"])
def test_nul_is_refused(raw):
    with pytest.raises(UnsafeInput, match="NUL byte"):
        sanitize_prompt(raw)


def test_unsafe_input_is_a_concordia_error():
    assert issubclass(UnsafeInput, ConcordiaError)


@pytest.mark.parametrize("seed", range(20))
def test_random_input_never_keeps_a_control(seed):
    rng = random.Random(seed)
    pieces = [
        "word ",
        "é",
        "日本",
        "😀",
        "\n",
        "\t",
        "\r",
        "\x1b",
        "[",
        "]",
        "?",
        "0",
        ";",
        "~",
        "\\",
        "\x07",
        "\x9b",
        "\x9c",
        "\x9d",
        "\x90",
        "\x7f",
        "\x08",
        "\u202e",
        "\u2066",
        "P",
        "_",
        "m",
    ]
    raw = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 400)))
    clean = sanitize_prompt(raw)
    assert not set(clean) & _FORBIDDEN
    assert "\r" not in clean
    assert sanitize_prompt(clean) == clean  # idempotent


def test_large_prompt_is_sanitized_whole():
    body = "line with \x1b[32mcolour\x1b[0m and ünïcödé 😀\r\n" * 5000
    clean = sanitize_prompt(body)
    assert clean == "line with colour and ünïcödé 😀\n" * 5000


# --------------------------------------------------------------------------- Redactor


def test_redact_replaces_every_occurrence():
    redactor = Redactor(["sk-ant-0123456789"])
    text = "key sk-ant-0123456789 and again sk-ant-0123456789!"
    assert redactor.redact(text) == f"key {REDACTED} and again {REDACTED}!"


def test_short_secrets_are_ignored():
    redactor = Redactor(["short", "1234567", ""])
    assert redactor.redact("short 1234567") == "short 1234567"
    assert redactor.longest_chars == 0


def test_longest_secret_wins():
    redactor = Redactor(["abcdefgh", "abcdefghijkl"])
    assert redactor.redact("xabcdefghijkly abcdefghz") == f"x{REDACTED}y {REDACTED}z"


def test_regex_metacharacters_are_literal():
    redactor = Redactor(["a.b*c+d?(e)[f]", "pass|word1"])
    assert redactor.redact("a.b*c+d?(e)[f]") == REDACTED
    assert redactor.redact("axbbbcdde") == "axbbbcdde"
    assert redactor.redact("pass|word1 password1") == f"{REDACTED} password1"


def test_no_secrets_means_identity():
    assert Redactor([]).redact("anything at all") == "anything at all"


# --------------------------------------------------------------------------- StreamRedactor


def _random_split(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randrange(0, 12))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("seed", range(300))
def test_stream_redaction_equals_whole_redaction(seed):
    rng = random.Random(seed)
    alphabet = "abc"  # a tiny alphabet makes overlaps and near-misses common
    secrets = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(8, 14))) for _ in range(3)]
    # Nested secrets too: one is a prefix of a longer one.
    secrets.append(secrets[0] + "".join(rng.choice(alphabet) for _ in range(3)))
    redactor = Redactor(secrets)
    chunks = []
    for _ in range(rng.randrange(0, 20)):
        if rng.random() < 0.4:
            secret = rng.choice(secrets)
            chunks.append(secret[: rng.randrange(len(secret) // 2, len(secret) + 1)])
        else:
            chunks.append("".join(rng.choice(alphabet + " x") for _ in range(rng.randrange(0, 10))))
    text = "".join(chunks)

    stream = StreamRedactor(redactor)
    out = [stream.feed(delta) for delta in _random_split(rng, text)]
    out.append(stream.flush())
    assert "".join(out) == redactor.redact(text)


@pytest.mark.parametrize("seed", range(50))
def test_stream_holds_back_less_than_the_longest_secret(seed):
    rng = random.Random(seed)
    redactor = Redactor(["abcabcabcabZ", "cabcabcZ"])
    # Prefixes of both secrets abound, but no "Z": no secret occurs, so what was emitted is a
    # prefix of what was fed.
    text = "".join(rng.choice(["ab", "abcabcab", "c", "x", "cab"]) for _ in range(60))
    assert redactor.redact(text) == text
    stream = StreamRedactor(redactor)
    fed = emitted = ""
    for delta in _random_split(rng, text):
        fed += delta
        emitted += stream.feed(delta)
        assert fed.startswith(emitted)
        assert len(fed) - len(emitted) <= redactor.longest_chars - 1
    assert emitted + stream.flush() == text


def test_stream_emits_at_once_what_cannot_start_a_secret():
    stream = StreamRedactor(Redactor(["supersecret"]))
    assert stream.feed("hello ") == "hello "
    assert stream.feed("world su") == "world "  # "su" could begin the secret
    assert stream.feed("persecret!") == f"{REDACTED}!"
    assert stream.feed("sup") == ""
    assert stream.flush() == "sup"
    assert stream.flush() == ""


def test_stream_secret_split_across_many_deltas_never_leaks():
    secret = "sk-ant-api03-SECRETVALUE"
    stream = StreamRedactor(Redactor([secret]))
    out = [stream.feed(ch) for ch in f"token={secret};"]
    out.append(stream.flush())
    assert "".join(out) == f"token={REDACTED};"
    assert not any("SECRET" in piece for piece in out)


def test_stream_without_secrets_passes_through():
    stream = StreamRedactor(Redactor([]))
    assert stream.feed("abc") == "abc"
    assert stream.flush() == ""


# --------------------------------------------------------------------------- mentions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@everyone look", "@\u200beveryone look"),
        ("hey @here!", "hey @\u200bhere!"),
        ("@EVERYONE @Here", "@\u200bEVERYONE @\u200bHere"),
        ("@alice and @bob", "@alice and @bob"),
        ("no mention here", "no mention here"),
        ("@@everyone", "@@\u200beveryone"),
    ],
)
def test_mass_mentions_cannot_ping(text, expected):
    assert neutralize_mentions(text) == expected


def test_neutralize_is_idempotent():
    once = neutralize_mentions("@everyone @here")
    assert neutralize_mentions(once) == once


@pytest.mark.parametrize("text", ["half \ud800 pair", "\udfff", "two halves \udbff\udc00"])
def test_lone_surrogates_are_refused_as_invalid_utf8(text: str) -> None:
    with pytest.raises(UnsafeInput, match="not valid UTF-8"):
        sanitize_prompt(text)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("ev\x1b[31mil\u202e\x07", "evil"),
        ("  two\n\tlines  ", "two lines"),
        ("\x1b]0;title\x07", "someone"),
        ("x" * 100, "x" * 64),
    ],
)
def test_names_are_cleaned_like_prompts(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


def test_a_secret_added_later_is_redacted_from_then_on() -> None:
    redactor = Redactor(["sk-first-secret-value"])
    rotated = "Cg1vtcDJf8Q8yGhqUN8utAhERo5_5F4sqUO-4hxhxZ"
    assert redactor.redact(f"say {rotated}") == f"say {rotated}"
    redactor.add(rotated, "short")
    assert redactor.redact(f"say {rotated} and sk-first-secret-value") == (
        "say [redacted] and [redacted]"
    )
    # The longest match is its hex: 2 digits a character, up to 2 characters between two digits.
    assert redactor.longest_chars == 6 * len(rotated) - 2


# --------------------------------------------------------------------------- disguised secrets

# Shaped like secrets.token_urlsafe(32): 43 characters of the base64url alphabet.
TOKEN = "_lUYy-jf5ZKWlGvSaTWgFL46K3xzpCDDOaD5Qjc3bQk"
# Base64 of ASCII letters, digits, "-" and "_" never holds "+" or "/"; "~", "?" and ">" do.
SYMBOLS = "p4ss~w0rd?>~ops"
UNICODE = "clé-secrète-ünïcode"
_NOTES = "Deploy the bot to staging on Friday; ask Alice before rotating anything."


def _json(secret: str) -> bytes:
    doc = {"name": "demo", "token": secret, "notes": _NOTES}
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()


def _wrapped(encoded: bytes) -> str:
    """As GNU base64 prints it: 76 columns a line."""
    text = encoded.decode()
    return "".join(text[i : i + 76] + "\n" for i in range(0, len(text), 76))


def _xxd_grouped(data: bytes) -> str:
    """Hex in 4-digit groups, 8 groups a line (xxd's grouping, without offsets and dump)."""
    groups = [data[i : i + 2].hex() for i in range(0, len(data), 2)]
    return "".join(" ".join(groups[i : i + 8]) + "\n" for i in range(0, len(groups), 8))


_Encode = Callable[[bytes], bytes]


def _stable(plain: bytes, secret: str, encode: _Encode = base64.b64encode) -> str:
    """The 4-character groups of ``encode(plain)`` that encode nothing but bytes of ``secret``."""
    at = plain.index(secret.encode())
    first, end = -(-at // 3), (at + len(secret.encode())) // 3
    return encode(plain).decode()[4 * first : 4 * end]


def _b64(plain: bytes, secret: str, encode: _Encode = base64.b64encode) -> tuple[str, str]:
    return encode(plain).decode(), _stable(plain, secret, encode)


_HEX_ESCAPES = "".join(f"\\x{b:02x}" for b in TOKEN.encode())

# label: (secret, text showing it disguised, what of it must be gone after redaction)
DISGUISES = {
    "spaced": (TOKEN, " ".join(TOKEN), TOKEN),
    "dashed": (TOKEN, "-".join(TOKEN), TOKEN),
    "quoted list": (TOKEN, ", ".join(f'"{c}"' for c in TOKEN), TOKEN),
    "one a line": (TOKEN, "\n".join(TOKEN), TOKEN),
    "reversed": (TOKEN, TOKEN[::-1], TOKEN[::-1]),
    "reversed spaced": (TOKEN, " ".join(TOKEN[::-1]), TOKEN[::-1]),
    "base64": (TOKEN, *_b64(TOKEN.encode(), TOKEN)),
    "base64 echo": (TOKEN, *_b64(f"{TOKEN}\n".encode(), TOKEN)),
    "base64 offset 1": (TOKEN, *_b64(f"x{TOKEN}".encode(), TOKEN)),
    "base64 offset 2": (TOKEN, *_b64(f"xy{TOKEN}".encode(), TOKEN)),
    "base64 wrapped json": (
        TOKEN,
        _wrapped(base64.b64encode(_json(TOKEN))),
        _stable(_json(TOKEN), TOKEN),
    ),
    "base64url": (TOKEN, *_b64(_json(TOKEN), TOKEN, base64.urlsafe_b64encode)),
    "base64 symbols": (SYMBOLS, *_b64(_json(SYMBOLS), SYMBOLS)),
    "base64url symbols": (SYMBOLS, *_b64(_json(SYMBOLS), SYMBOLS, base64.urlsafe_b64encode)),
    "base64 unicode": (UNICODE, *_b64(_json(UNICODE), UNICODE)),
    "hex": (TOKEN, TOKEN.encode().hex(), TOKEN.encode().hex()),
    "HEX": (TOKEN, TOKEN.encode().hex().upper(), TOKEN.encode().hex().upper()),
    "hex escapes": (TOKEN, _HEX_ESCAPES, _HEX_ESCAPES),
    "xxd grouped": (TOKEN, _xxd_grouped(_json(TOKEN)), TOKEN.encode().hex()),
    "hex unicode": (UNICODE, UNICODE.encode().hex(), UNICODE.encode().hex()),
}

ORDINARY = {
    "english": (
        "The party met on Thursday to review the release. Everyone agreed that the redactor "
        "should stay out of the way of ordinary prose: quotes, dashes - like these - and lists "
        '("one", "two", "three") must survive untouched, as must numbers such as 1, 2, 3.\n'
    ),
    "python": (
        "```python\n"
        "def rotate(book: InviteBook, *, force: bool = False) -> str:\n"
        '    """Mint a fresh token unless the current one is young."""\n'
        "    if not force and book.age_s < 3600:\n"
        "        return book.current\n"
        "    token = secrets.token_urlsafe(32)\n"
        "    book.store(token, hashlib.sha256(token.encode()).hexdigest()[:16])\n"
        "    return token\n"
        "```\n"
    ),
    "base64 blob": _wrapped(base64.b64encode(random.Random(7).randbytes(3000))),
    "hex dump": _xxd_grouped(random.Random(8).randbytes(1000)),
}


def _squashed(text: str) -> str:
    return re.sub("[^0-9A-Za-z]", "", text)


def _windows(core: str) -> set[str]:
    core = _squashed(core)
    return {core[i : i + MIN_SECRET_CHARS] for i in range(len(core) - MIN_SECRET_CHARS + 1)}


def _disguise_redactor() -> Redactor:
    return Redactor([TOKEN, SYMBOLS, UNICODE, "another-secret-value"])


@pytest.mark.parametrize("label", DISGUISES)
def test_disguised_secrets_are_redacted(label: str) -> None:
    secret, text, core = DISGUISES[label]
    assert _squashed(core) in _squashed(text)  # the disguise does show the secret
    out = Redactor([secret]).redact(f"Here it is:\n{text}\nDone.")
    assert REDACTED in out
    assert not {w for w in _windows(core) if w in _squashed(out)}
    assert out.startswith("Here it is:\n")
    assert out.endswith("\nDone.")


def test_disguises_show_what_they_are_named_for() -> None:
    # Otherwise "base64url symbols" would test nothing "base64 symbols" does not.
    assert DISGUISES["base64 symbols"][1] != DISGUISES["base64url symbols"][1]
    # The token's groups straddle a line break, as `base64` prints them.
    _, text, core = DISGUISES["base64 wrapped json"]
    assert core not in text
    assert core in text.replace("\n", "")


@pytest.mark.parametrize("label", ORDINARY)
def test_ordinary_text_survives_configured_secrets(label: str) -> None:
    text = ORDINARY[label]
    redactor = _disguise_redactor()
    assert redactor.redact(text) == text
    stream = StreamRedactor(redactor)
    out = [stream.feed(text[i : i + 50]) for i in range(0, len(text), 50)]
    assert "".join(out) + stream.flush() == text


def test_a_secret_containing_another_is_redacted_whole_when_spaced() -> None:
    redactor = Redactor(["abcdefgh", "abcdefghijkl"])
    assert redactor.redact("x a b c d e f g h i j k l y") == f"x {REDACTED} y"
    assert redactor.redact("x l-k-j-i-h-g-f-e-d-c-b-a y") == f"x {REDACTED} y"


def test_a_rotated_token_is_redacted_in_every_form() -> None:
    redactor = Redactor(["sk-first-secret-value"])
    disguises = [text for secret, text, _ in DISGUISES.values() if secret == TOKEN]
    assert not any(REDACTED in redactor.redact(text) for text in disguises)
    redactor.add(TOKEN)
    assert all(REDACTED in redactor.redact(text) for text in disguises)


@pytest.mark.parametrize(
    "text",
    [
        "abc1234",
        "a b c 1 2 3 4",
        "4321cba",
        base64.b64encode(b"abc1234").decode(),
        base64.b64encode(b'{"k": "abc1234"}').decode(),
        b"abc1234".hex(),
        b"abc1234".hex().upper(),
    ],
)
def test_short_secret_is_ignored_in_every_form(text: str) -> None:
    redactor = Redactor(["abc1234"])
    assert redactor.longest_chars == 0
    assert redactor.redact(text) == text
    stream = StreamRedactor(redactor)
    assert stream.feed(text) + stream.flush() == text


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("label", DISGUISES)
def test_stream_redaction_equals_whole_redaction_for_every_form(label: str, seed: int) -> None:
    rng = random.Random(f"{label}/{seed}")
    _, text, _ = DISGUISES[label]
    redactor = _disguise_redactor()
    whole = f"{ORDINARY['english']}{text[: rng.randrange(len(text) + 1)]}{text}\n{text[::-1]}"
    stream = StreamRedactor(redactor)
    out = [stream.feed(delta) for delta in _random_split(rng, whole)]
    out.append(stream.flush())
    assert "".join(out) == redactor.redact(whole)
    assert REDACTED in "".join(out)


@pytest.mark.parametrize("seed", range(30))
def test_stream_holds_back_less_than_the_longest_form(seed: int) -> None:
    rng = random.Random(seed)
    redactor = _disguise_redactor()
    # First halves of disguises that are nothing but the secret: nothing is redacted, and what
    # was emitted is a prefix of what was fed.
    bare = [
        *("spaced", "dashed", "quoted list", "one a line", "reversed", "reversed spaced"),
        *("base64", "base64 echo", "base64 offset 1", "base64 offset 2"),
        *("hex", "HEX", "hex escapes", "hex unicode"),
    ]
    starts = [DISGUISES[label][1][: rng.randrange(len(DISGUISES[label][1]) // 2)] for label in bare]
    text = "".join(rng.choice([*starts, " ", "\n", "word"]) for _ in range(80))
    assert redactor.redact(text) == text
    stream = StreamRedactor(redactor)
    fed = emitted = ""
    for delta in _random_split(rng, text):
        fed += delta
        emitted += stream.feed(delta)
        assert fed.startswith(emitted)
        assert len(fed) - len(emitted) <= redactor.longest_chars - 1
    assert emitted + stream.flush() == text
