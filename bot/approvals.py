"""Deciding on Claude's tool use from chat: who may decide, how many must agree, what is kept.

The agent asks through the seam (`bot.agent.ToolRequest`); the runner hands the request to
`Approvals.ask`, which publishes an `ApprovalRequested`, waits for participants'
decisions (`Approvals.decide`) or the timeout, publishes an `ApprovalResolved` and says
whether to allow. Only approvers and the host decide; one deny denies; a call that
matches ``approvals.quorum_tools`` (every call when that list is empty) needs
``approvals.quorum`` distinct approvers. "Always" remembers the call's rule (the exact
command for Bash, the tool otherwise) for the party, in SQLite; a rule never covers a
call that needs a quorum. Every request and decision is recorded for the audit trail.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from bot.agent import ToolRequest
from bot.config import ApprovalSettings
from bot.model import (
    ApprovalOutcome,
    ApprovalRequested,
    ApprovalResolved,
    Author,
    CommandResult,
    Decider,
    Decision,
    PartyEvent,
    Role,
)
from bot.safety import Redactor, strip_controls
from bot.store import Store

__all__ = ["Approvals", "describe_call", "rule_for"]

log = logging.getLogger(__name__)

_SUMMARY_CHARS = 160
_DETAIL_CHARS = 1500
_DIFF_CONTEXT = 1


@dataclass(frozen=True, slots=True)
class _Settled:
    """How a waiting request was settled before its timeout, and by whom."""

    outcome: ApprovalOutcome
    text: str  # one line for the thread: "allowed by alice"
    deciders: tuple[Decider, ...]


@dataclass(slots=True, eq=False)
class _Waiting:
    """One request waiting for decisions."""

    request: ApprovalRequested
    rule: str
    needs_quorum: bool
    allowers: dict[tuple[str, str], str] = field(default_factory=dict)
    always: bool = False
    outcome: asyncio.Future[_Settled] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def rule_for(call: ToolRequest) -> str:
    """What "always" remembers: ``Bash(<the exact command>)``, or the tool's name."""
    if call.tool == "Bash":
        return f"Bash({call.input.get('command', '')})"
    return call.tool


def _argument(call: ToolRequest) -> str:
    """The input a ``Tool(pattern)`` rule is matched against."""
    for key in ("command", "file_path", "path", "url", "pattern"):
        value = call.input.get(key)
        if isinstance(value, str):
            return value
    return ""


def _matches(pattern: str, call: ToolRequest) -> bool:
    """``Bash`` matches every Bash call; ``Bash(rm *)`` the commands matching ``rm *``."""
    name, paren, rest = pattern.partition("(")
    if name.strip() != call.tool:
        return False
    if not paren:
        return True
    return fnmatchcase(_argument(call), rest.removesuffix(")"))


def _lines(text: object) -> list[str]:
    return str(text).splitlines() if text else []


