"""The Slack bridge over Socket Mode: app_mention, /concordia, approval and answer buttons in,
answers into the thread.

Only this module imports slack_bolt and slack_sdk. Socket Mode because the host usually sits
behind NAT with no public URL. The app runs with ``process_before_response``: bolt acks an
event only after our listener returns, and the listener returns once the prompt is in the
store, so an ack never covers a prompt a crash could lose (Slack does not resend acked
events). Everything posted is escaped (``&``, ``<``, ``>``), which also disarms
``<!channel>``, ``<@U…>`` and ``<#C…>`` written by Claude; links are never unfurled. The one
ping the bot sends is built here, not taken from text: an approval request or one of Claude's
questions mentions the Slack users whose prompts are in the batch.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, assert_never

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.attachments import Attachment, Submitted, submit_with
from bot.config import SlackSettings
from bot.model import (
    Accepted,
    ApprovalRequested,
    ApprovalResolved,
    Author,
    Command,
    Decision,
    Prompt,
    QuestionAsked,
    QuestionClosed,
    QuestionKind,
    Rejected,
    RejectKind,
)
from bot.party import Party
from bot.ports import AdapterError, ChatOutput
from bot.render import FENCE, Markup, escape_fences, question_lines

__all__ = ["PLATFORM", "SlackAdapter", "SlackSink", "escape"]

log = logging.getLogger(__name__)

PLATFORM = "slack"
_QUEUED = "hourglass_flowing_sand"
_DEFAULT_RETRY_AFTER_S = 1.0
_MEMBER_HINT = (
    "You have not joined this party yet, so your mention was not queued. "
    "Ask the host for the invite token and run `/concordia join <token>`."
)
_CLICK_HINT = (
    "You have not joined this party yet, so your answer was not counted. "
    "Ask the host for an approver invite token and run `/concordia join <token>`."
)
_ANSWER_HINT = (
    "You have not joined this party yet, so your answer was not counted. "
    "Ask the host for the invite token and run `/concordia join <token>`."
)
_LEFT_OUT = "Queued, but not every file went to Claude:"
_NOT_SERVED = "This channel is not served by Concordia."
# Approval buttons: one action_id per decision, the approval id as the value.
_APPROVAL_ACTION_PREFIX = "concordia_approval_"
_APPROVAL_ACTION = re.compile(rf"^{_APPROVAL_ACTION_PREFIX}(allow|always|deny)$")
_APPROVAL_BUTTONS = (
    (Decision.ALLOW, "Allow once", "primary"),
    (Decision.ALWAYS, "Always allow", None),
    (Decision.DENY, "Deny", "danger"),
)
# Answer buttons: one action_id per option number (Slack wants them unique within a block),
# the question id as the value.
_QUESTION_ACTION_PREFIX = "concordia_question_"
_QUESTION_ACTION = re.compile(rf"^{_QUESTION_ACTION_PREFIX}([1-9][0-9]?)$")
_MAX_BUTTONS = 25  # Block Kit's limit for an actions block's elements
_BUTTON_MAX_CHARS = 75  # and for a button's text
# A plan's two options are Approve and Reject, in that order (bot.questions).
_PLAN_STYLES = ("primary", "danger")
# A Slack user id as mention syntax needs it; anything else is never put inside <@…>.
_SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
# Block Kit's limit for a section's or a context element's text; the fallback text (shown in
# notifications) is held to it too: a summary, not the whole request.
_TEXT_MAX_CHARS = 3000
_OUTCOME_MAX_CHARS = 500  # "✅ allowed by …": one line, however many approvers it names
_TEXT_FILETYPES = frozenset(
    {"text", "markdown", "python", "javascript", "json", "yaml", "diff", "shell"}
)


def escape(text: str) -> str:
    """Slack's required escaping; it also makes mention syntax inert."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _adapter_error(exc: SlackApiError) -> AdapterError:
    response = exc.response
    error = str(response.get("error", "")) if response is not None else ""
    status = getattr(response, "status_code", 0)
    if error == "ratelimited" or status == 429:
        # chat.update can answer ratelimited inside an HTTP 200 body: a 429 all the same.
        header = (getattr(response, "headers", None) or {}).get("Retry-After")
        retry_after = float(header) if header else _DEFAULT_RETRY_AFTER_S
        return AdapterError(f"Slack rate limit ({error or status})", retry_after=retry_after)
    retryable = status >= 500 or error in {"internal_error", "fatal_error", "service_unavailable"}
    return AdapterError(f"Slack refused: {error or status}", retryable=retryable)


