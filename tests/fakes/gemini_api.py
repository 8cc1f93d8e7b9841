"""Fake Gemini API (generateContent) that the real google-genai client talks to.

Every generateContent request is recorded before it is answered, so a test awaiting
``wait_requests(n)`` sees it even when the reply is an error, a hang or a drop.

The wire, as google-genai 3.6.1 speaks it (``_api_client.py``, ``errors.py``; checked by
``tests/test_fake_gemini.py``, which also records how the client times out and retries):

- **Request:** ``POST {base_url}/{api_version}/models/{model}:generateContent``.
  ``api_version`` is ``v1`` by default in 3.6.x (``GOOGLE_AI_API_DEFAULT_VERSION``) and
  ``v1beta`` with ``HttpOptions(api_version="v1beta")``; the fake serves both. Headers:
  ``x-goog-api-key``, ``Content-Type: application/json``, ``User-Agent`` and
  ``x-goog-api-client`` (``google-genai-sdk/3.6.1 gl-python/3.11.7``) and, when
  ``HttpOptions.timeout`` (milliseconds) is set, ``X-Server-Timeout: <ceil seconds>``.
- **Errors:** ``{"error": {"code", "message", "status", "details"?}}`` as
  ``application/json``; ``status`` is a google.rpc.Code name. The SDK raises
  ``errors.ClientError`` for 4xx and ``errors.ServerError`` for 5xx, with ``.code`` the
  HTTP status, ``.status``/``.message`` from the body and ``.details`` the whole body.
  As the real API does, a missing key gets 403 ``PERMISSION_DENIED`` and a wrong one 400
  ``INVALID_ARGUMENT`` with an ``API_KEY_INVALID`` ErrorInfo detail. Google sends no
  ``Retry-After`` header on a 429: the wait is a ``google.rpc.RetryInfo`` detail
  (``"retryDelay": "32s"``), which ``GeminiReply.error(..., retry_delay_s=…)`` adds.
- **Blocked prompt:** 200 with ``promptFeedback.blockReason`` and no ``candidates``.

Replies come from ``script()``'s queue, one per request in order, then from ``responder``
(by default HTTP 500 ``INTERNAL`` "no scripted reply"). A request with a missing or wrong
key is recorded and answered with the auth error; it does not use up a scripted reply.
Any other path or method gets 404 ``NOT_FOUND`` and is not recorded.

`FakeGeminiForCli` serves the API as the real Gemini CLI (0.61.0, with ``GEMINI_API_KEY``
and ``GOOGLE_GEMINI_BASE_URL``) calls it, answering from triggers in the user's text as
``tests/fakes/anthropic_api.py`` does; `gemini_cli_env` is the CLI's whole environment.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import enum
import itertools
import json
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, assert_never

from aiohttp import web

from tests.fakes._server import serve_on_loopback

__all__ = [
    "CliRequestKind",
    "FakeGemini",
    "FakeGeminiForCli",
    "GeminiReply",
    "RecordedCliRequest",
    "RecordedGeminiRequest",
    "ReplyKind",
    "gemini_cli_env",
    "gemini_command",
    "request_text",
    "system_text",
]

log = logging.getLogger(__name__)

_GENERATE_CONTENT_PATH = r"/{api_version:v1|v1beta}/models/{model:[^/:]+}:generateContent"
_API_KEY_HEADER = "x-goog-api-key"
_DEFAULT_API_KEY = "test-key"
_NO_REPLY_MESSAGE = "no scripted reply"
_BLOCK_REASON = "SAFETY"
# The google.rpc.Code names the API puts in error.status.
_RPC_STATUSES = frozenset(
    {
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)
# The real API's texts for a request without a key and with a wrong one.
_MISSING_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_INVALID_KEY_MESSAGE = "API key not valid. Please pass a valid API key."
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
# A handler the client never hung up on is cancelled after this long when the fake stops,
# instead of aiohttp's default 60 s; hung handlers are released before that anyway.
_SHUTDOWN_TIMEOUT_S = 1.0
_CHARS_PER_TOKEN = 4

_Json = dict[str, Any]


class ReplyKind(enum.StrEnum):
    """What the fake does with one request."""

    CONTENT = "content"  # 200 with one candidate whose only part is `part_text`
    BLOCKED = "blocked"  # 200 with promptFeedback.blockReason and no candidates
    ERROR = "error"  # an HTTP error with Google's error body
    HANG = "hang"  # no answer until the fake stops, then the connection is closed
    DROP = "drop"  # the connection is closed without a response


@dataclass(frozen=True, slots=True)
class GeminiReply:
    """One scripted answer; build it with the class methods, not the constructor."""

    kind: ReplyKind
    part_text: str = ""
    http_status: int = 200
    error_status: str = ""
    error_message: str = ""
    retry_delay_s: float | None = None

    @classmethod
    def json(cls, obj: object) -> GeminiReply:
        """A success whose text is ``json.dumps(obj)``, as with ``response_mime_type`` JSON."""
        return cls(ReplyKind.CONTENT, part_text=json.dumps(obj))

    @classmethod
    def text(cls, text: str) -> GeminiReply:
        """A success whose text is ``text`` exactly (for "the model did not answer JSON")."""
        return cls(ReplyKind.CONTENT, part_text=text)

    @classmethod
    def error(
        cls, code: int, status: str, message: str, *, retry_delay_s: float | None = None
    ) -> GeminiReply:
        """HTTP ``code`` with ``{"error": {"code", "message", "status"}}``.

        ``status`` is a google.rpc.Code name (``RESOURCE_EXHAUSTED`` for 429, ``INTERNAL``
        for 500, ``UNAVAILABLE`` for 503). ``retry_delay_s`` adds the RetryInfo detail the
        real API sends with a 429. Raises ValueError for a non-error code or unknown status.
        """
        if not 400 <= code <= 599:
            raise ValueError(f"GeminiReply.error needs an HTTP error code (400-599), got {code}")
        if status not in _RPC_STATUSES:
            raise ValueError(
                f"GeminiReply.error needs a google.rpc.Code name such as RESOURCE_EXHAUSTED, "
                f"got {status!r}"
            )
        if retry_delay_s is not None and retry_delay_s < 0:
            raise ValueError(f"retry_delay_s must be >= 0, got {retry_delay_s}")
        return cls(
            ReplyKind.ERROR,
            http_status=code,
            error_status=status,
            error_message=message,
            retry_delay_s=retry_delay_s,
        )

    @classmethod
    def hang(cls) -> GeminiReply:
        """No answer at all until the fake stops (or the client gives up)."""
        return cls(ReplyKind.HANG)

    @classmethod
    def blocked(cls) -> GeminiReply:
        """A blocked prompt: 200, ``promptFeedback.blockReason`` ``SAFETY``, no candidates."""
        return cls(ReplyKind.BLOCKED)

    @classmethod
    def drop(cls) -> GeminiReply:
        """The request is read, then the connection is closed with no response."""
        return cls(ReplyKind.DROP)


def _no_scripted_reply(body: _Json) -> GeminiReply:
    return GeminiReply.error(500, "INTERNAL", _NO_REPLY_MESSAGE)


@dataclass(frozen=True, slots=True)
class RecordedGeminiRequest:
    """One ``POST …:generateContent`` as the fake received it.

    ``path`` is the request path (``/v1/models/gemini-2.5-flash:generateContent``),
    ``model`` the model id from it (``gemini-2.5-flash``), ``headers`` the request headers
    (case-insensitive) and ``body`` the parsed JSON body.
    """

    path: str
    model: str
    headers: Mapping[str, str]
    body: _Json


def request_text(body: _Json) -> str:
    """The text parts of every user turn in ``body["contents"]``, concatenated in order."""
    return "".join(
        _parts_text(content)
        for content in body.get("contents", [])
        if content.get("role", "user") == "user"
    )


def system_text(body: _Json) -> str:
    """The text of ``body["systemInstruction"]``; empty when there is none."""
    instruction = body.get("systemInstruction")
    return _parts_text(instruction) if instruction else ""


def _parts_text(content: _Json) -> str:
    return "".join(part.get("text", "") for part in content.get("parts", []))


class FakeGemini:
    """A Gemini API on ``127.0.0.1`` (free port) for the duration of ``async with``.

    ``requests`` lists every generateContent request in arrival order, including ones
    answered with an error; only the fake appends to it. ``responder`` may be replaced
    at any time; it is called with the request body when the script is empty.
    """

    def __init__(self, *, api_key: str = _DEFAULT_API_KEY) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty: the fake checks x-goog-api-key")
        self._api_key = api_key
        self.requests: list[RecordedGeminiRequest] = []
        self.responder: Callable[[_Json], GeminiReply] = _no_scripted_reply
        self._script: collections.deque[GeminiReply] = collections.deque()
        self._recorded = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._response_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._is_used = False

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; raises RuntimeError outside ``async with``."""
        if self._base_url is None:
            raise RuntimeError(
                "FakeGemini is not running; use it as `async with FakeGemini() as fake:`"
            )
        return self._base_url

    def script(self, *replies: GeminiReply) -> None:
        """Queue ``replies``; each request with the right key takes the next one."""
        self._script.extend(replies)

    async def wait_requests(self, n: int, *, timeout_s: float = 5.0) -> list[RecordedGeminiRequest]:
        """The first ``n`` recorded requests, once that many have arrived.

        Raises TimeoutError if fewer than ``n`` arrive within ``timeout_s``. Safe to cancel.
        """
        if n < 1:
            raise ValueError(f"wait_requests needs n >= 1, got {n}")
        try:
            async with asyncio.timeout(timeout_s), self._recorded:
                await self._recorded.wait_for(lambda: len(self.requests) >= n)
        except TimeoutError:
            raise TimeoutError(
                f"FakeGemini got {len(self.requests)} request(s) within {timeout_s} s, expected {n}"
            ) from None
        return self.requests[:n]

    async def __aenter__(self) -> Self:
        if self._is_used:
            raise RuntimeError("a FakeGemini cannot be started twice; make a new one")
        self._is_used = True
        app = web.Application()
        app.router.add_post(_GENERATE_CONTENT_PATH, self._generate_content)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # A client that hangs up (its timeout fired) cancels a hung handler at once, and
        # closing the transport in a drop ends its handler too.
        runner = await serve_on_loopback(app, shutdown_timeout_s=_SHUTDOWN_TIMEOUT_S)
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}"
        log.debug("fake Gemini API listening on %s", self._base_url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Release hung requests (their connections close), stop listening; idempotent."""
        self._stopping.set()
        runner, self._runner = self._runner, None
        self._base_url = None
        if runner is not None:
            await runner.cleanup()

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error_response(
            404, "NOT_FOUND", f"fake Gemini API has no {request.method} {request.path}"
        )

    async def _generate_content(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error_response(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(body, dict):
            return _error_response(400, "INVALID_ARGUMENT", "The request body is not an object.")
        model = request.match_info["model"]
        async with self._recorded:
            self.requests.append(
                RecordedGeminiRequest(
                    path=request.path, model=model, headers=request.headers, body=body
                )
            )
            self._recorded.notify_all()
        log.debug("fake Gemini API request %d for %s", len(self.requests), model)

        key = request.headers.get(_API_KEY_HEADER, "")
        if not key:
            return _error_response(403, "PERMISSION_DENIED", _MISSING_KEY_MESSAGE)
        if key != self._api_key:
            return _error_response(
                400,
                "INVALID_ARGUMENT",
                _INVALID_KEY_MESSAGE,
                details=[
                    {
                        "@type": _ERROR_INFO_TYPE,
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )

        reply = self._script.popleft() if self._script else self.responder(body)
        match reply.kind:
            case ReplyKind.CONTENT:
                return web.json_response(self._content(body, model, reply.part_text))
            case ReplyKind.BLOCKED:
                return web.json_response(self._blocked(body, model))
            case ReplyKind.ERROR:
                details = None
                if reply.retry_delay_s is not None:
                    delay = f"{reply.retry_delay_s:g}s"  # proto JSON Duration, as "32s"
                    details = [{"@type": _RETRY_INFO_TYPE, "retryDelay": delay}]
                return _error_response(
                    reply.http_status, reply.error_status, reply.error_message, details=details
                )
            case ReplyKind.HANG:
                await self._stopping.wait()
                return await _drop(request)
            case ReplyKind.DROP:
                return await _drop(request)
            case _:
                assert_never(reply.kind)

    def _content(self, body: _Json, model: str, text: str) -> _Json:
        prompt_tokens = _tokens(request_text(body) + system_text(body))
        reply_tokens = _tokens(text)
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": text}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": reply_tokens,
                "totalTokenCount": prompt_tokens + reply_tokens,
            },
            "modelVersion": model,
            "responseId": self._response_id(),
        }

    def _blocked(self, body: _Json, model: str) -> _Json:
        prompt_tokens = _tokens(request_text(body) + system_text(body))
        return {
            "promptFeedback": {
                "blockReason": _BLOCK_REASON,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
                ],
            },
            "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
            "modelVersion": model,
            "responseId": self._response_id(),
        }

    def _response_id(self) -> str:
        return f"fake-response-{next(self._response_ids):06d}"


async def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection with nothing written; the client sees a server disconnect."""
    transport = request.transport
    if transport is not None:
        transport.close()
    # connection_lost cancels this handler (handler_cancellation=True); returning a
    # response instead would make aiohttp write to the closed transport and log an error.
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable: closing the connection cancels the handler")


def _error_response(
    code: int, status: str, message: str, *, details: list[_Json] | None = None
) -> web.Response:
    error: _Json = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=code)


