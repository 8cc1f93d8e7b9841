"""An in-process agent (`bot.agent.AgentSession`) scripted like `tests.fakes.anthropic_api`,
for the party tests that are not about Claude itself: no CLI, no API, no process to wait for.

Every turn is recorded in ``turns`` before it is answered. The reply is chosen from the
prompt (case-sensitive substrings, first match wins):

- ``FAIL``: the turn ends with an error, as the CLI reports an API 500.
- ``SLOW``: the echo, then ``slow_steps`` deltas of ``" ."`` one every ``slow_interval_s``;
  ``first_delta`` is set once the echo is out, and `interrupt` ends the turn at once.
- ``TOOL_BASH <command>`` (starting a line): a `ToolUse`, then a `ToolRequest` for Bash that
  waits for `answer_tool`. Allowed, the command runs (``sh -c``) in ``workdir`` and the reply
  is ``"TOOL RESULT: "`` and its output; denied, ``"TOOL ERROR: "`` and the denial.
- ``TOOL_ASK <question>``: a `QuestionRequest` (options SQLite and Postgres) that waits for
  `answer_questions`; the reply is ``"TOOL RESULT: "`` and the answers as JSON, or
  ``"TOOL ERROR: "`` and the message.
- ``TOOL_PLAN <step>``: a `PlanRequest` for a two-step plan that waits for `answer_plan`;
  ``"TOOL RESULT: approved"`` or ``"TOOL ERROR: "`` and the feedback.
- otherwise: ``"ECHO: " + prompt[:200]`` in three deltas.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from bot.agent import (
    AgentEvent,
    AskedQuestion,
    PlanRequest,
    QuestionRequest,
    SessionError,
    TextDelta,
    ToolRequest,
    ToolUse,
    TurnEnd,
    Usage,
)
from bot.model import Image, QuestionOption, TurnStatus

__all__ = ["COST_PER_WORD_USD", "FakeAgent", "FakeTurn"]

_ECHO_PREFIX = "ECHO: "
_ECHO_MAX_CHARS = 200
_ECHO_DELTAS = 3
_SLOW_DELTA = " ."
_FAIL_MESSAGE = "API Error: 500 fake internal error"
_TOOL_BASH = re.compile(r"^TOOL_BASH (.+)$", re.MULTILINE)
_TOOL_ASK = re.compile(r"^TOOL_ASK (.+)$", re.MULTILINE)
_TOOL_PLAN = re.compile(r"^TOOL_PLAN (.+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class FakeTurn:
    """One turn as the agent received it (``user_text``, as `RecordedRequest` names it)."""

    user_text: str
    session_id: str
    images: tuple[Image, ...] = ()
    plan: bool = False


class FakeAgent:
    """See the module docstring. ``session_id`` is the stored one the party resumes."""

    def __init__(
        self,
        *,
        workdir: Path,
        session_id: str | None = None,
        slow_interval_s: float = 0.2,
        slow_steps: int = 50,
    ) -> None:
        self.ready = asyncio.Event()
        self.session_id = session_id
        self.restarts = 0  # a fake never dies on its own
        self.turns: list[FakeTurn] = []
        self.first_delta = asyncio.Event()
        self._workdir = workdir
        self._slow_interval_s = slow_interval_s
        self._slow_steps = slow_steps
        self._stopped = asyncio.Event()
        self._interrupted = asyncio.Event()
        self._is_turn_active = False
        self._answers: dict[str, asyncio.Future[tuple[bool, str]]] = {}
        self._request_ids = itertools.count(1)

    async def __aenter__(self) -> Self:
        self.ready.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.ready.clear()
        self._stopped.set()

    async def serve(self) -> None:
        await self._stopped.wait()

    async def restart(self, *, fresh: bool) -> None:
        if self._is_turn_active:
            raise RuntimeError("restart() while a turn runs: interrupt it first")
        if fresh:
            self.session_id = None

    async def interrupt(self) -> bool:
        if not self._is_turn_active:
            return False
        self._interrupted.set()
        return True

    async def answer_tool(self, request: ToolRequest, *, allow: bool, message: str = "") -> None:
        answer = self._answers.pop(request.request_id, None)
        if answer is None:
            raise RuntimeError(f"no tool request {request.request_id} is waiting")
        answer.set_result((allow, message))

    async def answer_questions(
        self, request: QuestionRequest, answers: Mapping[str, str] | None, message: str = ""
    ) -> None:
        said = message if answers is None else json.dumps(dict(answers))
        await self._settle(request.request_id, answers is not None, said)

    async def answer_plan(
        self, request: PlanRequest, *, approved: bool, feedback: str = ""
    ) -> None:
        await self._settle(request.request_id, approved, feedback)

    async def _settle(self, request_id: str, allow: bool, message: str) -> None:
        answer = self._answers.pop(request_id, None)
        if answer is None:
            raise RuntimeError(f"no request {request_id} is waiting")
        answer.set_result((allow, message))

    async def run(
        self, prompt: str, *, images: Sequence[Image] = (), plan: bool = False
    ) -> AsyncIterator[AgentEvent]:
        if self._is_turn_active:
            raise RuntimeError("a turn is already running: only the runner sends turns")
        if not self.ready.is_set():
            raise SessionError("the fake agent is not running")
        self._is_turn_active = True
        self._interrupted.clear()
        self.session_id = self.session_id or f"fake-{uuid.uuid4()}"
        self.turns.append(FakeTurn(prompt, self.session_id, tuple(images), plan))
        try:
            tool = _TOOL_BASH.search(prompt)
            ask, step = _TOOL_ASK.search(prompt), _TOOL_PLAN.search(prompt)
            if "FAIL" in prompt:
                yield TurnEnd(TurnStatus.ERROR, _FAIL_MESSAGE, _FAIL_MESSAGE)
            elif "SLOW" in prompt:
                async for event in self._slow(_ECHO_PREFIX + prompt[:_ECHO_MAX_CHARS]):
                    yield event
            elif tool is not None:
                async for event in self._bash(tool.group(1)):
                    yield event
            elif ask is not None:
                async for event in self._ask(ask.group(1)):
                    yield event
            elif step is not None:
                async for event in self._plan(step.group(1)):
                    yield event
            else:
                text = _ECHO_PREFIX + prompt[:_ECHO_MAX_CHARS]
                size = -(-len(text) // _ECHO_DELTAS)
                for start in range(0, len(text), size):
                    yield TextDelta(text[start : start + size])
                yield _success(prompt, text)
        finally:
            self._is_turn_active = False

    async def _slow(self, echo: str) -> AsyncIterator[AgentEvent]:
        yield TextDelta(echo)
        self.first_delta.set()  # the runner has taken the echo
        text = echo
        for _ in range(self._slow_steps):
            if await self._is_interrupted_within(self._slow_interval_s):
                yield TurnEnd(TurnStatus.INTERRUPTED, "")
                return
            yield TextDelta(_SLOW_DELTA)
            text += _SLOW_DELTA
        yield _success(echo, text)

    async def _bash(self, command: str) -> AsyncIterator[AgentEvent]:
        n = next(self._request_ids)
        request = ToolRequest(f"fake-request-{n}", "Bash", {"command": command}, f"toolu_fake_{n}")
        answer = self._answers[request.request_id] = asyncio.get_running_loop().create_future()
        yield ToolUse("Bash", command)
        yield request
        allow, message = await answer
        if self._interrupted.is_set():
            yield TurnEnd(TurnStatus.INTERRUPTED, "")
            return
        text = "TOOL RESULT: " + await self._sh(command) if allow else "TOOL ERROR: " + message
        yield TextDelta(text)
        yield _success(command, text)

    async def _ask(self, question: str) -> AsyncIterator[AgentEvent]:
        options = (QuestionOption("SQLite", "one file"), QuestionOption("Postgres", "a server"))
        asked = AskedQuestion(question, "Choice", options)
        request_id = f"fake-request-{next(self._request_ids)}"
        async for event in self._wait_for(QuestionRequest(request_id, (asked,), {}), question):
            yield event

    async def _plan(self, step: str) -> AsyncIterator[AgentEvent]:
        request_id = f"fake-request-{next(self._request_ids)}"
        plan = f"# Plan\n\n1. {step}\n2. Run the tests"
        async for event in self._wait_for(PlanRequest(request_id, plan, {}), step):
            yield event

    async def _wait_for(
        self, request: QuestionRequest | PlanRequest, prompt: str
    ) -> AsyncIterator[AgentEvent]:
        answer = self._answers[request.request_id] = asyncio.get_running_loop().create_future()
        yield request
        allow, said = await answer
        if self._interrupted.is_set():
            yield TurnEnd(TurnStatus.INTERRUPTED, "")
            return
        if isinstance(request, PlanRequest) and allow:
            said = "approved"
        text = ("TOOL RESULT: " if allow else "TOOL ERROR: ") + said
        yield TextDelta(text)
        yield _success(prompt, text)

    async def _sh(self, command: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            cwd=self._workdir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await proc.communicate()
        finally:
            if proc.returncode is None:  # cancelled: the command must not outlive the turn
                proc.kill()
                await proc.wait()
        return output.decode(errors="replace")[:_ECHO_MAX_CHARS]

    async def _is_interrupted_within(self, delay_s: float) -> bool:
        try:
            async with asyncio.timeout(delay_s):  # pacing, as a model streams
                await self._interrupted.wait()
        except TimeoutError:
            return False
        return True


COST_PER_WORD_USD = 0.001
"""A turn's price: words stand in for tokens, a tenth of a cent each."""


def _success(prompt: str, text: str) -> TurnEnd:
    words_in, words_out = len(prompt.split()), len(text.split())
    cost = round((words_in + words_out) * COST_PER_WORD_USD, 9)
    return TurnEnd(TurnStatus.SUCCESS, text, usage=Usage(words_in, words_out, cost))
