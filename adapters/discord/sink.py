"""Discord's side of the output: messages and threads for the relays; approvals and Claude's
questions with buttons.

Nothing posted here can unfurl a link Claude wrote (embeds suppressed) or ping, with one
exception: an approval request or a question pings the Discord users whose prompts are in
the batch, by name (``allowed_mentions`` lists exactly them; it is none everywhere else).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, Self, runtime_checkable

import discord
import discord.gateway
import discord.http

from bot.model import (
    ApprovalRequested,
    ApprovalResolved,
    Author,
    Decision,
    QuestionAsked,
    QuestionClosed,
    QuestionKind,
)
from bot.ports import AdapterError
from bot.render import FENCE, escape_fences, question_lines
from bot.safety import neutralize_mentions

__all__ = [
    "MAX_MESSAGE_CHARS",
    "PLATFORM",
    "ApprovalButton",
    "ClickHandler",
    "DiscordSink",
    "QuestionButton",
    "author_of",
    "strip_mention",
]

log = logging.getLogger(__name__)

PLATFORM = "discord"
MAX_MESSAGE_CHARS = 2000
_THREAD_NAME_CHARS = 90
_THREAD_ARCHIVE_MINUTES: Literal[1440] = 1440
# Discord refuses a second thread on one message; the first one has the message's id.
_THREAD_ALREADY_EXISTS = 160004
# An approval's buttons: custom_id "concordia:approval:<approval id>:<decision>", which is all
# a click needs, so buttons posted before a restart still work after it.
_APPROVAL_CUSTOM_ID = re.compile(
    rf"concordia:approval:(?P<approval_id>[0-9]+):(?P<decision>{'|'.join(Decision)})"
)
_APPROVAL_BUTTONS: dict[Decision, tuple[str, discord.ButtonStyle]] = {
    Decision.ALLOW: ("Allow once", discord.ButtonStyle.success),
    Decision.ALWAYS: ("Always allow", discord.ButtonStyle.primary),
    Decision.DENY: ("Deny", discord.ButtonStyle.danger),
}
# The outcome line of a closed approval or question is cut to this, so the request above it
# never has to shrink between posting and closing.
_OUTCOME_CHARS = 300
# A question's buttons: custom_id "concordia:question:<question id>:<option number>"; like an
# approval's, all a click needs.
_QUESTION_CUSTOM_ID = re.compile(r"concordia:question:(?P<question_id>[0-9]+):(?P<option>[0-9]+)")
# Discord's limits on buttons: a label's length and how many a message carries (5 rows of 5).
_BUTTON_LABEL_CHARS = 80
_MAX_BUTTONS = 25
# A plan's two options (bot.questions: the first approves, the second rejects).
_PLAN_BUTTON_STYLES = (discord.ButtonStyle.success, discord.ButtonStyle.danger)


def author_of(user: discord.abc.User) -> Author:
    return Author(PLATFORM, str(user.id), user.display_name)


def _adapter_error(exc: discord.HTTPException) -> AdapterError:
    retry_after = getattr(exc, "retry_after", None)
    retryable = exc.status >= 500 or exc.status == 429
    return AdapterError(
        f"Discord answered {exc.status} ({exc.code}): {exc.text}"[:300],
        retry_after=retry_after,
        retryable=retryable,
    )


def strip_mention(content: str, bot_id: int) -> str:
    """The prompt without the bot's own mention(s)."""
    return re.sub(rf"<@!?{bot_id}>", "", content).strip()


# -- approvals as messages --------------------------------------------------------------------

_MAX_PINGS = 20  # requesters mentioned at most (Discord takes up to 100 in allowed_mentions)
_MAX_SUMMARY_CHARS = 400


def _pings(authors: Iterable[Author]) -> list[int]:
    """The Discord users among ``authors``, each once (a batch's author may have several
    prompts in it), at most ``_MAX_PINGS``: whom a request or question mentions."""
    ids = (int(a.user_id) for a in authors if a.platform == PLATFORM and a.user_id.isdigit())
    return list(dict.fromkeys(ids))[:_MAX_PINGS]