def _tokens(text: str) -> int:
    return max(1, len(text) // _CHARS_PER_TOKEN)


# -- the API as the gemini CLI calls it -------------------------------------------------------
#
# What @google/gemini-cli 0.61.0 sends with GEMINI_API_KEY and GOOGLE_GEMINI_BASE_URL (its
# requests are kept in tests/payloads/gemini/): nothing at start; per turn, when the model is
# "auto", ``POST /v1beta/models/<flash-lite>:generateContent`` (the router's classifier: a
# JSON answer with ``complexity_score``), then ``POST /v1beta/models/<model>:
# streamGenerateContent?alt=sse`` for each model call of the turn (again after each tool
# call, with its functionResponse); ``:countTokens`` only for a request holding an image.
# Every request carries ``x-goog-api-key``.

_CLI_MODEL_PATH = r"/{api_version:v1|v1beta}/models/{model:[^/:]+}"
_CLI_ECHO_PREFIX = "ECHO: "
_CLI_ECHO_MAX_CHARS = 200
_CLI_ECHO_DELTAS = 3
_CLI_SLOW_DELTA = " ."
_CLI_FAIL_MESSAGE = "fake internal error"
# The real API's 429 for a per-minute quota (AI Studio keys).
_CLI_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
_QUOTA_FAILURE_TYPE = "type.googleapis.com/google.rpc.QuotaFailure"
_CLI_TOOL_TRIGGER = re.compile(r"^TOOL_READ (.+)$", re.MULTILINE)
_CLI_READ_TOOL = "read_file"  # the CLI's read tool; its parameter is file_path
_CLI_RESULT_MAX_CHARS = 200
_SESSION_CONTEXT = "<session_context>"
# The CLI inlines an @-referenced file (an image) after the prompt, between these parts.
_REFERENCES_START = "--- Content from referenced files ---"
_CLASSIFIER_FIELD = "complexity_score"

_REPO_ROOT = Path(__file__).resolve().parents[2]
_LOCAL_GEMINI = _REPO_ROOT / ".tools" / "gemini" / "node_modules" / ".bin" / "gemini"
# What gemini_cli_env writes to $HOME/.gemini/settings.json, and why:
_CLI_SETTINGS: _Json = {
    # With GOOGLE_GEMINI_BASE_URL set and no auth type chosen, 0.61.0 picks "gateway" and
    # then refuses it ("Invalid auth method selected.", exit 41): say it is an API key.
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
    # maxAttempts 1: a 429 or 5xx fails the turn at once instead of after ten tries with
    # backoff (5 s to 30 s, or the 429's retryDelay); fetch errors are not retried either.
    "general": {
        "enableAutoUpdate": False,
        "enableAutoUpdateNotification": False,
        "maxAttempts": 1,
        "retryFetchErrors": False,
    },
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    # SLOW's " ." deltas repeat on purpose: the CLI would cut them off as a loop (a warning,
    # then a successful result) once a 50-character chunk has come ten times.
    "model": {"disableLoopDetection": True},
}


class CliRequestKind(enum.StrEnum):
    """Which call of the CLI a request is."""

    STREAM = "stream"  # streamGenerateContent: a model call of a turn
    GENERATE = "generate"  # generateContent: a side call (the router's classifier)
    COUNT_TOKENS = "count_tokens"
    OTHER = "other"  # anything else: answered 404


@dataclass(frozen=True, slots=True)
class RecordedCliRequest:
    """One request as `FakeGeminiForCli` received it.

    ``user_text``, for a model call of a turn (``STREAM``), is the prompt in the request's
    last content when that is the user's: the text before any inlined file, without the
    CLI's ``<session_context>``; "" when it carries a tool's functionResponse instead, and
    for the other kinds. ``images`` are the inlineData parts of that content, decoded.
    """

    kind: CliRequestKind
    path: str
    model: str
    headers: Mapping[str, str]
    body: _Json
    user_text: str = ""
    images: tuple[bytes, ...] = ()


class FakeGeminiForCli:
    """The Gemini API on ``127.0.0.1`` (free port), as the real gemini CLI calls it, for
    the duration of ``async with``. Replies are chosen from the latest user text
    (case-sensitive substrings, first match wins):

    - ``TOOL_READ <path>`` on a line of its own: a functionCall of ``read_file`` for the
      path; once its functionResponse is back, ``"TOOL RESULT: "`` and the output (``"TOOL
      ERROR: "`` and the error when the tool failed).
    - ``FAIL``: HTTP 500 ``INTERNAL``.
    - ``LIMIT_429``: the first request with this exact text gets the real API's 429
      ``RESOURCE_EXHAUSTED`` for a per-minute quota, with a RetryInfo of ``limit_retry_s``;
      later ones are answered.
    - ``SLOW``: the echo, then ``slow_steps`` deltas of ``" ."``, ``slow_interval_s`` apart.
    - otherwise ``"ECHO: " + text[:200]`` in three deltas.

    ``requests`` receives every request (any path, any key) in arrival order and ``turns``
    lists the streamGenerateContent ones; `user_texts` is what reached the model. A side
    ``generateContent`` (the router's classifier) is answered with a low complexity score.
    ``first_delta`` is set once a ``SLOW`` reply has written its echo.
    """

    def __init__(
        self,
        *,
        slow_interval_s: float = 0.5,
        slow_steps: int = 30,
        limit_retry_s: float = 2.0,
        api_key: str = _DEFAULT_API_KEY,
    ) -> None:
        if slow_interval_s < 0 or slow_steps < 0 or limit_retry_s < 0:
            raise ValueError(
                "slow_interval_s, slow_steps and limit_retry_s must be >= 0, got "
                f"{slow_interval_s}, {slow_steps} and {limit_retry_s}"
            )
        self._slow_interval_s = slow_interval_s
        self._slow_steps = slow_steps
        self._limit_retry_s = limit_retry_s
        self._api_key = api_key
        self._limited: set[str] = set()  # user texts LIMIT_429 has refused once
        self.requests: asyncio.Queue[RecordedCliRequest] = asyncio.Queue()
        self.turns: list[RecordedCliRequest] = []
        self.first_delta = asyncio.Event()
        self._response_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._is_used = False

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; raises RuntimeError outside ``async with``."""
        if self._base_url is None:
            raise RuntimeError(
                "FakeGeminiForCli is not running; use it as `async with FakeGeminiForCli() as api:`"
            )
        return self._base_url

    def user_texts(self) -> list[str]:
        """The prompt of each model call that carried one, in order (tool follow-ups carry
        none)."""
        return [turn.user_text for turn in self.turns if turn.user_text]

    async def __aenter__(self) -> Self:
        if self._is_used:
            raise RuntimeError("a FakeGeminiForCli cannot be started twice; make a new one")
        self._is_used = True
        app = web.Application(client_max_size=64 * 1024 * 1024)  # a 200 kB prompt and more
        app.router.add_post(_CLI_MODEL_PATH + ":streamGenerateContent", self._stream)
        app.router.add_post(_CLI_MODEL_PATH + ":generateContent", self._generate)
        app.router.add_post(_CLI_MODEL_PATH + ":countTokens", self._count_tokens)
        app.router.add_route("*", "/{tail:.*}", self._other)
        runner = await serve_on_loopback(app, shutdown_timeout_s=_SHUTDOWN_TIMEOUT_S)
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}"
        log.debug("fake Gemini API for the CLI listening on %s", self._base_url)
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

    async def _record(self, request: web.Request, kind: CliRequestKind) -> RecordedCliRequest:
        try:
            body = await request.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        contents = body.get("contents") or [{}]
        last = contents[-1] if contents[-1].get("role", "user") == "user" else {}
        recorded = RecordedCliRequest(
            kind=kind,
            path=request.path_qs,
            model=request.match_info.get("model", ""),
            headers=request.headers,
            body=body,
            user_text=_prompt_of(last) if kind is CliRequestKind.STREAM else "",
            images=_images_of(last),
        )
        if kind is CliRequestKind.STREAM:
            self.turns.append(recorded)
        self.requests.put_nowait(recorded)
        log.debug("fake Gemini API (CLI) %s %s: %r", kind, request.path, recorded.user_text[:80])
        return recorded

    def _key_error(self, request: web.Request) -> web.Response | None:
        key = request.headers.get(_API_KEY_HEADER, "")
        if not key:
            return _error_response(403, "PERMISSION_DENIED", _MISSING_KEY_MESSAGE)
        if key != self._api_key:
            return _error_response(400, "INVALID_ARGUMENT", _INVALID_KEY_MESSAGE)
        return None

    async def _other(self, request: web.Request) -> web.Response:
        await self._record(request, CliRequestKind.OTHER)
        return _error_response(
            404, "NOT_FOUND", f"fake Gemini API has no {request.method} {request.path}"
        )

    async def _count_tokens(self, request: web.Request) -> web.Response:
        recorded = await self._record(request, CliRequestKind.COUNT_TOKENS)
        if (refused := self._key_error(request)) is not None:
            return refused
        return web.json_response({"totalTokens": _tokens(json.dumps(recorded.body))})

    async def _generate(self, request: web.Request) -> web.Response:
        """A side call: the classifier gets a low score (the flash model), others ``{}`` as
        JSON or a short text."""
        recorded = await self._record(request, CliRequestKind.GENERATE)
        if (refused := self._key_error(request)) is not None:
            return refused
        config = recorded.body.get("generationConfig") or {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema") or {}
        if _CLASSIFIER_FIELD in (schema.get("properties") or {}):
            text = json.dumps({"complexity_reasoning": "fake", _CLASSIFIER_FIELD: 10})
        elif config.get("responseMimeType") == "application/json":
            text = "{}"
        else:
            text = "fake"
        return web.json_response(self._content(recorded.body, recorded.model, text))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request, CliRequestKind.STREAM)
        if (refused := self._key_error(request)) is not None:
            return refused
        body, model, text = recorded.body, recorded.model, recorded.user_text
        step = _cli_tool_step(body)
        if step is not None:
            return await self._sse(request, body, model, [step])
        if "FAIL" in text:
            return _error_response(500, "INTERNAL", _CLI_FAIL_MESSAGE)
        if "LIMIT_429" in text and text not in self._limited:
            self._limited.add(text)
            delay = f"{self._limit_retry_s:g}s"
            violation = {
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
            }
            return _error_response(
                429,
                "RESOURCE_EXHAUSTED",
                _CLI_QUOTA_MESSAGE,
                details=[
                    {"@type": _QUOTA_FAILURE_TYPE, "violations": [violation]},
                    {"@type": _RETRY_INFO_TYPE, "retryDelay": delay},
                ],
            )
        echo = _CLI_ECHO_PREFIX + text[:_CLI_ECHO_MAX_CHARS]
        if "SLOW" in text:
            return await self._sse(request, body, model, self._slow(echo))
        size = max(1, -(-len(echo) // _CLI_ECHO_DELTAS))
        pieces = [echo[i : i + size] for i in range(0, len(echo), size)]
        return await self._sse(request, body, model, [{"text": piece} for piece in pieces])

    async def _slow(self, echo: str) -> AsyncIterator[_Json]:
        yield {"text": echo}
        # The stream resumes this generator only after it has written the echo.
        self.first_delta.set()
        for _ in range(self._slow_steps):
            await asyncio.sleep(self._slow_interval_s)  # pacing, as a real model streams
            yield {"text": _CLI_SLOW_DELTA}

    async def _sse(
        self,
        request: web.Request,
        body: _Json,
        model: str,
        parts: list[_Json] | AsyncIterator[_Json],
    ) -> web.StreamResponse:
        """Each part as one SSE chunk of a GenerateContentResponse, then a last chunk with
        ``finishReason`` and ``usageMetadata``, as the real API streams."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        response_id = self._response_id()
        sent: list[str] = []
        try:
            await response.prepare(request)
            async for part in _each(parts):
                sent.append(json.dumps(part))
                chunk = {
                    "candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
                    "modelVersion": model,
                    "responseId": response_id,
                }
                await _send_sse(response, chunk)
            prompt_tokens = _tokens(json.dumps(body.get("contents", [])))
            reply_tokens = _tokens("".join(sent))
            last = {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": ""}]},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "candidatesTokenCount": reply_tokens,
                    "totalTokenCount": prompt_tokens + reply_tokens,
                },
                "modelVersion": model,
                "responseId": response_id,
            }
            await _send_sse(response, last)
            await response.write_eof()
        except ConnectionResetError:
            # The CLI hung up between two writes (it was interrupted); a cancel usually wins.
            log.debug("the CLI left %s after %d chunks", response_id, len(sent))
        return response

    def _content(self, body: _Json, model: str, text: str) -> _Json:
        prompt_tokens = _tokens(json.dumps(body.get("contents", [])))
        reply_tokens = _tokens(text)
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": text}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": reply_tokens,
                "totalTokenCount": prompt_tokens + reply_tokens,
            },
            "modelVersion": model,
            "responseId": self._response_id(),
        }

    def _response_id(self) -> str:
        return f"fake-cli-response-{next(self._response_ids):06d}"