def describe_call(call: ToolRequest) -> tuple[str, str]:
    """(summary, detail) of a tool call in plain words: what will happen, and the input."""
    tool, data = call.tool, call.input
    path = str(data.get("file_path") or data.get("path") or "")
    match tool:
        case "Bash":
            command = str(data.get("command", ""))
            first = command.splitlines()[0] if command else ""
            more = " …" if "\n" in command.strip() else ""
            return f"run `{first}{more}`", command
        case "Edit":
            old, new = _lines(data.get("old_string")), _lines(data.get("new_string"))
            diff = difflib.unified_diff(old, new, path, path, n=_DIFF_CONTEXT, lineterm="")
            every = " (every occurrence)" if data.get("replace_all") else ""
            summary = f"edit {path}: {len(old)} line(s) → {len(new)} line(s){every}"
            return summary, "\n".join(diff)
        case "MultiEdit":
            edits = data.get("edits") or []
            count = len(edits) if isinstance(edits, list) else 1
            return f"make {count} edit(s) in {path}", json.dumps(edits, indent=1)
        case "Write":
            content = _lines(data.get("content"))
            return f"write {path} ({len(content)} lines)", "\n".join(content[:40])
        case "NotebookEdit":
            return f"edit the notebook {path}", str(data.get("new_source", ""))
        case "WebFetch":
            return f"fetch {data.get('url', '')}", str(data.get("prompt", ""))
        case _:
            target = _argument(call)
            summary = f"use {tool}" + (f" on {target}" if target else "")
            return summary, json.dumps(dict(data), indent=1, ensure_ascii=False)


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Approvals:
    """A party's tool-use approvals. `ask` runs in the runner; `decide` in any task."""

    def __init__(
        self,
        settings: ApprovalSettings,
        *,
        party: str,
        store: Store,
        redactor: Redactor,
        publish: Callable[[PartyEvent], None],
        observe: Callable[[ApprovalOutcome, float], None] = lambda outcome, wait_s: None,
    ) -> None:
        """``observe`` hears how each request ended and how long it waited (the metrics)."""
        self._settings = settings
        self._observe = observe
        self._party = party
        self._store = store
        self._redactor = redactor
        self._publish = publish
        self._rules: set[str] = set()
        self._waiting: dict[int, _Waiting] = {}

    async def load(self) -> None:
        """Read the standing rules; close approvals a dead bot left waiting."""
        self._rules = set(await self._store.approval_rules(self._party))
        abandoned = await self._store.abandon_open_approvals(self._party)
        if abandoned:
            log.info("closed %d approval(s) left waiting by the last run", abandoned)

    def waiting(self) -> list[ApprovalRequested]:
        return [w.request for w in self._waiting.values() if not w.outcome.done()]

    def rules(self) -> list[str]:
        return sorted(self._rules)

    async def reset(self) -> int:
        """Forget every "always" rule; returns how many there were."""
        cleared = await self._store.clear_approval_rules(self._party)
        self._rules.clear()
        return cleared

    def needs_quorum(self, call: ToolRequest) -> bool:
        if self._settings.quorum < 2:
            return False
        patterns = self._settings.quorum_tools
        return not patterns or any(_matches(p, call) for p in patterns)

    async def ask(
        self, call: ToolRequest, *, batch_id: int, requesters: Sequence[Author]
    ) -> tuple[bool, str]:
        """Get the party's decision on ``call``: (allowed, what to tell Claude if denied)."""
        rule = rule_for(call)
        quorum = self.needs_quorum(call)
        input_json = self._safe(json.dumps(dict(call.input), ensure_ascii=False))
        needed = self._settings.quorum if quorum else 1
        approval_id = await self._store.open_approval(
            self._party, batch_id, call.tool, input_json, rule, needed
        )
        if rule in self._rules and not quorum:
            await self._store.close_approval(approval_id, ApprovalOutcome.ALWAYS_RULE, [])
            self._observe(ApprovalOutcome.ALWAYS_RULE, 0.0)
            log.info("tool call allowed by the rule %s", rule, extra={"party": self._party})
            return True, ""
        summary, detail = describe_call(call)
        request = ApprovalRequested(
            approval_id=approval_id,
            batch_id=batch_id,
            tool=call.tool,
            summary=_cap(self._safe(summary), _SUMMARY_CHARS),
            detail=_cap(self._safe(detail), _DETAIL_CHARS),
            needed=needed,
            requesters=tuple(dict.fromkeys(requesters)),
            timeout_s=self._settings.timeout_s,
        )
        waiting = _Waiting(request, rule, quorum)
        self._waiting[approval_id] = waiting
        self._publish(request)
        asked_at = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                settled = await asyncio.shield(waiting.outcome)
        except TimeoutError:
            settled = _Settled(
                ApprovalOutcome.TIMED_OUT,
                f"no decision in {self._settings.timeout_s:g} s: denied",
                self._deciders(waiting),
            )
        finally:
            self._waiting.pop(approval_id, None)
        text = settled.text
        allowed = settled.outcome is ApprovalOutcome.ALLOWED
        if allowed and waiting.always and not quorum:
            self._rules.add(rule)
            await self._store.add_approval_rule(self._party, rule, settled.deciders[-1].name)
            text += f"; {rule} is allowed from now on"
        await self._store.close_approval(approval_id, settled.outcome, settled.deciders)
        self._observe(settled.outcome, time.monotonic() - asked_at)
        self._publish(ApprovalResolved(approval_id, batch_id, allowed, text))
        log.info("approval %d: %s", approval_id, text, extra={"party": self._party})
        return allowed, "" if allowed else f"The team did not allow this from chat ({text})."

    def decide(
        self, approval_id: int, author: Author, role: Role, decision: Decision
    ) -> CommandResult:
        """Count one participant's decision; the answer is for that participant only."""
        waiting = self._waiting.get(approval_id)
        if waiting is None or waiting.outcome.done():
            return CommandResult("approve", False, f"approval {approval_id} is not waiting")
        if not role.may_approve:
            return CommandResult(
                "approve",
                False,
                "you joined as a prompter: only approvers and the host decide on tool use",
            )
        key = (author.platform, author.user_id)
        if decision is Decision.DENY:
            denier = Decider(author.platform, author.user_id, author.name, Decision.DENY)
            deciders = self._deciders(waiting, denier)
            waiting.outcome.set_result(
                _Settled(ApprovalOutcome.DENIED, f"denied by {author.name}", deciders)
            )
            return CommandResult("approve", True, f"denied approval {approval_id}")
        if key in waiting.allowers:
            return CommandResult(
                "approve",
                False,
                f"you already allowed approval {approval_id}; another approver must",
            )
        waiting.allowers[key] = author.name
        if decision is Decision.ALWAYS:
            waiting.always = True
        have, needed = len(waiting.allowers), waiting.request.needed
        if have < needed:
            return CommandResult(
                "approve", True, f"counted: {have} of {needed} approvals for approval {approval_id}"
            )
        names = ", ".join(waiting.allowers.values())
        waiting.outcome.set_result(
            _Settled(ApprovalOutcome.ALLOWED, f"allowed by {names}", self._deciders(waiting))
        )
        return CommandResult("approve", True, f"allowed approval {approval_id}")

    def cancel_all(self, reason: str) -> None:
        """Deny every waiting request (the turn is being interrupted)."""
        for waiting in list(self._waiting.values()):
            if not waiting.outcome.done():
                waiting.outcome.set_result(
                    _Settled(ApprovalOutcome.CANCELLED, reason, self._deciders(waiting))
                )

    @staticmethod
    def _deciders(waiting: _Waiting, denier: Decider | None = None) -> tuple[Decider, ...]:
        """Who allowed so far (each with "always" once anyone chose it), then who denied."""
        decision = Decision.ALWAYS if waiting.always else Decision.ALLOW
        allowers = tuple(
            Decider(platform, user_id, name, decision)
            for (platform, user_id), name in waiting.allowers.items()
        )
        return allowers if denier is None else (*allowers, denier)

    def _safe(self, text: str) -> str:
        return self._redactor.redact(strip_controls(text))
