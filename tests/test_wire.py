"""WebSocket protocol v1 frames: today's shapes byte for byte, and parsing that never raises."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from adapters import wire
from bot.model import Decision
from tests.payloads.images import PNG_1PX, PNG_1PX_B64

# Each frame with the JSON the server and client sent before wire.py, keys in that order.
SERVER_FRAMES: list[tuple[wire.ServerFrame, dict[str, Any]]] = [
    (
        wire.Welcome(protocol=1, party="p-7", name="ada", role="host"),
        {"type": "welcome", "protocol": 1, "party": "p-7", "name": "ada", "role": "host"},
    ),
    (
        wire.Error(code=wire.ErrorCode.BAD_TOKEN, message="the invite token was refused"),
        {"type": "error", "code": "bad_token", "message": "the invite token was refused"},
    ),
    (
        wire.Queued(id="ada-1", prompt_id=3, position=2, duplicate=False),
        {"type": "queued", "id": "ada-1", "prompt_id": 3, "position": 2, "duplicate": False},
    ),
    (
        wire.Rejected(id=7, reason="too long"),
        {"type": "rejected", "id": 7, "reason": "too long"},
    ),
    (
        wire.Batch(
            batch_id=4,
            prompt="fix it",
            attempt=2,
            sources=(wire.Source(prompt_id=3, author="ada"), wire.Source(prompt_id=5, author="bo")),
            groups=(wire.Group(prompt_ids=(3, 5), instruction="fix it"),),
        ),
        {
            "type": "batch",
            "batch_id": 4,
            "prompt": "fix it",
            "attempt": 2,
            "sources": [{"prompt_id": 3, "author": "ada"}, {"prompt_id": 5, "author": "bo"}],
            "groups": [{"prompt_ids": [3, 5], "instruction": "fix it"}],
        },
    ),
    (
        wire.Output(batch_id=4, text="héllo ✓\n"),
        {"type": "output", "batch_id": 4, "text": "héllo ✓\n"},
    ),
    (
        wire.Done(batch_id=4, status="success", detail=""),
        {"type": "done", "batch_id": 4, "status": "success", "detail": ""},
    ),
    (wire.System(message="re-run"), {"type": "system", "message": "re-run"}),
    (
        wire.Approval(
            approval_id=9,
            batch_id=4,
            tool="Bash",
            summary="run `touch x`",
            input="touch x",
            needed=1,
            timeout_s=120.0,
        ),
        {
            "type": "approval",
            "approval_id": 9,
            "batch_id": 4,
            "tool": "Bash",
            "summary": "run `touch x`",
            "input": "touch x",
            "needed": 1,
            "timeout_s": 120.0,
        },
    ),
    (
        wire.ApprovalDone(approval_id=9, batch_id=4, allowed=True, text="allowed by ann"),
        {
            "type": "approval_done",
            "approval_id": 9,
            "batch_id": 4,
            "allowed": True,
            "text": "allowed by ann",
        },
    ),
    (
        wire.CommandResult(name="status", ok=True, text="idle", public=False),
        {"type": "command_result", "name": "status", "ok": True, "text": "idle", "public": False},
    ),
    # Added to v1 later; the frames above stay as they were.
    (
        wire.Welcome(
            protocol=1,
            party="p-7",
            name="ada",
            role="prompter",
            max_image_bytes=3_750_000,
            max_frame_bytes=2_097_152,
        ),
        {
            "type": "welcome",
            "protocol": 1,
            "party": "p-7",
            "name": "ada",
            "role": "prompter",
            "max_image_bytes": 3_750_000,
            "max_frame_bytes": 2_097_152,
        },
    ),
    (
        wire.Question(
            question_id=5,
            batch_id=4,
            kind="choice",
            header="Database",
            text="Which database?",
            options=(
                wire.QuestionOption(label="SQLite", description="one file"),
                wire.QuestionOption(label="Postgres", description=""),
            ),
            multi_select=False,
            answerers="authors",
            timeout_s=300.0,
        ),
        {
            "type": "question",
            "question_id": 5,
            "batch_id": 4,
            "kind": "choice",
            "header": "Database",
            "text": "Which database?",
            "options": [
                {"label": "SQLite", "description": "one file"},
                {"label": "Postgres", "description": ""},
            ],
            "multi_select": False,
            "answerers": "authors",
            "timeout_s": 300.0,
        },
    ),
    (
        wire.QuestionDone(question_id=5, batch_id=4, answered=True, text="ada answered: SQLite"),
        {
            "type": "question_done",
            "question_id": 5,
            "batch_id": 4,
            "answered": True,
            "text": "ada answered: SQLite",
        },
    ),
]

CLIENT_FRAMES: list[tuple[wire.ClientFrame, dict[str, Any]]] = [
    (
        wire.Join(token="t0k", name="ada"),
        {"type": "join", "token": "t0k", "name": "ada", "catch_up": False},
    ),
    (wire.Prompt(id="ada-1", text="fix it"), {"type": "prompt", "id": "ada-1", "text": "fix it"}),
    (
        wire.Command(name="cancel", args="3"),
        {"type": "command", "name": "cancel", "args": "3"},
    ),
    (
        wire.Approve(approval_id=9, decision=Decision.ALWAYS),
        {"type": "approve", "approval_id": 9, "decision": "always"},
    ),
    (
        wire.Answer(question_id=5, text="SQLite, in WAL mode"),
        {"type": "answer", "question_id": 5, "text": "SQLite, in WAL mode"},
    ),
    (
        wire.Prompt(
            id="ada-2",
            text="what is this?",
            images=(wire.PromptImage(name="dot.png", media_type="image/png", data=PNG_1PX),),
        ),
        {
            "type": "prompt",
            "id": "ada-2",
            "text": "what is this?",
            "images": [{"name": "dot.png", "media_type": "image/png", "data": PNG_1PX_B64}],
        },
    ),
]
ALL_FRAMES: list[tuple[wire.ServerFrame | wire.ClientFrame, dict[str, Any]]] = [
    *SERVER_FRAMES,
    *CLIENT_FRAMES,
]

# json.loads recurses once per level: this is deeper than any interpreter stack.
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "9" * 5_000  # past Python's 4300-digit limit for int(str)


def test_every_kind_has_a_sample() -> None:
    assert {frame.type for frame, _ in SERVER_FRAMES} == set(wire.ServerKind)
    assert {frame.type for frame, _ in CLIENT_FRAMES} == set(wire.ClientKind)


@pytest.mark.parametrize(("frame", "expected"), ALL_FRAMES)
def test_format_writes_todays_json(
    frame: wire.ServerFrame | wire.ClientFrame, expected: dict[str, Any]
) -> None:
    assert wire.format_frame(frame) == json.dumps(expected, ensure_ascii=False)


@pytest.mark.parametrize(("frame", "expected"), SERVER_FRAMES)
def test_server_frames_parse_back(frame: wire.ServerFrame, expected: dict[str, Any]) -> None:
    assert wire.parse_server_frame(json.dumps(expected)) == frame
    assert wire.parse_server_frame(wire.format_frame(frame).encode()) == frame


@pytest.mark.parametrize(("frame", "expected"), CLIENT_FRAMES)
def test_client_frames_parse_back(frame: wire.ClientFrame, expected: dict[str, Any]) -> None:
    assert wire.parse_client_frame(json.dumps(expected)) == frame
    assert wire.parse_client_frame(wire.format_frame(frame).encode()) == frame


def test_every_kind_is_known_to_its_parser() -> None:
    # Every kind needs a field, so each is malformed, not unknown, when it has none.
    for server_kind in wire.ServerKind:
        from_server = wire.parse_server_frame(json.dumps({"type": server_kind}))
        assert isinstance(from_server, wire.Invalid)
        assert (from_server.code, from_server.kind) == (wire.ErrorCode.MALFORMED, server_kind)
    for client_kind in wire.ClientKind:
        from_client = wire.parse_client_frame(json.dumps({"type": client_kind}))
        assert isinstance(from_client, wire.Invalid)
        assert (from_client.code, from_client.kind) == (wire.ErrorCode.MALFORMED, client_kind)


def test_an_error_without_id_leaves_it_out_and_one_with_id_keeps_it() -> None:
    assert "id" not in json.loads(wire.format_frame(wire.Error(code="malformed", message="m")))
    error = wire.Error(code="malformed", message="m", id="ada-1")

    assert json.loads(wire.format_frame(error))["id"] == "ada-1"
    assert wire.parse_server_frame(wire.format_frame(error)) == error


def test_a_lone_surrogate_is_escaped_so_the_frame_can_still_be_sent() -> None:
    # JSON may carry "\ud800"; json.loads keeps it, and UTF-8 cannot encode it.
    prompt = wire.parse_client_frame('{"type": "prompt", "id": "\\ud800", "text": "x\\udfff"}')
    assert isinstance(prompt, wire.Prompt)
    queued = wire.Queued(id=prompt.id, prompt_id=1, position=1, duplicate=False)

    text = wire.format_frame(queued)

    text.encode("utf-8")  # would raise UnicodeEncodeError when sent
    assert wire.parse_server_frame(text) == queued
    assert "é" in wire.format_frame(wire.System(message="é"))  # only then escaped


def test_unknown_fields_are_ignored_and_command_args_default_to_empty() -> None:
    raw = {"type": "command", "name": "status", "future": {"nested": [1, 2]}}

    assert wire.parse_client_frame(json.dumps(raw)) == wire.Command(name="status", args="")


def test_a_join_token_that_is_not_a_string_reads_as_no_token() -> None:
    # Refused like a wrong token (and throttled), not reported as malformed.
    for token in (123456, None, ["t"], True):
        raw = json.dumps({"type": "join", "token": token, "name": "eve"})
        assert wire.parse_client_frame(raw) == wire.Join(token="", name="eve")
    assert wire.parse_client_frame('{"type": "join", "name": "eve"}') == wire.Join(
        token="", name="eve"
    )


def test_client_ids_keep_their_json_type() -> None:
    for client_id in ("7", 7, int(HUGE_INT[:4000])):
        prompt = wire.parse_client_frame(
            json.dumps({"type": "prompt", "id": client_id, "text": "x"})
        )
        assert isinstance(prompt, wire.Prompt)
        assert prompt.id == client_id
        assert type(prompt.id) is type(client_id)


NOT_AN_OBJECT = [
    pytest.param(b"fix \xff it", id="binary-not-utf8"),
    pytest.param("{not json", id="not-json"),
    pytest.param("", id="empty"),
    pytest.param("[1, 2]", id="array"),
    pytest.param('"text"', id="string"),
    pytest.param("null", id="null"),
    pytest.param("12", id="number"),
    pytest.param(DEEP, id="deep-array"),
    pytest.param('{"type": "prompt", "id": 1, "text": ' + DEEP + "}", id="deep-field"),
    pytest.param('{"type": "prompt", "id": ' + HUGE_INT + ', "text": "x"}', id="huge-int"),
]


def test_the_deep_and_huge_cases_do_raise_in_json_loads() -> None:
    with pytest.raises(RecursionError):
        json.loads(DEEP)
    with pytest.raises(ValueError, match="digits"):
        json.loads(HUGE_INT)


@pytest.mark.parametrize("raw", NOT_AN_OBJECT)
def test_what_is_not_one_json_object_is_malformed_both_ways(raw: str | bytes) -> None:
    expected = wire.Invalid(wire.ErrorCode.MALFORMED, "a frame must be one JSON object")

    assert wire.parse_client_frame(raw) == expected
    assert wire.parse_server_frame(raw) == expected


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({}, "unknown frame type None"),
        ({"type": None}, "unknown frame type None"),
        ({"type": "bogus"}, "unknown frame type 'bogus'"),
        ({"type": 5}, "unknown frame type 5"),
        ({"type": "welcome"}, "unknown frame type 'welcome'"),  # a server kind, from a client
        ({"type": [[[["deep"]]]]}, "unknown frame type: the type must be a string"),
        ({"type": "x" * 10_000}, "unknown frame type '" + "x" * 64 + "'…"),
    ],
)
def test_an_unknown_type_is_unknown_type(frame: dict[str, Any], message: str) -> None:
    parsed = wire.parse_client_frame(json.dumps(frame))

    assert parsed == wire.Invalid(wire.ErrorCode.UNKNOWN_TYPE, message)
    assert isinstance(parsed, wire.Invalid)
    assert parsed.as_error() == wire.Error(code="unknown_type", message=message)


def test_a_frame_nested_almost_to_the_limit_is_still_answered() -> None:
    depth = 500
    deep_value = "[" * depth + "]" * depth
    raw = '{"type": "prompt", "id": 1, "text": ' + deep_value + ', "x": ' + deep_value + "}"

    parsed = wire.parse_client_frame(raw)

    assert isinstance(parsed, wire.Invalid)
    assert (parsed.code, parsed.field) == (wire.ErrorCode.MALFORMED, "text")


@pytest.mark.parametrize(
    ("frame", "field", "message"),
    [
        ({"id": True, "text": "x"}, "id", "prompt needs an id and a text"),
        ({"id": 1.0, "text": "x"}, "id", "prompt needs an id and a text"),
        ({"id": "a"}, "text", "prompt needs an id and a text"),
        ({"id": "a", "text": 1e999}, "text", "prompt needs an id and a text"),
        ({"name": "status", "args": 5}, "args", "command needs a name and string args"),
        ({"args": ""}, "name", "command needs a name and string args"),
        (
            {"approval_id": "1", "decision": "maybe"},
            "approval_id",
            "approve needs an integer approval_id and a decision: allow, always or deny",
        ),
        (
            {"approval_id": 1, "decision": "maybe"},
            "decision",
            "approve needs an integer approval_id and a decision: allow, always or deny",
        ),
        (
            {"approval_id": True, "decision": "allow"},
            "approval_id",
            "approve needs an integer approval_id and a decision: allow, always or deny",
        ),
        ({"token": "t", "name": 5}, "name", "join needs a string name"),
        (
            {"question_id": "1", "text": "1"},
            "question_id",
            "answer needs an integer question_id and a text: an option's number, its label "
            "or your own words",
        ),
        (
            {"question_id": 1, "text": 1},
            "text",
            "answer needs an integer question_id and a text: an option's number, its label "
            "or your own words",
        ),
        (
            {"question_id": 1.5},
            "question_id",
            "answer needs an integer question_id and a text: an option's number, its label "
            "or your own words",
        ),
    ],
)
def test_a_client_frame_with_a_bad_field_is_malformed_with_todays_answer(
    frame: dict[str, Any], field: str, message: str
) -> None:
    kinds = {
        "id": "prompt",
        "text": "answer" if "question_id" in frame else "prompt",
        "args": "command",
        "name": "command",
        "approval_id": "approve",
        "decision": "approve",
        "question_id": "answer",
    }
    kind = "join" if "token" in frame else kinds[field]
    # A prompt's error names the prompt when its own id is a good one.
    prompt_id = frame.get("id") if kind == "prompt" and isinstance(frame.get("id"), str) else None

    parsed = wire.parse_client_frame(json.dumps({"type": kind, **frame}))

    assert parsed == wire.Invalid(
        wire.ErrorCode.MALFORMED, message, wire.ClientKind(kind), field, prompt_id
    )
    assert isinstance(parsed, wire.Invalid)
    assert parsed.as_error() == wire.Error(code="malformed", message=message, id=prompt_id)


def _prompt_with(images: object, client_id: object = "ada-3") -> str:
    return json.dumps({"type": "prompt", "id": client_id, "text": "look", "images": images})


_IMAGE_SHAPE = "images is a list of {name, media_type, data (base64)}"
_NOT_BASE64 = "is not base64 (A-Z, a-z, 0-9, + and /, padded with =; no data: prefix)"


@pytest.mark.parametrize(
    ("images", "field", "problem"),
    [
        pytest.param({}, "images", "must be a list", id="not-a-list"),
        pytest.param("iVBOR", "images", "must be a list", id="a-string"),
        pytest.param([5], "images[0]", "must be an object", id="not-an-object"),
        pytest.param(
            [{"name": "a.png", "data": PNG_1PX_B64}],
            "images[0].media_type",
            "is missing",
            id="no-media-type",
        ),
        pytest.param(
            [{"name": "a.png", "media_type": "image/png"}],
            "images[0].data",
            "is missing",
            id="no-data",
        ),
        pytest.param(
            [{"name": 7, "media_type": "image/png", "data": PNG_1PX_B64}],
            "images[0].name",
            "must be a string",
            id="name-not-a-string",
        ),
        pytest.param(
            [{"name": "a.png", "media_type": "image/png", "data": 12}],
            "images[0].data",
            "must be a base64 string",
            id="data-not-a-string",
        ),
        pytest.param(
            [{"name": "a.png", "media_type": "image/png", "data": "iVBOR!w0K"}],
            "images[0].data",
            _NOT_BASE64,
            id="outside-the-alphabet",
        ),
        pytest.param(
            [{"name": "a.png", "media_type": "image/png", "data": PNG_1PX_B64[:-1]}],
            "images[0].data",
            _NOT_BASE64,
            id="bad-padding",
        ),
        pytest.param(
            [{"name": "a.png", "media_type": "image/png", "data": "data:image/png;base64,AA=="}],
            "images[0].data",
            _NOT_BASE64,
            id="a-data-url",
        ),
        pytest.param(
            [{"name": "a.png", "media_type": "image/png", "data": "ÿØÿ"}],
            "images[0].data",
            _NOT_BASE64,
            id="not-ascii",
        ),
        pytest.param(
            [
                {"name": "a.png", "media_type": "image/png", "data": PNG_1PX_B64},
                {"name": "b.png", "media_type": "image/png", "data": PNG_1PX_B64 + "\n"},
            ],
            "images[1].data",
            _NOT_BASE64,
            id="the-second-one-with-a-line-break",
        ),
    ],
)
def test_a_prompt_with_bad_images_is_malformed_naming_the_field_and_the_prompt(
    images: object, field: str, problem: str
) -> None:
    parsed = wire.parse_client_frame(_prompt_with(images))

    message = f"prompt frame: field {field!r} {problem}; {_IMAGE_SHAPE}"
    assert parsed == wire.Invalid(
        wire.ErrorCode.MALFORMED, message, wire.ClientKind.PROMPT, field, "ada-3"
    )
    assert isinstance(parsed, wire.Invalid)
    assert parsed.as_error() == wire.Error(code="malformed", message=message, id="ada-3")


def test_a_bad_prompt_with_a_bad_id_names_no_prompt() -> None:
    for client_id in (True, 1.5, None, ["x"]):
        parsed = wire.parse_client_frame(_prompt_with({}, client_id))
        assert isinstance(parsed, wire.Invalid)
        assert parsed.id is None
        assert "id" not in json.loads(wire.format_frame(parsed.as_error()))
    numbered = wire.parse_client_frame(_prompt_with({}, 12))
    assert isinstance(numbered, wire.Invalid)
    assert json.loads(wire.format_frame(numbered.as_error()))["id"] == 12


def test_a_prompt_without_images_reads_as_none_and_writes_as_before() -> None:
    for raw in ('{"type":"prompt","id":1,"text":"x"}', _prompt_with(None, 1)):
        prompt = wire.parse_client_frame(raw)
        assert prompt == wire.Prompt(id=1, text="x" if "look" not in raw else "look")
        assert isinstance(prompt, wire.Prompt)
        assert prompt.images is None
        assert "images" not in wire.format_frame(prompt)
    empty = wire.parse_client_frame(_prompt_with([], 1))
    assert isinstance(empty, wire.Prompt)
    assert empty.images == ()


def test_image_bytes_are_decoded_once_and_any_type_is_left_to_the_server() -> None:
    # The parser checks the shape and the base64; what the bytes are is the server's check.
    raw = _prompt_with(
        [
            {"name": "dot.png", "media_type": "image/png", "data": PNG_1PX_B64, "x": 1},
            {"name": "", "media_type": "image/bmp", "data": ""},
        ]
    )

    prompt = wire.parse_client_frame(raw)

    assert isinstance(prompt, wire.Prompt)
    assert prompt.images == (
        wire.PromptImage(name="dot.png", media_type="image/png", data=PNG_1PX),
        wire.PromptImage(name="", media_type="image/bmp", data=b""),
    )


def test_a_question_frame_keeps_a_kind_it_does_not_know() -> None:
    # A newer server may ask in a new way; a reader shows what it can.
    question = next(dict(e) for f, e in SERVER_FRAMES if f.type is wire.ServerKind.QUESTION)
    question.update(kind="poll", answerers="everyone", timeout_s=30, options=[])

    parsed = wire.parse_server_frame(json.dumps(question))

    assert isinstance(parsed, wire.Question)
    assert (parsed.kind, parsed.answerers, parsed.timeout_s, parsed.options) == (
        "poll",
        "everyone",
        30.0,
        (),
    )


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            {"type": "queued", "id": True, "prompt_id": 1, "position": 1, "duplicate": False},
            "queued frame: field 'id' must be a string or an integer",
        ),
        (
            {"type": "welcome", "protocol": 2},
            "welcome frame: field 'party' is missing",
        ),
        (
            {
                "type": "batch",
                "batch_id": 1,
                "prompt": "p",
                "attempt": 1,
                "sources": [{"prompt_id": "3", "author": "ada"}],
                "groups": [],
            },
            "batch frame: field 'sources[0].prompt_id' must be an integer",
        ),
        (
            {"type": "batch", "batch_id": 1, "prompt": "p", "attempt": 1, "sources": [5]},
            "batch frame: field 'sources[0]' must be an object",
        ),
        (
            {"type": "command_result", "name": "n", "ok": "yes", "text": "t", "public": False},
            "command_result frame: field 'ok' must be true or false",
        ),
    ],
)
def test_a_server_frame_with_a_bad_field_names_it(frame: dict[str, Any], message: str) -> None:
    parsed = wire.parse_server_frame(json.dumps(frame))

    assert isinstance(parsed, wire.Invalid)
    assert (parsed.code, parsed.message) == (wire.ErrorCode.MALFORMED, message)


def _junk(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: scalars at the edges, nesting up to a few levels."""
    match rng.randrange(9 if depth < 3 else 7):
        case 0:
            return None
        case 1:
            return rng.random() < 0.5
        case 2:
            return rng.randint(-(10**30), 10**30)
        case 3:
            return rng.random() * 10 ** rng.randint(-5, 300)
        case 4:
            return "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 8)))
        case 5:
            return "\ud800"
        case 6:
            return rng.choice(["", "allow", "success", "ada-1"])
        case 7:
            return [_junk(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        case _:
            return {rng.choice(["prompt_id", "author", "type"]): _junk(rng, depth + 1)}


FIELDS = sorted({name for _, expected in SERVER_FRAMES + CLIENT_FRAMES for name in expected})


def test_random_fields_never_raise_and_what_parses_formats_back() -> None:
    rng = random.Random(20261201)
    kinds = [*wire.ClientKind, *wire.ServerKind]
    for _ in range(3_000):
        frame = {name: _junk(rng) for name in FIELDS if rng.random() < 0.5}
        frame["type"] = rng.choice(kinds)
        raw = json.dumps(frame)
        client = wire.parse_client_frame(raw)
        if not isinstance(client, wire.Invalid):
            assert wire.parse_client_frame(wire.format_frame(client)) == client
        server = wire.parse_server_frame(raw)
        if not isinstance(server, wire.Invalid):
            assert wire.parse_server_frame(wire.format_frame(server)) == server
