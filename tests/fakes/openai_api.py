"""Fake OpenAI Responses API that the real `codex` CLI (0.171.0) streams canned replies from.

Codex calls ``POST {base_url}/responses`` with ``stream: true`` and the whole conversation in
``input`` (it sends ``store: false``, so every request carries the history). Every request
is recorded before it is answered, so a test awaiting ``requests.get()`` sees it even when
the reply is an error or never finishes.

Replies are chosen from the conversation (case-sensitive substrings, first match wins):

- a tool's output came back (a ``function_call_output`` after the latest assistant
  message, in a turn no interrupt ended): ``"TOOL RESULT: "`` and that output's text (its
  first 200 characters). A command the approvers refused comes back as codex's own error
  text ("rejected by user").
- ``FAIL``: HTTP 500 ``server_error``.
- ``LIMIT_429``, ``LIMIT_USAGE``: the first request with this exact user text is refused
  as the API refuses when it is out of capacity: 429 ``rate_limit_exceeded`` with
  ``retry-after: 20``; 429 ``usage_limit_reached`` (a ChatGPT plan's limit, with when it
  resets). Later requests with the same text get the echo, so a re-run succeeds.
- ``SLOW``: the echo, then ``slow_steps`` deltas of ``" ."`` one every ``slow_interval_s``.
- ``TOOL_BASH <command>`` (a line of the latest user text): a call of codex's shell tool,
  ``exec_command`` with ``{"cmd": <command>}``.
- otherwise: ``"ECHO: " + user_text[:200]``, in three deltas.

The user text is what the latest user message says, without the ``<environment_context>``
codex adds and the ``<image …>`` tags around an attached image.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from tests.fakes._server import serve_on_loopback

__all__ = ["FakeOpenAI", "RecordedRequest", "codex_command", "codex_env", "user_text"]

log = logging.getLogger(__name__)

_API_ROOT = "/v1"
_RESPONSES_PATH = f"{_API_ROOT}/responses"
_ECHO_PREFIX = "ECHO: "
_ECHO_MAX_CHARS = 200
_ECHO_DELTAS = 3
_SLOW_DELTA = " ."
_TOOL_RESULT_PREFIX = "TOOL RESULT: "
_TOOL_BASH = re.compile(r"^TOOL_BASH (.+)$", re.MULTILINE)
_SHELL_TOOL = "exec_command"  # codex 0.171's shell tool, arguments {"cmd": ...}
_FAIL_STATUS = 500
_FAIL_MESSAGE = "fake internal error"
_USAGE_RESET_S = 120
# Parts of a user message that codex writes itself, around or beside the user's text.
_TURN_ABORTED = "<turn_aborted>"  # opens the turn after an interrupted one
_CODEX_PARTS = ("<environment_context>", "<image ", "</image>", _TURN_ABORTED)
# A handler still streaming when the fake stops is cancelled after this long.
_SHUTDOWN_TIMEOUT_S = 1.0

_REPO_ROOT = Path(__file__).resolve().parents[2]
_LOCAL_CODEX = _REPO_ROOT / ".tools" / "codex" / "node_modules" / ".bin" / "codex"
_FAKE_API_KEY = "sk-test-concordia-fake-0000000000000000"  # key-shaped but fake
_PROVIDER = "concordia_fake"
_MODEL = "gpt-fake"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One ``POST /v1/responses`` as the fake received it.

    ``user_text`` is the latest user message's own text (`user_text`); ``input_count`` is
    ``len(body["input"])``, which grows as the conversation does; ``tool_outputs`` are the
    outputs of the shell calls the request carries back, oldest first.
    """

    user_text: str
    input_count: int
    tool_outputs: tuple[str, ...]
    body: dict[str, Any]