def _only(user_ids: list[int]) -> discord.AllowedMentions:
    """Mentions that ping exactly ``user_ids``: never @everyone, @here or a role."""
    return discord.AllowedMentions(
        everyone=False,
        roles=False,
        users=[discord.Object(id=user_id) for user_id in user_ids],
        replied_user=False,
    )


def _outcome_line(mark: str, text: str) -> str:
    """How a request or question ended, on one line that pings nobody."""
    return f"{mark} {neutralize_mentions(' '.join(text.split()))[:_OUTCOME_CHARS]}"


def _approval_text(approval: ApprovalRequested) -> str:
    """An open approval's message: the request, then quorum, deadline and who asked."""
    ask = _approval_ask(approval)
    return f"{_approval_request(approval, ask)}\n{ask}"


def _closed_approval_text(approval: ApprovalRequested, resolved: ApprovalResolved) -> str:
    """A decided approval's message: the same request, then how it ended (no mention)."""
    outcome = _outcome_line("✅" if resolved.allowed else "⛔", resolved.text)
    return f"{_approval_request(approval, _approval_ask(approval))}\n{outcome}"


def _approval_ask(approval: ApprovalRequested) -> str:
    parts = [f"needs {approval.needed} approvers"] if approval.needed > 1 else []
    parts.append(f"no answer in {approval.timeout_s:g} s denies it")
    pings = _pings(approval.requesters)
    if pings:
        parts.append("asked by " + ", ".join(f"<@{user_id}>" for user_id in pings))
    return "⏳ " + " · ".join(parts)


def _approval_request(approval: ApprovalRequested, ask: str) -> str:
    """The header and the fenced detail, cut so that either last line still fits under
    Discord's limit: the same text whether the approval is open or closed."""
    room = MAX_MESSAGE_CHARS - 1 - max(len(ask), len("✅ ") + _OUTCOME_CHARS)
    summary = " ".join(approval.summary.split())
    if len(summary) > _MAX_SUMMARY_CHARS:
        summary = summary[: _MAX_SUMMARY_CHARS - 1] + "…"
    head = neutralize_mentions(f"🔐 **Approval {approval.approval_id}**: Claude wants to {summary}")
    detail = escape_fences(neutralize_mentions(approval.detail)).strip("\n")
    fence_chars = len(f"\n{FENCE}\n\n{FENCE}")
    detail_room = room - len(head) - fence_chars
    if not detail or detail_room < 2:
        return head
    if len(detail) > detail_room:
        detail = detail[: detail_room - 1] + "…"
    return f"{head}\n{FENCE}\n{detail}\n{FENCE}"


# -- questions as messages --------------------------------------------------------------------


def _question_text(question: QuestionAsked) -> str:
    """An open question's message: what Claude asks (a plan: that it is above), its options,
    then who is asked and how to answer; only that last line mentions anyone."""
    ask = _question_ask(question)
    return f"{_question_body(question, ask)}\n{ask}"


def _closed_question_text(question: QuestionAsked, closed: QuestionClosed) -> str:
    """A settled question's message: the same question, then who answered what."""
    outcome = _outcome_line("✅" if closed.answered else "⌛", closed.text)
    return f"{_question_body(question, _question_ask(question))}\n{outcome}"


def _question_ask(question: QuestionAsked) -> str:
    pings = ", ".join(f"<@{user_id}>" for user_id in _pings(question.mention))
    who = f"{pings} · " if pings else ""
    if question.kind is QuestionKind.PLAN:
        return (
            f"⏳ {who}Approve or Reject below (approvers and the host); to reject with "
            f"feedback, `/concordia answer {question.question_id} <your feedback>`."
        )
    *_, how = question_lines(question)
    return f"⏳ {who}Click an option below. {how}"


def _question_body(question: QuestionAsked, ask: str) -> str:
    """The head and as many option lines as fit, so that either last line still fits under
    Discord's limit: the same text whether the question is open or closed. A plan's options
    are its two buttons."""
    room = MAX_MESSAGE_CHARS - 1 - max(len(ask), len("✅ ") + _OUTCOME_CHARS)
    head, options, _ = question_lines(question)
    lines = [neutralize_mentions(head)]
    if question.kind is QuestionKind.PLAN:
        options = []
    left = room - len(lines[0])
    for n, option in enumerate(options):
        line = neutralize_mentions(" ".join(option.split()))
        more = f"… and {len(options) - n} more"
        if len(line) + 1 > left - (len(more) + 1 if n < len(options) - 1 else 0):
            lines.append(more)
            break
        lines.append(line)
        left -= len(line) + 1
    return "\n".join(lines)[:room]