def _attachments(files: list[dict[str, Any]]) -> list[Attachment]:
    """An event's shared files as `adapters.attachments` sees them: text snippets and text
    files are read in (their download URL is the ref), others are named."""
    return [
        Attachment(
            str(shared.get("name") or shared.get("title") or "file"),
            int(shared.get("size") or 0),
            str(shared.get("mimetype") or ""),
            str(shared.get("mimetype", "")).startswith("text/")
            or shared.get("filetype") in _TEXT_FILETYPES,
            str(shared.get("url_private_download") or shared.get("url_private") or ""),
        )
        for shared in files
    ]


class SlackSink:
    """Posts and updates for the relays. A thread is ``"C"`` or ``"C/TS"`` (a reply thread)."""

    def __init__(self, client: AsyncWebClient, *, max_message_chars: int, edit_interval_s: float):
        self._client = client
        self.max_message_chars = max_message_chars
        self.edit_interval_s = edit_interval_s
        self._last_post: dict[str, float] = {}

    async def post(self, thread: str, text: str) -> str:
        return await self._post(thread, escape(text))

    async def edit(self, ref: str, text: str) -> None:
        await self._update(ref, escape(text))

    async def post_approval(self, thread: str, approval: ApprovalRequested) -> str:
        """Post the request with its three buttons, mentioning its Slack requesters once."""
        mentions = _mentions(approval.requesters)
        # The notification text: the request and the same pings, nobody else's.
        suffix = f" ({', '.join(mentions)})" if mentions else ""
        text = _cut(_approval_head(approval, mark_up=False), _TEXT_MAX_CHARS - len(suffix))
        blocks = [
            *_request_blocks(approval),
            _context(_answer_line(approval, mentions), "concordia_approval_how"),
            _buttons(approval.approval_id),
        ]
        return await self._post(thread, text + suffix, blocks)

    async def close_approval(
        self, ref: str, approval: ApprovalRequested, resolved: ApprovalResolved
    ) -> None:
        """Keep the request, drop the buttons, say how it ended; mentions no one."""
        mark = "✅" if resolved.allowed else "⛔"
        outcome = _cut(escape(f"{mark} {resolved.text}"), _OUTCOME_MAX_CHARS)
        head = _cut(_approval_head(approval, mark_up=False), _TEXT_MAX_CHARS - len(outcome) - 1)
        blocks = [*_request_blocks(approval), _context(outcome, "concordia_approval_outcome")]
        await self._update(ref, f"{head} {outcome}", blocks)

    async def post_question(self, thread: str, question: QuestionAsked) -> str:
        """Post Claude's question (or plan) with a button per option, mentioning the batch's
        Slack authors once."""
        mentions = _mentions(question.mention)
        suffix = f" ({', '.join(mentions)})" if mentions else ""
        text = _cut(_question_head(question, mark_up=False), _TEXT_MAX_CHARS - len(suffix))
        blocks = [
            *_question_blocks(question),
            _context(_how_to_answer(question, mentions), "concordia_question_how"),
            *_option_buttons(question),
        ]
        return await self._post(thread, text + suffix, blocks)

    async def close_question(
        self, ref: str, question: QuestionAsked, closed: QuestionClosed
    ) -> None:
        """Keep the question, drop the buttons, say who answered what; mentions no one."""
        mark = "✅" if closed.answered else "⌛"
        outcome = _cut(escape(f"{mark} {closed.text}"), _OUTCOME_MAX_CHARS)
        head = _cut(_question_head(question, mark_up=False), _TEXT_MAX_CHARS - len(outcome) - 1)
        blocks = [*_question_blocks(question), _context(outcome, "concordia_question_outcome")]
        await self._update(ref, f"{head} {outcome}", blocks)

    async def _post(
        self, thread: str, text: str, blocks: list[dict[str, Any]] | None = None
    ) -> str:
        """chat.postMessage of ready-escaped ``text`` (and ``blocks``) into ``thread``."""
        channel, _, thread_ts = thread.partition("/")
        # chat.postMessage allows about one message a second per channel: a long reply's
        # finished messages are spaced like edits instead of arriving in one burst.
        interval = self.edit_interval_s
        wait_s = self._last_post.get(channel, -interval) + interval - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)  # pacing: Slack's per-channel posting rate
        self._last_post[channel] = time.monotonic()
        try:
            response = await self._client.chat_postMessage(
                channel=channel,
                thread_ts=thread_ts or None,
                text=text,
                blocks=blocks,
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            raise _adapter_error(exc) from exc
        return f"{response['channel']}:{response['ts']}"

    async def _update(
        self, ref: str, text: str, blocks: list[dict[str, Any]] | None = None
    ) -> None:
        """chat.update of ready-escaped ``text`` (and ``blocks``; None keeps the old ones)."""
        channel, ts = ref.split(":", 1)
        try:
            await self._client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
        except SlackApiError as exc:
            raise _adapter_error(exc) from exc


# -- approval messages (Block Kit) -------------------------------------------------------


def _mentions(requesters: tuple[Author, ...]) -> list[str]:
    """``<@U…>`` for each Slack requester, once each; ids not shaped like Slack's are left out,
    so nothing but a user mention can come out of this."""
    ids = (a.user_id for a in requesters if a.platform == PLATFORM)
    return [f"<@{user_id}>" for user_id in dict.fromkeys(ids) if _SLACK_USER_ID.match(user_id)]


def _approval_head(approval: ApprovalRequested, *, mark_up: bool) -> str:
    """ "🔐 Approval N: Claude wants to <summary>", escaped; the number in bold for blocks."""
    number = f"Approval {approval.approval_id}"
    return f"🔐 {f'*{number}*' if mark_up else number}: Claude wants to {escape(approval.summary)}"


def _request_blocks(approval: ApprovalRequested) -> list[dict[str, Any]]:
    """What Claude asks: the summary, then the tool's input as a code block (if any)."""
    head = _cut(_approval_head(approval, mark_up=True), _TEXT_MAX_CHARS)
    blocks = [_section(head, "concordia_approval_request")]
    if approval.detail.strip():
        detail = _cut(escape(escape_fences(approval.detail)), _TEXT_MAX_CHARS - len("```\n\n```"))
        blocks.append(_section(f"{FENCE}\n{detail}\n{FENCE}", "concordia_approval_detail"))
    return blocks


def _answer_line(approval: ApprovalRequested, mentions: list[str]) -> str:
    parts = [f"Prompted by {', '.join(mentions)}"] if mentions else []
    if approval.needed > 1:
        parts.append(f"needs {approval.needed} approvers")
    parts.append(f"no answer in {approval.timeout_s:g} s denies it")
    return " · ".join(parts)


def _buttons(approval_id: int) -> dict[str, Any]:
    elements = []
    for decision, label, style in _APPROVAL_BUTTONS:
        button: dict[str, Any] = {
            "type": "button",
            "action_id": f"{_APPROVAL_ACTION_PREFIX}{decision.value}",
            "text": {"type": "plain_text", "text": label},
            "value": str(approval_id),
        }
        if style is not None:
            button["style"] = style
        elements.append(button)
    return {"type": "actions", "block_id": "concordia_approval_buttons", "elements": elements}


# -- question messages (Block Kit) -------------------------------------------------------


def _question_head(question: QuestionAsked, *, mark_up: bool) -> str:
    """ "❓ Question N (header): <question>" or "📋 Plan N: <what to do>", escaped; the
    number in bold for blocks."""
    is_plan = question.kind is QuestionKind.PLAN
    number = f"{'Plan' if is_plan else 'Question'} {question.question_id}"
    title = f"*{number}*" if mark_up else number
    header = f" ({escape(question.header)})" if question.header and not is_plan else ""
    return f"{'📋' if is_plan else '❓'} {title}{header}: {escape(question.text)}"


def _question_blocks(question: QuestionAsked) -> list[dict[str, Any]]:
    """What Claude asks: the question, then its options one a line (a plan's two options are
    its buttons alone: the plan itself is the output just above)."""
    head = _cut(_question_head(question, mark_up=True), _TEXT_MAX_CHARS)
    blocks = [_section(head, "concordia_question_request")]
    _, options, _ = question_lines(question)
    if options and question.kind is not QuestionKind.PLAN:
        listed = _cut(escape("\n".join(options)), _TEXT_MAX_CHARS)
        blocks.append(_section(listed, "concordia_question_options"))
    return blocks


def _how_to_answer(question: QuestionAsked, mentions: list[str]) -> str:
    parts = [f"Prompted by {', '.join(mentions)}"] if mentions else []
    if question.kind is QuestionKind.PLAN:
        how = (
            "Approvers and the host decide with the buttons; to reject it with feedback for "
            f"Claude: `/concordia answer {question.question_id} <your feedback>`. "
            "The first answer counts."
        )
    else:
        _, _, how = question_lines(question)
    parts.append(escape(how))
    return " · ".join(parts)


def _option_buttons(question: QuestionAsked) -> list[dict[str, Any]]:
    """An actions block with a button per option (the first 25: Block Kit's limit; the rest
    are answered with the command), or nothing when there is no option."""
    elements = []
    for number, option in enumerate(question.options[:_MAX_BUTTONS], start=1):
        button: dict[str, Any] = {
            "type": "button",
            "action_id": f"{_QUESTION_ACTION_PREFIX}{number}",
            "text": {"type": "plain_text", "text": _cut(escape(option.label), _BUTTON_MAX_CHARS)},
            "value": str(question.question_id),
        }
        if question.kind is QuestionKind.PLAN and number <= len(_PLAN_STYLES):
            button["style"] = _PLAN_STYLES[number - 1]
        elements.append(button)
    if not elements:
        return []
    return [{"type": "actions", "block_id": "concordia_question_buttons", "elements": elements}]


def _section(text: str, block_id: str) -> dict[str, Any]:
    return {"type": "section", "block_id": block_id, "text": {"type": "mrkdwn", "text": text}}


def _context(text: str, block_id: str) -> dict[str, Any]:
    element = {"type": "mrkdwn", "text": _cut(text, _TEXT_MAX_CHARS)}
    return {"type": "context", "block_id": block_id, "elements": [element]}


def _cut(text: str, max_chars: int) -> str:
    """Escaped ``text`` within ``max_chars`` (ending in "…" when shortened); an entity
    (``&amp;``) or a mention (``<@U…>``) is never cut in half."""
    if len(text) <= max_chars:
        return text
    cut = text[: max(0, max_chars - 1)]
    for opener, closer in (("&", ";"), ("<", ">")):
        start = cut.rfind(opener)
        if start != -1 and closer not in cut[start:]:
            cut = cut[:start]
    return cut + "…"


# -- inbound: button clicks --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Click:
    """A participant's click on one of our buttons, as the core needs it: ``target_id`` is the
    approval or question id (the button's value), ``choice`` what the action id names (a
    decision, an option number)."""

    channel: str
    thread_ts: str | None  # the thread the buttons were posted in, to answer there
    author: Author
    target_id: int
    choice: str


def _click(body: Mapping[str, Any], action_ids: re.Pattern[str]) -> _Click | None:
    """The ``block_actions`` payload of a click on one of our ``action_ids``; None when it is
    not one (another action, no user or channel, a value that is no id)."""
    actions = body.get("actions") or []
    action = actions[0] if actions and isinstance(actions[0], Mapping) else {}
    match = action_ids.match(str(action.get("action_id", "")))
    value = str(action.get("value", ""))
    user = body.get("user") or {}
    container = body.get("container") or {}
    message = body.get("message") or {}
    channel = str((body.get("channel") or {}).get("id") or container.get("channel_id") or "")
    user_id = str(user.get("id", ""))
    if match is None or not (value.isascii() and value.isdigit()) or not user_id or not channel:
        return None
    thread_ts = container.get("thread_ts") or message.get("thread_ts")
    return _Click(
        channel=channel,
        thread_ts=str(thread_ts) if thread_ts else None,
        author=Author(PLATFORM, user_id, str(user.get("username") or user.get("name") or user_id)),
        target_id=int(value),
        choice=match.group(1),
    )


class SlackAdapter:
    """Serves ``channels`` (channel id → its party) over Socket Mode."""

    name = PLATFORM

    def __init__(
        self,
        settings: SlackSettings,
        channels: Mapping[str, Party],
        *,
        bot_token: str,
        app_token: str,
    ):
        self._settings = settings
        self._channels = dict(channels)
        self._client = AsyncWebClient(token=bot_token, base_url=settings.api_url)
        # Bolt copies the root logger's level onto its own loggers unless given one: at
        # DEBUG it would log every payload, `/concordia join <token>` included.
        self._app = AsyncApp(
            client=self._client,
            process_before_response=True,
            logger=logging.getLogger("slack_bolt"),
        )
        self._handler = AsyncSocketModeHandler(self._app, app_token)
        self._bot_user_id = ""
        self._sink: SlackSink | None = None
        self._hinted: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._app.event("app_mention")(self._on_mention)
        self._app.command("/concordia")(self._on_command)
        self._app.action(_APPROVAL_ACTION)(self._on_approval_click)
        self._app.action(_QUESTION_ACTION)(self._on_question_click)

    async def start(self) -> None:
        try:
            auth = await self._client.auth_test()
        except SlackApiError as exc:
            raise AdapterError(
                f"Slack refused the bot token in ${self._settings.bot_token_env} "
                f"({exc.response.get('error')}): reinstall the app and export the xoxb- token",
                retryable=False,
            ) from exc
        self._bot_user_id = str(auth["user_id"])
        self._sink = SlackSink(
            self._client,
            max_message_chars=self._settings.max_message_chars,
            edit_interval_s=self._settings.edit_interval_s,
        )
        try:
            await self._handler.connect_async()
        except SlackApiError as exc:
            raise AdapterError(
                f"Slack refused the app token in ${self._settings.app_token_env} "
                f"({exc.response.get('error')}): Socket Mode needs an app-level xapp- token with "
                "connections:write",
                retryable=False,
            ) from exc

    def outputs(self) -> list[ChatOutput]:
        """Each party's events go to the first of its channels that is served here."""
        if self._sink is None:
            raise RuntimeError("start() the Slack adapter before outputs()")
        homes: dict[str, str] = {}
        for channel, party in self._channels.items():
            homes.setdefault(party.name, channel)
        return [
            ChatOutput(name, self._sink, PLATFORM, Markup.SLACK, home)
            for name, home in homes.items()
        ]

    async def run(self) -> None:
        await self._stopped.wait()

    async def is_connected(self) -> bool:
        """The Socket Mode connection is open (for readiness)."""
        return bool(await self._handler.client.is_connected())

    async def stop(self) -> None:
        self._stopped.set()
        try:
            await self._handler.close_async()
        except Exception:
            # Stopping anyway: the connection is dropped with the process.
            log.warning("could not close the Socket Mode connection cleanly", exc_info=True)
        for task in list(self._background):
            task.cancel()

    # -- inbound ---------------------------------------------------------------------

    async def _on_mention(self, event: dict[str, Any]) -> None:
        """Runs before bolt acks the event: store the prompt, leave the rest to a task."""
        channel = str(event.get("channel", ""))
        party = self._channels.get(channel)
        user = str(event.get("user", ""))
        if party is None or not user or user == self._bot_user_id:
            return
        text = re.sub(
            rf"<@{re.escape(self._bot_user_id)}(\|[^>]*)?>", "", str(event.get("text", ""))
        ).strip()
        ts = str(event.get("ts", ""))
        prompt = Prompt(
            f"{PLATFORM}:{channel}:{ts}",
            Author(PLATFORM, user, user),
            text,
            thread=f"{channel}/{event.get('thread_ts') or ts}",
        )
        submitted = await submit_with(
            party, prompt, _attachments(event.get("files") or []), self._read
        )
        self._in_background(self._acknowledge(prompt, submitted, channel, ts))

    async def _acknowledge(
        self, prompt: Prompt, submitted: Submitted, channel: str, ts: str
    ) -> None:
        """Mark a queued prompt, or tell its sender alone why it was not queued; then tell
        them which files did not go with it, and why."""
        submission = submitted.submission
        try:
            match submission:
                case Accepted(is_duplicate=False):
                    await self._client.reactions_add(channel=channel, timestamp=ts, name=_QUEUED)
                case Accepted():
                    pass  # a redelivered event: already queued, marked and told
                case Rejected(kind=RejectKind.NOT_MEMBER):
                    if prompt.author.user_id not in self._hinted:
                        self._hinted.add(prompt.author.user_id)
                        await self._client.chat_postEphemeral(
                            channel=channel, user=prompt.author.user_id, text=escape(_MEMBER_HINT)
                        )
                case Rejected(reason=reason):
                    await self._client.chat_postEphemeral(
                        channel=channel,
                        user=prompt.author.user_id,
                        text=escape(f"Not queued: {reason}"),
                    )
                case _:
                    assert_never(submission)
        except SlackApiError:
            log.warning("could not acknowledge a prompt on Slack", exc_info=True)
        if not submitted.left_out or not isinstance(submission, Accepted):
            return  # a prompt not queued: what it said is all its sender needs
        if submission.is_duplicate:
            return  # told when it was first queued
        lines = "\n".join(f"• {reason}" for reason in submitted.left_out)
        try:
            await self._client.chat_postEphemeral(
                channel=channel, user=prompt.author.user_id, text=escape(f"{_LEFT_OUT}\n{lines}")
            )
        except SlackApiError:
            log.warning("could not tell a sender which files were left out", exc_info=True)

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """The ack waits for our listener: work that may be slow (a rate-limited reaction)
        runs after it, kept referenced, cancelled on stop, and logged if it fails."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "a Slack background task failed",
                exc_info=task.exception(),
                extra={"platform": PLATFORM},
            )

    async def _on_approval_click(self, ack: Any, body: dict[str, Any]) -> None:
        """A click on an approval button: ack at once (Slack wants it within 3 s, and a click
        is not resent, so there is nothing to make durable first), decide after."""
        await ack()
        click = _click(body, _APPROVAL_ACTION)
        if click is None:
            log.warning("ignoring an approval click without a usable payload")
            return
        self._in_background(self._decide(click))

    async def _decide(self, click: _Click) -> None:
        """Hand the click to the party; answer the clicker alone, in the request's thread."""
        party = self._channels.get(click.channel)
        if party is None:
            text = _NOT_SERVED
        elif party.role_of(click.author) is None:
            text = _CLICK_HINT
        else:
            decision = Decision(click.choice)
            text = (await party.decide(click.target_id, click.author, decision)).text
        await self._tell_clicker(click, text)

    async def _on_question_click(self, ack: Any, body: dict[str, Any]) -> None:
        """A click on one of a question's option buttons: ack at once, answer after (as for
        approvals)."""
        await ack()
        click = _click(body, _QUESTION_ACTION)
        if click is None:
            log.warning("ignoring an answer click without a usable payload")
            return
        self._in_background(self._answer(click))

    async def _answer(self, click: _Click) -> None:
        """Hand the option's number to the party as the clicker's answer; tell the clicker
        alone what came of it (the reason, when they may not answer)."""
        party = self._channels.get(click.channel)
        if party is None:
            text = _NOT_SERVED
        elif party.role_of(click.author) is None:
            text = _ANSWER_HINT
        else:
            text = (await party.answer(click.target_id, click.author, click.choice)).text
        await self._tell_clicker(click, text)

    async def _tell_clicker(self, click: _Click, text: str) -> None:
        try:
            await self._client.chat_postEphemeral(
                channel=click.channel,
                user=click.author.user_id,
                thread_ts=click.thread_ts,
                text=escape(text),
            )
        except SlackApiError:
            log.warning("could not answer a button click on Slack", exc_info=True)

    async def _read(self, attachment: Attachment) -> bytes | None:
        return await self._download(attachment.ref) if attachment.ref else None

    async def _download(self, url: str) -> bytes | None:
        """A file shared in Slack, fetched with the bot token (files are private)."""
        headers = {"Authorization": f"Bearer {self._client.token}"}
        timeout = aiohttp.ClientTimeout(total=self._settings.download_timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers=headers) as response,
            ):
                response.raise_for_status()
                if response.history:
                    # Slack answers a file it will not give us with a redirect to a sign-in
                    # page (200, HTML), not an error: that page is not the file.
                    log.warning("Slack redirected a file download (missing files:read?)")
                    return None
                return await response.read()
        except (aiohttp.ClientError, TimeoutError):
            log.warning("could not read a file shared with a mention", exc_info=True)
            return None

    async def _on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack()
        channel = str(command.get("channel_id", ""))
        party = self._channels.get(channel)
        if party is None:
            await respond(text=_NOT_SERVED, response_type="ephemeral")
            return
        name, _, args = str(command.get("text", "")).strip().partition(" ")
        author = Author(
            PLATFORM, str(command.get("user_id", "")), str(command.get("user_name", ""))
        )
        public = False
        if name == "join":
            text = (await party.admit(args, author)).text
        else:
            result = await party.command(Command(name or "status", args, author, channel))
            text, public = result.text, result.public
        await respond(
            text=escape(text),
            response_type="in_channel" if public else "ephemeral",
            unfurl_links=False,
            unfurl_media=False,
        )