async def _each(parts: list[_Json] | AsyncIterator[_Json]) -> AsyncIterator[_Json]:
    if isinstance(parts, list):
        for part in parts:
            yield part
    else:
        async for part in parts:
            yield part


async def _send_sse(response: web.StreamResponse, chunk: _Json) -> None:
    await response.write(f"data: {json.dumps(chunk, separators=(',', ':'))}\r\n\r\n".encode())


def _prompt_of(content: _Json) -> str:
    """The user's prompt in ``content``: its last text part before any inlined file, not the
    CLI's session context."""
    texts = [p["text"] for p in content.get("parts", []) if isinstance(p.get("text"), str)]
    stripped = [t.strip() for t in texts]
    if _REFERENCES_START in stripped:
        texts = texts[: stripped.index(_REFERENCES_START)]
    texts = [t for t in texts if t.strip() and not t.lstrip().startswith(_SESSION_CONTEXT)]
    return texts[-1] if texts else ""


def _images_of(content: _Json) -> tuple[bytes, ...]:
    return tuple(
        base64.b64decode(part["inlineData"].get("data", ""))
        for part in content.get("parts", [])
        if isinstance(part.get("inlineData"), dict)
    )


def _cli_tool_step(body: _Json) -> _Json | None:
    """The next part of a ``TOOL_READ`` script, or None when the conversation has none."""
    contents = body.get("contents", [])
    for start in range(len(contents) - 1, -1, -1):
        if contents[start].get("role", "user") == "user" and _prompt_of(contents[start]):
            break
    else:
        return None
    found = _CLI_TOOL_TRIGGER.search(_prompt_of(contents[start]))
    if found is None:
        return None
    responses = [
        part["functionResponse"]
        for content in contents[start + 1 :]
        for part in content.get("parts", [])
        if isinstance(part.get("functionResponse"), dict)
    ]
    if not responses:
        return {"functionCall": {"name": _CLI_READ_TOOL, "args": {"file_path": found[1].strip()}}}
    answer = responses[-1].get("response") or {}
    if "error" in answer:
        return {"text": "TOOL ERROR: " + str(answer["error"])[:_CLI_RESULT_MAX_CHARS]}
    return {"text": "TOOL RESULT: " + str(answer.get("output", ""))[:_CLI_RESULT_MAX_CHARS]}


