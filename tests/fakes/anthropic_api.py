"""Fake Anthropic Messages API that the real `claude` CLI streams canned replies from.

Every main-turn request is recorded before it is answered, so a test awaiting
``requests.get()`` sees it even when the reply is an error or never finishes.

Replies are chosen from the user's text (case-sensitive substrings, first match wins):

- ``fail_next()`` pending: the queued HTTP error.
- ``FAIL``: HTTP 500 ``api_error``.
- ``LIMIT_429``, ``LIMIT_529``, ``LIMIT_USAGE``: the first request with this exact user text
  is refused as the API refuses when it is out of capacity: 429 ``rate_limit_error`` with
  ``retry-after: 20``; 529 ``overloaded_error``; 429 saying the usage limit is reached and
  when it resets (``usage_reset_s`` from now, as ``…|<epoch seconds>``). Later requests
  with the same text are answered (an echo), so a re-run after the hold succeeds.
- ``SLOW``: the echo (``slow_start_s`` after the reply's start), then ``slow_steps`` deltas
  of ``" ."`` one every ``slow_interval_s``.
- ``LONG``: ``long_reply`` (by default `LONG_REPLY`, about 12,000 characters with fenced
  Python blocks) in slices of 200 characters, ``long_interval_s`` apart.
- ``TOOL_BASH <command>``: a ``tool_use`` of Bash running ``<command>``; once its result
  is back, ``"TOOL RESULT: "`` and the result's text (``"TOOL ERROR: "`` when refused).
- ``TOOL_READ <path>``: a Read of the file, then the result line (2.1.331 has no Grep or
  Glob tool: it searches with Bash).
- ``TOOL_ASK <question>``: an ``AskUserQuestion`` with two options (SQLite, Postgres);
  ``TOOL_PLAN <step>``: an ``ExitPlanMode`` whose plan is Markdown naming the step. Each is
  followed by the result line, as the other tools are.
- ``TOOL_EDIT <absolute path>``: a Read of the file, then an Edit replacing ``old`` with
  ``new`` in it (the CLI refuses an Edit of a file not read first), then the result line.
  ``TOOL_*`` triggers start a line of the conversation's latest user text, so the follow-up
  requests that carry only ``tool_result`` blocks continue the script.
- otherwise: ``"ECHO: " + user_text[:200]``.

The session-title side request the TUI sends (``tools: []`` and an
``output_config.format`` JSON schema) is answered with ``{"title":"Fake"}`` and is not
recorded, so it never disturbs a test's count of turns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from tests.fakes._server import serve_on_loopback

__all__ = ["LONG_REPLY", "FakeAnthropic", "RecordedRequest", "claude_command", "claude_env"]

log = logging.getLogger(__name__)

_MESSAGES_PATH = "/v1/messages"
_SYSTEM_REMINDER = "<system-reminder>"
_ECHO_PREFIX = "ECHO: "
_ECHO_MAX_CHARS = 200
_ECHO_DELTAS = 3
_SLOW_DELTA = " ."
_LONG_DELTA_CHARS = 200
_LONG_REPLY_TARGET_CHARS = 12_000
_TITLE_REPLY = '{"title":"Fake"}'
_TOOL_TRIGGER = re.compile(
    r"^(TOOL_BASH|TOOL_EDIT|TOOL_READ|TOOL_ASK|TOOL_PLAN) (.+)$", re.MULTILINE
)
_FAIL_STATUS = 500
_FAIL_MESSAGE = "fake internal error"
# The real API's error "type" for each status; anything else is a generic api_error.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
# A handler still streaming when the fake stops (its client never hung up) is cancelled
# after this long instead of aiohttp's default 60 s.
_SHUTDOWN_TIMEOUT_S = 1.0

_REPO_ROOT = Path(__file__).resolve().parents[2]
_LOCAL_CLAUDE = _REPO_ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
# Key-shaped but fake; the CLI only checks that one is set.
_FAKE_API_KEY = "sk-ant-test-concordia-fake-0000000000000000"


def _build_long_reply() -> str:
    """Markdown of several sections, each a paragraph, a Python block and a remark."""
    sections: list[str] = []
    size = 0
    for n in itertools.count(1):
        if size >= _LONG_REPLY_TARGET_CHARS:
            break
        section = (
            f"## Step {n}\n\n"
            f"Step {n} of the long reply walks through one small function. The fake API "
            "sends this text in slices of about two hundred characters, so whoever reads "
            "the stream has to join many deltas back together without losing, doubling "
            "or reordering any of them. Paragraph breaks and code fences are a good test "
            "of that, because a fence split across two deltas must still come out whole.\n\n"
            "```python\n"
            f"def step_{n}(values: list[int]) -> int:\n"
            f'    """Return the sum of values, each multiplied by {n}."""\n'
            "    total = 0\n"
            "    for value in values:\n"
            f"        total += value * {n}\n"
            "    return total\n"
            "```\n\n"
            f"Calling `step_{n}([1, 2, 3])` returns {6 * n}. Nothing in this section "
            "depends on the prompt, so the same request always gets the same reply, and "
            "a test can compare what arrived with this text character for character."
        )
        sections.append(section)
        size += len(section) + 2
    return "\n\n".join(sections)


LONG_REPLY = _build_long_reply()
"""The exact text of a ``LONG`` reply; deterministic and free of trailing whitespace."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One main-turn ``POST /v1/messages`` as the fake received it.

    ``user_text`` is the last text block of the last ``role: "user"`` message that is not
    a ``<system-reminder>``; ``message_count`` is ``len(body["messages"])``, which grows
    when a resumed conversation carries its history.
    """

    user_text: str
    message_count: int
    body: dict[str, Any]
    session_id: str = ""  # the CLI's X-Claude-Code-Session-Id header


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    message: str


class FakeAnthropic:
    """A Messages API on ``127.0.0.1`` (free port) for the duration of ``async with``.

    ``requests`` and ``turns`` receive every main-turn request in arrival order, including
    ones answered with an error. ``in_flight`` counts replies being streamed right now and
    ``max_in_flight`` the most ever streamed at once; the title side request counts in
    neither. ``first_delta`` is set once a ``SLOW`` reply has written its first text
    delta; tests clear it themselves between turns. ``first_text_at_s`` is the
    ``time.monotonic()`` at which the first main-turn reply wrote its first text delta, and
    ``text_sent`` the latest reply's deltas as (characters written so far, monotonic time).

    A client that hangs up mid-stream (the CLI aborts the request on interrupt) cancels
    its handler at once; that is not an error and nothing is logged above DEBUG.
    """

    def __init__(
        self,
        *,
        slow_interval_s: float = 0.5,
        slow_steps: int = 30,
        long_reply: str = LONG_REPLY,
        long_interval_s: float = 0.0,
        usage_reset_s: float = 2.0,
        slow_start_s: float = 0.0,
    ) -> None:
        if slow_interval_s < 0:
            raise ValueError(f"slow_interval_s must be >= 0, got {slow_interval_s}")
        if slow_start_s < 0:
            raise ValueError(f"slow_start_s must be >= 0, got {slow_start_s}")
        if slow_steps < 0:
            raise ValueError(f"slow_steps must be >= 0, got {slow_steps}")
        if not long_reply:
            raise ValueError("long_reply must not be empty")
        if long_interval_s < 0:
            raise ValueError(f"long_interval_s must be >= 0, got {long_interval_s}")
        self._slow_interval_s = slow_interval_s
        self._slow_start_s = slow_start_s
        self._slow_steps = slow_steps
        self._long_reply = long_reply
        self._long_interval_s = long_interval_s
        self._usage_reset_s = usage_reset_s
        self._limited: set[str] = set()  # user texts a LIMIT_* trigger has refused once
        self.requests: asyncio.Queue[RecordedRequest] = asyncio.Queue()
        self.turns: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_delta = asyncio.Event()
        self.first_text_at_s: float | None = None
        self.text_sent: list[tuple[int, float]] = []
        self._failures: collections.deque[_Failure] = collections.deque()
        self._message_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._is_used = False

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; raises RuntimeError outside ``async with``."""
        if self._base_url is None:
            raise RuntimeError(
                "FakeAnthropic is not running; use it as `async with FakeAnthropic() as api:`"
            )
        return self._base_url

    def fail_next(
        self, n: int = 1, status: int = _FAIL_STATUS, message: str = _FAIL_MESSAGE
    ) -> None:
        """Answer the next ``n`` main-turn requests with HTTP ``status`` and ``message``.

        Calls queue up: ``fail_next(1, 529)`` then ``fail_next(1, 500)`` fails the next
        request with 529 and the one after with 500. Failed requests are still recorded.
        """
        if n < 1:
            raise ValueError(f"fail_next needs n >= 1, got {n}")
        if not 400 <= status <= 599:
            raise ValueError(f"fail_next needs an HTTP error status (400-599), got {status}")
        self._failures.extend(_Failure(status, message) for _ in range(n))

    async def __aenter__(self) -> Self:
        if self._is_used:
            raise RuntimeError("a FakeAnthropic cannot be started twice; make a new one")
        self._is_used = True
        app = web.Application()
        app.router.add_post(_MESSAGES_PATH, self._messages)
        app.router.add_get("/", self._root)  # also answers HEAD, which 2.1.197 sends
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # A client hanging up cancels its handler at once, so a SLOW stream stops (and
        # leaves in_flight) before the CLI's next request arrives.
        runner = await serve_on_loopback(app, shutdown_timeout_s=_SHUTDOWN_TIMEOUT_S)
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}"
        log.debug("fake Anthropic API listening on %s", self._base_url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the listener and every connection; idempotent."""
        runner, self._runner = self._runner, None
        self._base_url = None
        if runner is not None:
            await runner.cleanup()

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="fake Anthropic API")

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error_response(404, f"fake Anthropic API has no {request.method} {request.path}")

    async def _models(self, request: web.Request) -> web.Response:
        """What `concordia setup` calls to check a key: keys containing "bad" are refused."""
        if "bad" in request.headers.get("x-api-key", ""):
            return _error_response(401, "invalid x-api-key")
        return web.json_response({"data": [], "has_more": False})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error_response(400, "request body is not JSON")
        if not isinstance(body, dict) or body.get("stream") is not True:
            return _error_response(400, "fake Anthropic API only answers streaming requests")
        model = str(body.get("model", "claude-fake"))
        if _is_title_request(body):
            return await self._stream(request, model, _deltas([_TITLE_REPLY]))

        recorded = RecordedRequest(
            user_text=_user_text(body),
            message_count=len(body.get("messages", [])),
            body=body,
            session_id=request.headers.get("X-Claude-Code-Session-Id", ""),
        )
        self.turns.append(recorded)
        self.requests.put_nowait(recorded)
        log.debug("fake Anthropic API turn %d: %r", len(self.turns), recorded.user_text[:80])

        text = recorded.user_text
        step = _tool_step(body)
        if step is not None and not self._failures:
            return await self._stream_blocks(request, model, [step])
        if self._failures:
            failure = self._failures.popleft()
            return _error_response(failure.status, failure.message)
        if "FAIL" in text:
            return _error_response(_FAIL_STATUS, _FAIL_MESSAGE)
        limited = self._limit(text)
        if limited is not None:
            return limited
        if "SLOW" in text:
            deltas = self._slow_deltas(_echo(text))
        elif "LONG" in text:
            deltas = self._long_deltas()
        else:
            deltas = _deltas(_split(_echo(text), _ECHO_DELTAS))

        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._stream(request, model, self._timed(deltas))
        finally:
            self.in_flight -= 1

    def _limit(self, text: str) -> web.Response | None:
        """The capacity refusal a ``LIMIT_*`` trigger asks for, the first time only."""
        trigger = next((t for t in ("LIMIT_429", "LIMIT_529", "LIMIT_USAGE") if t in text), None)
        if trigger is None or text in self._limited:
            return None
        self._limited.add(text)
        if trigger == "LIMIT_529":
            return _error_response(529, "Overloaded")
        if trigger == "LIMIT_429":
            return _error_response(
                429,
                "Number of request tokens has exceeded your per-minute rate limit",
                headers={"retry-after": "20"},
            )
        resets = int(time.time() + self._usage_reset_s)
        return _error_response(429, f"Claude AI usage limit reached|{resets}")

    async def _timed(self, deltas: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
        self.text_sent = []
        sent = 0
        async with contextlib.aclosing(deltas):
            async for text in deltas:
                now = time.monotonic()
                if self.first_text_at_s is None:
                    self.first_text_at_s = now
                sent += len(text)
                self.text_sent.append((sent, now))
                yield text

    async def _long_deltas(self) -> AsyncGenerator[str, None]:
        for i, text in enumerate(_slices(self._long_reply, _LONG_DELTA_CHARS)):
            if i and self._long_interval_s:
                await asyncio.sleep(self._long_interval_s)  # pacing, as a real model streams
            yield text

    async def _slow_deltas(self, echo: str) -> AsyncGenerator[str, None]:
        if self._slow_start_s:
            await asyncio.sleep(self._slow_start_s)  # pacing: a model slow to start answering
        yield echo
        # The stream resumes this generator only after it has written the echo.
        self.first_delta.set()
        for _ in range(self._slow_steps):
            await asyncio.sleep(self._slow_interval_s)
            yield _SLOW_DELTA

    async def _stream(
        self, request: web.Request, model: str, deltas: AsyncGenerator[str, None]
    ) -> web.StreamResponse:
        """Write one text message as SSE, in the real API's event order."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        message_id = f"msg_fake_{next(self._message_ids):06d}"
        output_tokens = 0
        async with contextlib.aclosing(deltas):
            try:
                await response.prepare(request)
                await _send(
                    response,
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": message_id,
                            "type": "message",
                            "role": "assistant",
                            "model": model,
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {
                                "input_tokens": max(1, (request.content_length or 0) // 4),
                                "output_tokens": 1,
                                "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 0,
                            },
                        },
                    },
                )
                await _send(
                    response,
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                await _send(response, "ping", {"type": "ping"})
                async for text in deltas:
                    await _send(
                        response,
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": text},
                        },
                    )
                    output_tokens += 1
                await _send(
                    response, "content_block_stop", {"type": "content_block_stop", "index": 0}
                )
                await _send(
                    response,
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": max(1, output_tokens)},
                    },
                )
                await _send(response, "message_stop", {"type": "message_stop"})
                await response.write_eof()
            except ConnectionResetError:
                # The client hung up between two writes; a cancel usually wins this race.
                log.debug("client left %s after %d deltas", message_id, output_tokens)
        return response

    async def _stream_blocks(
        self, request: web.Request, model: str, blocks: list[dict[str, Any]]
    ) -> web.StreamResponse:
        """Write one message of whole ``text`` or ``tool_use`` blocks as SSE."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        message_id = f"msg_fake_{next(self._message_ids):06d}"
        await response.prepare(request)
        await _send(
            response,
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 1, "output_tokens": 1},
                },
            },
        )
        stop_reason = "end_turn"
        for index, block in enumerate(blocks):
            if block["type"] == "tool_use":
                stop_reason = "tool_use"
                start = {**block, "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            else:
                start = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": block["text"]}
            await _send(
                response,
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            await _send(
                response,
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            await _send(
                response, "content_block_stop", {"type": "content_block_stop", "index": index}
            )
        await _send(
            response,
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 1},
            },
        )
        await _send(response, "message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response


def _tool_step(body: dict[str, Any]) -> dict[str, Any] | None:
    """The next block of a ``TOOL_*`` script, or None when the conversation has none."""
    messages = body.get("messages", [])
    for start in range(len(messages) - 1, -1, -1):
        trigger = _user_text({"messages": [messages[start]]})
        if trigger:
            break
    else:
        return None
    # A line of its own, so a re-run note or a merge header may come before it.
    found = _TOOL_TRIGGER.search(trigger)
    if found is None:
        return None
    kind, argument = found.group(1), found.group(2).strip()
    results = [
        block
        for message in messages[start + 1 :]
        if message.get("role") == "user" and isinstance(message.get("content"), list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    steps: list[tuple[str, dict[str, Any]]]
    if kind == "TOOL_BASH":
        steps = [("Bash", {"command": argument, "description": "Run the requested command"})]
    elif kind == "TOOL_READ":
        steps = [("Read", {"file_path": argument})]
    elif kind == "TOOL_ASK":
        question = {
            "question": argument,
            "header": "Choice",
            "options": [
                {"label": "SQLite", "description": "one file, no server"},
                {"label": "Postgres", "description": "a server"},
            ],
            "multiSelect": False,
        }
        steps = [("AskUserQuestion", {"questions": [question]})]
    elif kind == "TOOL_PLAN":
        steps = [("ExitPlanMode", {"plan": f"# Plan\n\n1. {argument}\n2. Run the tests"})]
    else:
        steps = [
            ("Read", {"file_path": argument}),
            ("Edit", {"file_path": argument, "old_string": "old", "new_string": "new"}),
        ]
    if len(results) < len(steps):
        name, tool_input = steps[len(results)]
        return {
            "type": "tool_use",
            "id": f"toolu_fake_{start:03d}_{len(results)}",
            "name": name,
            "input": tool_input,
        }
    last = results[-1]
    content = last.get("content", "")
    if isinstance(content, list):
        content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    prefix = "TOOL ERROR: " if last.get("is_error") else "TOOL RESULT: "
    return {"type": "text", "text": prefix + str(content)[:_ECHO_MAX_CHARS]}


async def _send(response: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    payload = json.dumps(data, separators=(",", ":"))
    await response.write(f"event: {event}\ndata: {payload}\n\n".encode())


async def _deltas(texts: list[str]) -> AsyncGenerator[str, None]:
    for text in texts:
        yield text


def _echo(user_text: str) -> str:
    return _ECHO_PREFIX + user_text[:_ECHO_MAX_CHARS]


def _split(text: str, parts: int) -> list[str]:
    """``text`` cut into at most ``parts`` non-empty pieces of near-equal length."""
    size = max(1, -(-len(text) // parts))
    return _slices(text, size)


def _slices(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _is_title_request(body: dict[str, Any]) -> bool:
    output_format = (body.get("output_config") or {}).get("format") or {}
    return body.get("tools") == [] and output_format.get("type") == "json_schema"


def _user_text(body: dict[str, Any]) -> str:
    """The last non-reminder text block of the last user message, or ``""``."""
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    if not users:
        return ""
    content = users[-1].get("content")
    if isinstance(content, str):
        return content
    for block in reversed(content or []):
        text = block.get("text", "") if block.get("type") == "text" else ""
        if text and not text.lstrip().startswith(_SYSTEM_REMINDER):
            return str(text)
    return ""


def _error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    error = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    return web.json_response({"type": "error", "error": error}, status=status, headers=headers)


def claude_env(home: Path, base_url: str) -> dict[str, str]:
    """The whole environment for running the real CLI against a fake at ``base_url``.

    Only ``PATH`` is taken from this process, so no developer setting (a real key,
    ``ANTHROPIC_AUTH_TOKEN``, ``CLAUDE_CONFIG_DIR``) leaks in. ``home`` becomes HOME,
    where the CLI writes ``.claude.json`` and ``.claude/``. Retries are off, or a 5xx
    would hang a turn for minutes.
    """
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": _FAKE_API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }


def claude_command() -> str:
    """Path of the project-local CLI, else ``claude`` on PATH.

    Raises RuntimeError, saying how to install it, when neither exists.
    """
    if os.access(_LOCAL_CLAUDE, os.X_OK):
        return str(_LOCAL_CLAUDE)
    on_path = shutil.which("claude")
    if on_path is not None:
        return on_path
    raise RuntimeError(
        f"the claude CLI is missing: neither {_LOCAL_CLAUDE} nor `claude` on PATH exists; "
        "run `make test`, which installs it project-locally"
    )