# What the bridge calls: mentions, posts and updates, reactions, /concordia, shared files.
REQUIRED_SCOPES = ("app_mentions:read", "chat:write", "reactions:write", "commands", "files:read")


async def diagnose(settings: SlackSettings, bot_token: str, app_token: str) -> list[str]:
    """What would stop the bridge, each with its fix (for `concordia doctor`); [] if nothing."""
    problems: list[str] = []
    client = AsyncWebClient(token=bot_token, base_url=settings.api_url)
    try:
        auth = await client.auth_test()
    except SlackApiError as exc:
        return [
            f"Slack refused the bot token in ${settings.bot_token_env} "
            f"({exc.response.get('error')}): reinstall the app and export its xoxb- token"
        ]
    granted = {s.strip() for s in str(auth.headers.get("x-oauth-scopes", "")).split(",")}
    missing = [scope for scope in REQUIRED_SCOPES if scope not in granted]
    if missing:
        problems.append(
            f"the bot token lacks the scopes {', '.join(missing)}: add them under OAuth & "
            "Permissions and reinstall the app"
        )
    try:
        await client.apps_connections_open(app_token=app_token)
    except SlackApiError as exc:
        problems.append(
            f"Slack refused the app token in ${settings.app_token_env} "
            f"({exc.response.get('error')}): Socket Mode needs an app-level xapp- token with "
            "connections:write"
        )
    return problems
