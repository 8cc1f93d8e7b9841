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
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, assert_never

from aiohttp import web

from tests.fakes._server import serve_on_loopback

__all__ = [
    "FakeGemini",
    "GeminiReply",
    "RecordedGeminiRequest",
    "ReplyKind",
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