def gemini_cli_env(home: Path, base_url: str) -> dict[str, str]:
    """The whole environment for running the real gemini CLI against a fake at ``base_url``.

    Only ``PATH`` is taken from this process (the CLI is a Node script), so no developer
    setting leaks in. ``home`` becomes HOME, where this writes ``.gemini/settings.json`` (an
    API key as the auth type, no folder-trust check, no update check, no usage statistics
    or telemetry, no loop detection, no .env from the workdir or above it, one
    attempt per request) and where the CLI keeps its sessions; ``home/tmp`` is TMPDIR,
    where the CLI writes a report (with the conversation) of each failed request.
    """
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(_CLI_SETTINGS, indent=2), encoding="utf-8")
    tmp = home / "tmp"
    tmp.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "GEMINI_API_KEY": _DEFAULT_API_KEY,
        "GOOGLE_GEMINI_BASE_URL": base_url,
    }


def gemini_command() -> str:
    """Path of the project-local gemini CLI, else ``gemini`` on PATH.

    Raises RuntimeError, saying how to install it, when neither exists.
    """
    if os.access(_LOCAL_GEMINI, os.X_OK):
        return str(_LOCAL_GEMINI)
    on_path = shutil.which("gemini")
    if on_path is not None:
        return on_path
    raise RuntimeError(
        f"the gemini CLI is missing: neither {_LOCAL_GEMINI} nor `gemini` on PATH exists; "
        "run `make test` (or `make gemini`), which installs it project-locally"
    )