class FakeOpenAI:
    """A Responses API on ``127.0.0.1`` (free port) for the duration of ``async with``.

    ``requests`` and ``turns`` receive every request in arrival order, including ones
    answered with an error. ``first_delta`` is set once a ``SLOW`` reply has written its
    first text delta; tests clear it themselves between turns. ``usage_sent`` holds the
    (input, output) token counts of each completed reply. A client that hangs up
    mid-stream (codex does on interrupt) cancels its handler at once.
    """

    def __init__(self, *, slow_interval_s: float = 0.5, slow_steps: int = 30) -> None:
        if slow_interval_s < 0:
            raise ValueError(f"slow_interval_s must be >= 0, got {slow_interval_s}")
        if slow_steps < 0:
            raise ValueError(f"slow_steps must be >= 0, got {slow_steps}")
        self._slow_interval_s = slow_interval_s
        self._slow_steps = slow_steps
        self._limited: set[str] = set()  # user texts a LIMIT_* trigger has refused once
        self.requests: asyncio.Queue[RecordedRequest] = asyncio.Queue()
        self.turns: list[RecordedRequest] = []
        self.first_delta = asyncio.Event()
        self.usage_sent: list[tuple[int, int]] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._is_used = False

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the API root a provider's ``base_url`` names;
        raises RuntimeError outside ``async with``."""
        if self._base_url is None:
            raise RuntimeError(
                "FakeOpenAI is not running; use it as `async with FakeOpenAI() as api:`"
            )
        return self._base_url

    def user_texts(self) -> list[str]:
        """The user text of every request so far, in order."""
        return [turn.user_text for turn in self.turns]

    async def __aenter__(self) -> Self:
        if self._is_used:
            raise RuntimeError("a FakeOpenAI cannot be started twice; make a new one")
        self._is_used = True
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(_RESPONSES_PATH, self._responses)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = await serve_on_loopback(app, shutdown_timeout_s=_SHUTDOWN_TIMEOUT_S)
        host, port = self._runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}{_API_ROOT}"
        log.debug("fake OpenAI API listening on %s", self._base_url)
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

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error_response(404, f"fake OpenAI API has no {request.method} {request.path}")

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error_response(400, "request body is not JSON")
        if not isinstance(body, dict) or body.get("stream") is not True:
            return _error_response(400, "fake OpenAI API only answers streaming requests")
        items = body.get("input")
        if not isinstance(items, list):
            return _error_response(400, "input must be a list of items")
        recorded = RecordedRequest(
            user_text=user_text(items),
            input_count=len(items),
            tool_outputs=tuple(_tool_outputs(items)),
            body=body,
        )
        self.turns.append(recorded)
        self.requests.put_nowait(recorded)
        log.debug("fake OpenAI API request %d: %r", len(self.turns), recorded.user_text[:80])

        text = recorded.user_text
        output = _pending_tool_output(items)
        if output is not None:
            return await self._stream_text(request, body, _deltas([_TOOL_RESULT_PREFIX + output]))
        if "FAIL" in text:
            return _error_response(_FAIL_STATUS, _FAIL_MESSAGE, kind="server_error")
        limited = self._limit(text)
        if limited is not None:
            return limited
        if "SLOW" in text:
            return await self._stream_text(request, body, self._slow_deltas(_echo(text)))
        command = _TOOL_BASH.search(text)
        if command is not None:
            return await self._stream_call(request, body, command.group(1).strip())
        return await self._stream_text(request, body, _deltas(_split(_echo(text), _ECHO_DELTAS)))

    def _limit(self, text: str) -> web.Response | None:
        """The capacity refusal a ``LIMIT_*`` trigger asks for, the first time only."""
        trigger = next((t for t in ("LIMIT_429", "LIMIT_USAGE") if t in text), None)
        if trigger is None or text in self._limited:
            return None
        self._limited.add(text)
        if trigger == "LIMIT_429":
            return _error_response(
                429,
                "Rate limit reached for requests per min. Please try again in 20s.",
                kind="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": "20"},
            )
        return _error_response(
            429,
            "The usage limit has been reached",
            kind="usage_limit_reached",
            extra={"plan_type": "plus", "resets_in_seconds": _USAGE_RESET_S},
        )

    async def _slow_deltas(self, echo: str) -> AsyncGenerator[str, None]:
        yield echo
        # The stream resumes this generator only after it has written the echo.
        self.first_delta.set()
        for _ in range(self._slow_steps):
            await asyncio.sleep(self._slow_interval_s)  # pacing, as a real model streams
            yield _SLOW_DELTA

    async def _stream_text(
        self, request: web.Request, body: dict[str, Any], deltas: AsyncGenerator[str, None]
    ) -> web.StreamResponse:
        """One assistant message as SSE, in the Responses API's event order."""
        response_id, item_id = self._new_ids("msg")
        stream = _Stream(await _prepare(request))
        text = ""
        async with contextlib.aclosing(deltas):
            try:
                await stream.send("response.created", {"response": _response(response_id, body)})
                await stream.send(
                    "response.in_progress", {"response": _response(response_id, body)}
                )
                item = {
                    "type": "message",
                    "id": item_id,
                    "role": "assistant",
                    "status": "in_progress",
                    "content": [],
                }
                await stream.send("response.output_item.added", {"output_index": 0, "item": item})
                part = {"type": "output_text", "text": "", "annotations": []}
                where = {"item_id": item_id, "output_index": 0, "content_index": 0}
                await stream.send("response.content_part.added", {**where, "part": part})
                deltas_sent = 0
                async for delta in deltas:
                    text += delta
                    deltas_sent += 1
                    await stream.send("response.output_text.delta", {**where, "delta": delta})
                await stream.send("response.output_text.done", {**where, "text": text})
                part = {"type": "output_text", "text": text, "annotations": []}
                await stream.send("response.content_part.done", {**where, "part": part})
                done = {**item, "status": "completed", "content": [part]}
                await stream.send("response.output_item.done", {"output_index": 0, "item": done})
                await self._complete(stream, request, body, response_id, done, deltas_sent)
            except ConnectionResetError:
                # The client hung up between two writes; a cancel usually wins this race.
                log.debug("client left %s after %d characters", response_id, len(text))
        return stream.response

    async def _stream_call(
        self, request: web.Request, body: dict[str, Any], command: str
    ) -> web.StreamResponse:
        """One call of codex's shell tool, as the model streams a function call."""
        response_id, item_id = self._new_ids("fc")
        call_id = f"call_fake_{item_id}"
        arguments = json.dumps({"cmd": command})
        stream = _Stream(await _prepare(request))
        await stream.send("response.created", {"response": _response(response_id, body)})
        item = {
            "type": "function_call",
            "id": item_id,
            "call_id": call_id,
            "name": _SHELL_TOOL,
            "arguments": "",
            "status": "in_progress",
        }
        await stream.send("response.output_item.added", {"output_index": 0, "item": item})
        where = {"item_id": item_id, "output_index": 0}
        await stream.send("response.function_call_arguments.delta", {**where, "delta": arguments})
        await stream.send(
            "response.function_call_arguments.done", {**where, "arguments": arguments}
        )
        done = {**item, "arguments": arguments, "status": "completed"}
        await stream.send("response.output_item.done", {"output_index": 0, "item": done})
        await self._complete(stream, request, body, response_id, done, 1)
        return stream.response

    async def _complete(
        self,
        stream: _Stream,
        request: web.Request,
        body: dict[str, Any],
        response_id: str,
        item: dict[str, Any],
        output_tokens: int,
    ) -> None:
        input_tokens = max(1, (request.content_length or 0) // 4)
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        completed = {
            **_response(response_id, body),
            "status": "completed",
            "output": [item],
            "usage": usage,
        }
        await stream.send("response.completed", {"response": completed})
        await stream.response.write_eof()
        self.usage_sent.append((input_tokens, output_tokens))

    def _new_ids(self, kind: str) -> tuple[str, str]:
        n = next(self._ids)
        return f"resp_fake_{n:06d}", f"{kind}_fake_{n:06d}"


class _Stream:
    """An SSE response whose events carry the API's ``sequence_number``."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self._sequence = itertools.count()

    async def send(self, event: str, data: dict[str, Any]) -> None:
        payload = {"type": event, "sequence_number": next(self._sequence), **data}
        text = json.dumps(payload, separators=(",", ":"))
        await self.response.write(f"event: {event}\ndata: {text}\n\n".encode())


async def _prepare(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


def _response(response_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "status": "in_progress",
        "model": str(body.get("model", _MODEL)),
        "output": [],
    }


async def _deltas(texts: list[str]) -> AsyncGenerator[str, None]:
    for text in texts:
        yield text


def _echo(text: str) -> str:
    return _ECHO_PREFIX + text[:_ECHO_MAX_CHARS]


def _split(text: str, parts: int) -> list[str]:
    """``text`` cut into at most ``parts`` non-empty pieces of near-equal length."""
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def user_text(items: list[Any]) -> str:
    """The latest user message's own text: its ``input_text`` parts but those codex adds
    (the environment context, the tags around an image), joined by newlines; ``""`` when
    there is no user message."""
    for item in reversed(items):
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if not isinstance(content, list):
            continue
        texts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "input_text"
            and not str(part.get("text", "")).lstrip().startswith(_CODEX_PARTS)
        ]
        if texts:
            return "\n".join(texts)
    return ""


def _output_text(item: dict[str, Any]) -> str:
    output = item.get("output", "")
    if isinstance(output, list):  # content items: keep their text
        return " ".join(str(part.get("text", "")) for part in output if isinstance(part, dict))
    return str(output)


def _tool_outputs(items: list[Any]) -> list[str]:
    return [
        _output_text(item)
        for item in items
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]


def _pending_tool_output(items: list[Any]) -> str | None:
    """The latest tool output the model has not answered yet (it came after the latest
    assistant message, and no interrupt ended its turn), cut to 200 characters; None when
    there is none."""
    for item in reversed(items):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message" and item.get("role") == "assistant":
            return None
        if item.get("role") == "user" and _TURN_ABORTED in json.dumps(item.get("content")):
            return None
        if item.get("type") == "function_call_output":
            return _output_text(item)[:_ECHO_MAX_CHARS]
    return None


def _error_response(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    error = {"message": message, "type": kind, "param": None, "code": code, **(extra or {})}
    return web.json_response({"error": error}, status=status, headers=headers)


def codex_env(home: Path, base_url: str) -> dict[str, str]:
    """The whole environment for running the real CLI against a fake at ``base_url``.

    Only ``PATH`` is taken from this process, so no developer setting (a real key,
    ``OPENAI_BASE_URL``, ``CODEX_HOME``) leaks in. ``home`` becomes HOME; CODEX_HOME is
    ``home/.codex``, whose config.toml names the fake as the model provider (the Responses
    wire API, the only one 0.171 speaks), turns retries off (or a 5xx would hang a turn for
    minutes) and update checks, analytics and feedback uploads too. TMPDIR is
    ``home/tmp``: codex will not put its sandbox helper (``codex-linux-sandbox``) in a
    CODEX_HOME under the temp dir, and pytest's tmp_path is under /tmp.
    """
    codex_home = home / ".codex"
    tmp = home / "tmp"
    codex_home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f"""model = "{_MODEL}"
model_provider = "{_PROVIDER}"
check_for_update_on_startup = false

[model_providers.{_PROVIDER}]
name = "Concordia's fake OpenAI API"
base_url = {json.dumps(base_url)}
env_key = "OPENAI_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[feedback]
enabled = false
""",
        encoding="utf-8",
    )
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "TMPDIR": str(tmp),
        "OPENAI_API_KEY": _FAKE_API_KEY,
    }


def codex_command() -> str:
    """Path of the project-local CLI, else ``codex`` on PATH.

    Raises RuntimeError, saying how to install it, when neither exists.
    """
    if os.access(_LOCAL_CODEX, os.X_OK):
        return str(_LOCAL_CODEX)
    on_path = shutil.which("codex")
    if on_path is not None:
        return on_path
    raise RuntimeError(
        f"the codex CLI is missing: neither {_LOCAL_CODEX} nor `codex` on PATH exists; "
        "run `make test`, which installs it project-locally"
    )