def _question_view(question: QuestionAsked) -> discord.ui.View:
    """A button per option, five to a row (discord.py's layout), at most 25."""
    view = discord.ui.View(timeout=None)
    is_plan = question.kind is QuestionKind.PLAN
    for n, option in enumerate(question.options[:_MAX_BUTTONS], 1):
        style = (
            _PLAN_BUTTON_STYLES[n - 1]
            if is_plan and n <= len(_PLAN_BUTTON_STYLES)
            else discord.ButtonStyle.primary
        )
        view.add_item(QuestionButton(question.question_id, n, option.label, style))
    return view


def _button_label(label: str, option: int) -> str:
    label = " ".join(label.split()) or str(option)
    if len(label) > _BUTTON_LABEL_CHARS:
        label = label[: _BUTTON_LABEL_CHARS - 1] + "…"
    return label


@runtime_checkable
class ClickHandler(Protocol):
    """Who answers a click on an approval's or a question's button (the adapter, as the
    client's ``adapter``)."""

    async def decide(
        self, interaction: discord.Interaction[Any], approval_id: int, decision: Decision
    ) -> None: ...

    async def answer(
        self, interaction: discord.Interaction[Any], question_id: int, option: int
    ) -> None: ...


class ApprovalButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=_APPROVAL_CUSTOM_ID,
):
    """One of an approval's three buttons. discord.py routes every click whose custom_id
    matches the template here, whichever process posted the button."""

    def __init__(self, approval_id: int, decision: Decision) -> None:
        label, style = _APPROVAL_BUTTONS[decision]
        super().__init__(
            discord.ui.Button(
                label=label,
                style=style,
                custom_id=f"concordia:approval:{approval_id}:{decision.value}",
            )
        )
        self.approval_id = approval_id
        self.decision = decision

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        return cls(int(match["approval_id"]), Decision(match["decision"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        decides = getattr(interaction.client, "adapter", None)
        if not isinstance(decides, ClickHandler):
            log.warning("an approval click reached a client without the adapter")
            return
        await decides.decide(interaction, self.approval_id, self.decision)


def _approval_view(approval_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for decision in Decision:
        view.add_item(ApprovalButton(approval_id, decision))
    return view


class QuestionButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=_QUESTION_CUSTOM_ID,
):
    """One option of a question (or a plan's Approve / Reject). Routed by custom_id like
    `ApprovalButton`, so buttons posted before a restart still answer."""

    def __init__(
        self,
        question_id: int,
        option: int,
        label: str,
        style: discord.ButtonStyle = discord.ButtonStyle.primary,
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label=_button_label(label, option),
                style=style,
                custom_id=f"concordia:question:{question_id}:{option}",
            )
        )
        self.question_id = question_id
        self.option = option

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        option = int(match["option"])
        label = getattr(item, "label", None) or str(option)
        return cls(int(match["question_id"]), option, label)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        answers = getattr(interaction.client, "adapter", None)
        if not isinstance(answers, ClickHandler):
            log.warning("a question click reached a client without the adapter")
            return
        await answers.answer(interaction, self.question_id, self.option)


class DiscordSink:
    """Posts and edits on Discord for the relays. A thread is ``"C"`` (channel C itself) or
    ``"C/M"`` (the thread started from message M in channel C, created on first use)."""

    def __init__(self, client: discord.Client, edit_interval_s: float, clean: Callable[[str], str]):
        """``clean`` makes a participant's text fit to post (a party's `chat_safe`)."""
        self._client = client
        self.max_message_chars = MAX_MESSAGE_CHARS
        self.edit_interval_s = edit_interval_s
        self._clean = clean
        self._threads: dict[str, int] = {}

    async def post(self, thread: str, text: str) -> str:
        channel_id = await self._channel_for(thread)
        channel = self._client.get_partial_messageable(channel_id)
        try:
            message = await channel.send(
                text, allowed_mentions=discord.AllowedMentions.none(), suppress_embeds=True
            )
        except discord.HTTPException as exc:
            raise _adapter_error(exc) from exc
        return f"{channel_id}:{message.id}"

    async def edit(self, ref: str, text: str) -> None:
        channel_id, message_id = (int(part) for part in ref.split(":"))
        message = self._client.get_partial_messageable(channel_id).get_partial_message(message_id)
        try:
            await message.edit(content=text, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            raise _adapter_error(exc) from exc

    async def post_approval(self, thread: str, approval: ApprovalRequested) -> str:
        """Post the request with its Allow once / Always allow / Deny buttons, pinging its
        Discord requesters (and nobody else); return the message ref. Not idempotent: a
        retry after a lost answer posts it again. Raises `AdapterError`."""
        return await self._post_asking(
            thread,
            _approval_text(approval),
            _pings(approval.requesters),
            _approval_view(approval.approval_id),
        )

    async def close_approval(
        self, ref: str, approval: ApprovalRequested, resolved: ApprovalResolved
    ) -> None:
        """Replace the request's buttons with how it ended; pings nobody. Idempotent.
        Raises `AdapterError`."""
        await self._close(ref, _closed_approval_text(approval, resolved))

    async def post_question(self, thread: str, question: QuestionAsked) -> str:
        """Post Claude's question with a button per option (a plan: Approve / Reject),
        pinging the batch's Discord authors (and nobody else); return the message ref. Not
        idempotent: a retry after a lost answer posts it again. Raises `AdapterError`."""
        return await self._post_asking(
            thread, _question_text(question), _pings(question.mention), _question_view(question)
        )

    async def close_question(
        self, ref: str, question: QuestionAsked, closed: QuestionClosed
    ) -> None:
        """Replace the question's buttons with who answered what; pings nobody. Idempotent.
        Raises `AdapterError`."""
        await self._close(ref, _closed_question_text(question, closed))

    async def _post_asking(
        self, thread: str, text: str, pings: list[int], view: discord.ui.View
    ) -> str:
        """Post a message with buttons that pings exactly ``pings``; its ref."""
        channel_id = await self._channel_for(thread)
        channel = self._client.get_partial_messageable(channel_id)
        try:
            message = await channel.send(
                text, allowed_mentions=_only(pings), suppress_embeds=True, view=view
            )
        except discord.HTTPException as exc:
            raise _adapter_error(exc) from exc
        return f"{channel_id}:{message.id}"

    async def _close(self, ref: str, text: str) -> None:
        """Show ``text`` instead, without the buttons; pings nobody."""
        channel_id, message_id = (int(part) for part in ref.split(":"))
        message = self._client.get_partial_messageable(channel_id).get_partial_message(message_id)
        try:
            await message.edit(
                content=text, view=None, allowed_mentions=discord.AllowedMentions.none()
            )
        except discord.HTTPException as exc:
            raise _adapter_error(exc) from exc

    async def _channel_for(self, thread: str) -> int:
        if "/" not in thread:
            return int(thread)
        if thread in self._threads:
            return self._threads[thread]
        channel_id, message_id = (int(part) for part in thread.split("/"))
        message = self._client.get_partial_messageable(channel_id).get_partial_message(message_id)
        try:
            # The low-level call: a partial message has no guild, which create_thread wants.
            created = await self._client.http.start_thread_with_message(
                channel_id,
                message_id,
                name=await self._thread_name(message),
                auto_archive_duration=_THREAD_ARCHIVE_MINUTES,
            )
            self._threads[thread] = int(created["id"])
        except discord.HTTPException as exc:
            if exc.code != _THREAD_ALREADY_EXISTS:
                raise _adapter_error(exc) from exc
            self._threads[thread] = message_id  # made before a restart: same id as the message
        return self._threads[thread]

    async def _thread_name(self, message: discord.PartialMessage) -> str:
        try:
            full = await message.fetch()
        except discord.HTTPException:
            return "Concordia"
        me = self._client.user
        text = strip_mention(full.content, me.id) if me else full.content
        # The thread's name is the bot's post: the prompt's secrets and pings must not be in it.
        name = " ".join(self._clean(text).split())[:_THREAD_NAME_CHARS]
        return name or "Concordia"
