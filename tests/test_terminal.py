"""The `concordia join` client against a scripted host that speaks WebSocket protocol v1."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from rich.console import Console
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from adapters import wire
from adapters.terminal import (
    EXIT_NOT_JOINED,
    EXIT_OK,
    EXIT_UNANSWERED,
    InviteUrl,
    parse_invite_url,
    run_join,
)

TOKEN = "s3cret-token"
_CLOSED = {"type": "<connection closed>"}


def _join_frame(token: str = TOKEN, name: str = "ada") -> dict[str, Any]:
    """The join frame the client sends, as `adapters.wire` writes it (every field)."""
    frame: dict[str, Any] = json.loads(wire.format_frame(wire.Join(token=token, name=name)))
    return frame


class FakeHost:
    """A v1 host run by a script keyed on the prompt text.

    - "reject…": rejected.
    - "hold…": queued, then merged into the batch of the next prompt that is not held.
    - "bye": queued, then the host closes the connection (1001) without answering.
    - otherwise: queued, batch, two output deltas ("echo: " + text), done. The status is
      error for "fail…", interrupted for "stop…", else success. After "last words" the
      host closes the connection (1001).
    - "ask…": as otherwise, with an approval and its outcome before the output.
    - "question…": queued, batch, Claude's question 4 (SQLite or Postgres); the batch goes on
      once an answer frame comes: its command_result, question_done, the output, done.
    - "plan…": as otherwise, with plan question 5 and its question_done (nobody answered)
      before the output.
    - commands: command_result "<name> ok: <args>"; ok is false for /fail.

    Every frame received goes to ``received``; the end of a connection puts ``_CLOSED``.
    """

    def __init__(self) -> None:
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.port = 0
        self._next_prompt_id = 100
        self._next_batch_id = 0
        self._held: list[dict[str, Any]] = []
        self._asking: tuple[int, str] | None = None  # the batch and prompt a question holds

    def url(self, token: str = TOKEN) -> str:
        return f"concordia://127.0.0.1:{self.port}/{token}"

    async def frames_until_closed(self) -> list[dict[str, Any]]:
        frames = []
        while (frame := await asyncio.wait_for(self.received.get(), 5)) is not _CLOSED:
            frames.append(frame)
        return frames

    async def handle(self, ws: ServerConnection) -> None:
        try:
            await self._converse(ws)
        except ConnectionClosed:
            pass  # the client went away mid-script; what it sent is already recorded
        finally:
            await self.received.put(_CLOSED)

    async def _converse(self, ws: ServerConnection) -> None:
        join = json.loads(await ws.recv())
        await self.received.put(join)
        if join.get("token") == "close-without-error":
            await ws.close(4001, "bad token")
            return
        if join.get("token") != TOKEN:
            await _send(ws, type="error", code="bad_token", message="that invite is not valid")
            await ws.close(4001, "bad token")
            return
        await _send(ws, type="welcome", protocol=1, party="p-7", name=join["name"], role="prompter")
        await _send(ws, type="from_the_future", detail="clients must ignore this")
        async for raw in ws:
            frame = json.loads(raw)
            await self.received.put(frame)
            if frame["type"] == "command":
                await _send(
                    ws,
                    type="command_result",
                    name=frame["name"],
                    ok=frame["name"] != "fail",
                    text=f"{frame['name']} ok: {frame['args']}",
                    public=False,
                )
            elif frame["type"] == "prompt":
                await self._answer(ws, frame, author=join["name"])
            elif frame["type"] == "answer":
                await self._answered(ws, frame, author=join["name"])

    async def _answered(self, ws: ServerConnection, frame: dict[str, Any], author: str) -> None:
        if self._asking is None or frame["question_id"] != 4:
            text = f"question {frame['question_id']} is not waiting"
            await _send(ws, type="command_result", name="answer", ok=False, text=text, public=False)
            return
        (batch_id, prompt), self._asking = self._asking, None
        line = f"{author} answered: {frame['text']}"
        await _send(
            ws,
            type="command_result",
            name="answer",
            ok=True,
            text=f"question 4: {line}",
            public=False,
        )
        await _send(
            ws, type="question_done", question_id=4, batch_id=batch_id, answered=True, text=line
        )
        await self._finish(ws, batch_id, prompt)

    async def _answer(self, ws: ServerConnection, frame: dict[str, Any], author: str) -> None:
        text: str = frame["text"]
        if text.startswith("reject"):
            await _send(ws, type="rejected", id=frame["id"], reason="too long for this party")
            return
        self._next_prompt_id += 1
        queued = {"prompt_id": self._next_prompt_id, "text": text}
        await _send(
            ws,
            type="queued",
            id=frame["id"],
            prompt_id=queued["prompt_id"],
            position=1,
            duplicate=False,
        )
        if text.startswith("hold"):
            self._held.append(queued)
            return
        if text == "bye":
            await ws.close(1001, "host shutting down")
            return
        merged, self._held = [*self._held, queued], []
        self._next_batch_id += 1
        batch_id = self._next_batch_id
        sources = [{"prompt_id": p["prompt_id"], "author": author} for p in merged]
        sources.append({"prompt_id": 7, "author": "someone-else"})
        await _send(
            ws,
            type="batch",
            batch_id=batch_id,
            prompt=" + ".join(p["text"] for p in merged),
            attempt=1,
            sources=sources,
            groups=[],
        )
        if text.startswith("ask"):
            await _send(
                ws,
                type="approval",
                approval_id=9,
                batch_id=batch_id,
                tool="Bash",
                summary="run `touch x`",
                input="touch x",
                needed=2,
                timeout_s=120,
            )
            await _send(
                ws,
                type="approval_done",
                approval_id=9,
                batch_id=batch_id,
                allowed=False,
                text="denied by bo",
            )
        if text.startswith("question"):
            await _send(ws, **_QUESTION, batch_id=batch_id)
            self._asking = (batch_id, text)
            return
        if text.startswith("plan"):
            await _send(ws, **_PLAN, batch_id=batch_id)
            line = "nobody answered within 2 s"
            await _send(
                ws,
                type="question_done",
                question_id=5,
                batch_id=batch_id,
                answered=False,
                text=line,
            )
        await self._finish(ws, batch_id, text)

    async def _finish(self, ws: ServerConnection, batch_id: int, text: str) -> None:
        await _send(ws, type="output", batch_id=batch_id, text="echo: ")
        await _send(ws, type="output", batch_id=batch_id, text=text)
        status = "success"
        if text.startswith("fail"):
            status = "error"
        elif text.startswith("stop"):
            status = "interrupted"
        await _send(ws, type="done", batch_id=batch_id, status=status, detail="")
        if text == "last words":
            await ws.close(1001, "host shutting down")


_QUESTION: dict[str, Any] = {
    "type": "question",
    "question_id": 4,
    "kind": "choice",
    "header": "Database",
    "text": "Which database?",
    "options": [
        {"label": "SQLite", "description": "one file"},
        {"label": "Postgres", "description": ""},
    ],
    "multi_select": False,
    "answerers": "authors",
    "timeout_s": 300,
}
_PLAN: dict[str, Any] = {
    "type": "question",
    "question_id": 5,
    "kind": "plan",
    "header": "Plan",
    "text": "Claude's plan is above.",
    "options": [
        {"label": "Approve", "description": "Claude carries out the plan"},
        {"label": "Reject", "description": "Claude plans again"},
    ],
    "multi_select": False,
    "answerers": "approvers",
    "timeout_s": 2,
}


async def _send(ws: ServerConnection, **frame: Any) -> None:
    await ws.send(json.dumps(frame))


@pytest.fixture
async def host() -> AsyncIterator[FakeHost]:
    fake = FakeHost()
    async with serve(fake.handle, "127.0.0.1", 0) as server:
        fake.port = server.sockets[0].getsockname()[1]
        yield fake


def _console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=120)


def _printed(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


async def _lines(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def _join(
    url: str, *items: str, console: Console, name: str = "ada", interactive: bool = False
) -> int:
    return await run_join(url, name, lines=_lines(*items), console=console, interactive=interactive)


# --- piped mode -------------------------------------------------------------------------------


@pytest.mark.timeout(10)
async def test_happy_path_sends_join_then_prompts_and_exits_0_after_all_answers(
    host: FakeHost,
) -> None:
    console = _console()

    code = await _join(host.url(), "fix the bug\n", "", "   \n", "add a test\n", console=console)

    assert code == EXIT_OK
    frames = await host.frames_until_closed()
    assert frames[0] == _join_frame()
    prompts = frames[1:]
    assert [f["type"] for f in prompts] == ["prompt", "prompt"]  # blank lines are not sent
    assert [f["text"] for f in prompts] == ["fix the bug", "add a test"]
    ids = [f["id"] for f in prompts]
    assert len(set(ids)) == 2
    assert all(i.startswith("ada-") for i in ids)
    out = _printed(console)
    assert "joined party p-7 as ada" in out
    assert "queued #101 (position 1)" in out
    assert "Batch 1 — ada, someone-else" in out
    assert "echo: fix the bug\n✓ done" in out  # deltas joined as sent, newline before done
    assert "echo: add a test\n✓ done" in out
    assert "from_the_future" not in out


@pytest.mark.timeout(10)
async def test_a_merged_batch_answers_every_prompt_of_ours_in_it(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "hold first", "second", console=console)

    assert code == EXIT_OK
    out = _printed(console)
    assert out.count("✓ done") == 1
    assert "hold first + second" in out


@pytest.mark.timeout(10)
async def test_the_token_travels_in_the_join_frame_not_the_url(host: FakeHost) -> None:
    invite = parse_invite_url(host.url())

    assert TOKEN not in invite.ws_url
    code = await _join(host.url(), console=_console())

    assert code == EXIT_OK
    assert (await host.frames_until_closed()) == [_join_frame()]


@pytest.mark.timeout(10)
async def test_a_rejected_prompt_exits_1(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "reject me", "fine", console=console)

    assert code == EXIT_UNANSWERED
    assert "rejected: too long for this party" in _printed(console)
    assert "✓ done" in _printed(console)  # the other prompt was still waited for


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("text", "shown"), [("fail please", "✗ error"), ("stop now", "⏹ interrupted")]
)
async def test_a_batch_that_does_not_succeed_exits_1(host: FakeHost, text: str, shown: str) -> None:
    console = _console()

    code = await _join(host.url(), text, console=console)

    assert code == EXIT_UNANSWERED
    assert shown in _printed(console)


@pytest.mark.timeout(10)
async def test_commands_are_sent_and_their_results_awaited(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "/status", "/cancel  3 ", "/etc/hosts is wrong", console=console)

    assert code == EXIT_OK
    frames = await host.frames_until_closed()
    assert frames[1:3] == [
        {"type": "command", "name": "status", "args": ""},
        {"type": "command", "name": "cancel", "args": "3"},
    ]
    assert frames[3]["type"] == "prompt"  # a path is not a command
    assert frames[3]["text"] == "/etc/hosts is wrong"
    out = _printed(console)
    assert "status ok: \n" in out
    assert "cancel ok: 3" in out


@pytest.mark.timeout(10)
async def test_approvals_are_shown_with_how_to_answer(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "ask to touch", "/approve 9 deny", console=console)

    assert code == EXIT_OK
    out = _printed(console)
    assert "🔐 approval 9: Claude wants to run `touch x` (needs 2 approvers)" in out
    assert "answer with /approve 9 allow | always | deny" in out
    assert "⛔ approval 9: denied by bo" in out
    frames = await host.frames_until_closed()
    assert {"type": "command", "name": "approve", "args": "9 deny"} in frames


@pytest.mark.timeout(10)
async def test_a_question_is_shown_numbered_and_answer_sends_an_answer_frame(
    host: FakeHost,
) -> None:
    console = _console()

    # Piped: the prompt waits for its batch, which waits for the answer sent after it.
    code = await _join(host.url(), "question db", "/answer 4  Postgres, with WAL ", console=console)

    assert code == EXIT_OK
    frames = await host.frames_until_closed()
    assert frames[2] == {"type": "answer", "question_id": 4, "text": "Postgres, with WAL"}
    out = _printed(console)
    assert (
        "❓ question 4 · Database: Which database?\n"
        "   1. SQLite — one file\n"
        "   2. Postgres\n"
        "   answer with /answer 4 <number> or /answer 4 <your own words> (the batch's authors, "
        "approvers and the host may answer)\n"
    ) in out
    assert "question 4: ada answered: Postgres, with WAL\n" in out  # the command_result
    assert "✅ question 4: ada answered: Postgres, with WAL\n" in out
    assert "echo: question db\n✓ done" in out


@pytest.mark.timeout(10)
async def test_an_answer_that_is_refused_exits_1(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "/answer 12 1", console=console)

    assert code == EXIT_UNANSWERED
    assert "question 12 is not waiting" in _printed(console)


@pytest.mark.timeout(10)
async def test_an_answer_line_without_an_id_and_words_goes_as_the_command(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "/answer soon", "/answer 4", "/ANSWER", console=console)

    assert code == EXIT_OK
    frames = await host.frames_until_closed()
    assert frames[1:] == [  # the host's answer command says how to use it
        {"type": "command", "name": "answer", "args": "soon"},
        {"type": "command", "name": "answer", "args": "4"},
        {"type": "command", "name": "answer", "args": ""},
    ]


@pytest.mark.timeout(10)
async def test_slash_plan_goes_as_a_prompt_for_the_host_to_read(host: FakeHost) -> None:
    code = await _join(host.url(), "/plan add a users table", "/PLAN", console=_console())

    assert code == EXIT_OK
    frames = await host.frames_until_closed()
    assert [(f["type"], f["text"]) for f in frames[1:]] == [
        ("prompt", "/plan add a users table"),
        ("prompt", "/PLAN"),
    ]


@pytest.mark.timeout(10)
async def test_a_plan_says_how_to_approve_or_reject_and_nobody_answering(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "plan the schema", console=console)

    assert code == EXIT_OK
    out = _printed(console)
    assert (
        "📋 question 5 · Plan: Claude's plan is above.\n"
        "   1. Approve — Claude carries out the plan\n"
        "   2. Reject — Claude plans again\n"
        "   answer with /answer 5 1 approves; /answer 5 <what to change> rejects it "
        "(approvers and the host may answer)\n"
        "⌛ question 5: nobody answered within 2 s\n"
    ) in out


@pytest.mark.timeout(10)
async def test_a_failed_command_exits_1(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "/fail now", console=console)

    assert code == EXIT_UNANSWERED
    assert "fail ok: now" in _printed(console)


@pytest.mark.timeout(10)
async def test_quit_stops_sending_but_still_waits_for_answers(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "one", "/quit", "two", console=console)

    assert code == EXIT_OK
    frames = await host.frames_until_closed()
    assert [f.get("text") for f in frames[1:]] == ["one"]
    assert "✓ done" in _printed(console)


@pytest.mark.timeout(10)
async def test_claude_output_is_printed_literally_not_as_markup(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "[bold]x[/bold] :smile: [red]y", console=console)

    assert code == EXIT_OK
    out = _printed(console)
    assert "echo: [bold]x[/bold] :smile: [red]y\n" in out  # the streamed output
    assert "\n[bold]x[/bold] :smile: [red]y\n" in out  # the batch's merged prompt


@pytest.mark.timeout(10)
async def test_the_host_closing_before_answering_exits_1(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url(), "bye", "never answered", console=console)

    assert code == EXIT_UNANSWERED
    assert "the host closed the connection (code 1001: host shutting down)" in _printed(console)


# --- joining fails ----------------------------------------------------------------------------


@pytest.mark.timeout(10)
async def test_a_bad_token_exits_2_and_says_so(host: FakeHost) -> None:
    console = _console()

    code = await _join(host.url("wrong"), "never sent", console=console)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert "error: that invite is not valid" in out
    assert "the invite token was refused" in out
    assert await host.frames_until_closed() == [_join_frame("wrong")]


@pytest.mark.timeout(10)
async def test_close_4001_without_an_error_frame_means_the_token_was_refused(
    host: FakeHost,
) -> None:
    console = _console()

    code = await _join(host.url("close-without-error"), console=console)

    assert code == EXIT_NOT_JOINED
    assert "the invite token was refused" in _printed(console)


@pytest.mark.timeout(10)
async def test_a_host_speaking_another_protocol_version_is_refused_with_one_line() -> None:
    received: list[dict[str, Any]] = []
    ended = asyncio.Event()

    async def v2_host(ws: ServerConnection) -> None:
        try:
            received.append(json.loads(await ws.recv()))
            await _send(ws, type="welcome", protocol=2, party="p-7", name="ada", role="prompter")
            async for raw in ws:
                received.append(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            ended.set()

    async with serve(v2_host, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        console = _console()

        code = await _join(f"concordia://127.0.0.1:{port}/{TOKEN}", "not sent", console=console)
        await asyncio.wait_for(ended.wait(), 5)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert out.count("\n") == 1
    assert f"ws://127.0.0.1:{port}/ speaks Concordia protocol 2 and this client speaks 1" in out
    assert received == [_join_frame()]


@pytest.mark.timeout(10)
async def test_connection_refused_exits_2_naming_host_and_port() -> None:
    # Bound but not listening: connecting is refused, and no one else can take the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        console = _console()

        code = await _join(f"concordia://127.0.0.1:{port}/tok", console=console)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert (
        out
        == f"cannot connect to ws://127.0.0.1:{port}/: connection refused (is the host running?)\n"
    )


@pytest.mark.timeout(10)
async def test_a_bad_invite_url_exits_2_without_connecting() -> None:
    console = _console()

    code = await _join("ftp://127.0.0.1:1/#SECRET", console=console)

    assert code == EXIT_NOT_JOINED
    out = _printed(console)
    assert "scheme ftp:// is not one of ours" in out
    assert "https://HOST[:PORT][/PATH]#TOKEN" in out
    assert "SECRET" not in out


# --- interactive mode ------------------------------------------------------------------------


@pytest.mark.timeout(10)
async def test_interactive_quit_closes_at_once_and_exits_0(host: FakeHost) -> None:
    console = _console()

    code = await _join(
        host.url(), "/status", "/quit", "not sent", console=console, interactive=True
    )

    assert code == EXIT_OK
    frames = await host.frames_until_closed()
    assert frames[1:] == [{"type": "command", "name": "status", "args": ""}]


@pytest.mark.timeout(10)
async def test_interactive_runs_until_the_host_closes_and_exits_0(host: FakeHost) -> None:
    console = _console()
    never = asyncio.Event()

    async def typing() -> AsyncIterator[str]:
        yield "last words"
        await never.wait()  # the user types nothing more
        yield "unreachable"

    code = await run_join(host.url(), "ada", lines=typing(), console=console, interactive=True)

    assert code == EXIT_OK
    out = _printed(console)
    assert "echo: last words\n✓ done" in out
    assert "the host closed the connection (code 1001: host shutting down)" in out
    assert "Claude is working" not in out  # the spinner is transient and never in the text


# --- invite URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected", "ws_url"),
    [
        (
            "concordia://example.org:8765/SECRET_t-1",
            InviteUrl("example.org", 8765, "SECRET_t-1"),
            "ws://example.org:8765/",
        ),
        (
            "  CONCORDIA://10.0.0.2:80/SECRET\n",
            InviteUrl("10.0.0.2", 80, "SECRET"),
            "ws://10.0.0.2/",
        ),
        ("concordia://[::1]:9000/SECRET", InviteUrl("::1", 9000, "SECRET"), "ws://[::1]:9000/"),
        (
            "concordias://example.org:8443/SECRET",
            InviteUrl("example.org", 8443, "SECRET", is_tls=True),
            "wss://example.org:8443/",
        ),
        (
            "https://example.org/#SECRET_t-1",
            InviteUrl("example.org", 443, "SECRET_t-1", is_tls=True, path="/"),
            "wss://example.org/",
        ),
        (
            "HTTPS://Example.ORG#SECRET",
            InviteUrl("example.org", 443, "SECRET", is_tls=True, path="/"),
            "wss://example.org/",
        ),
        (
            "https://example.org:8443/#SECRET",
            InviteUrl("example.org", 8443, "SECRET", is_tls=True, path="/"),
            "wss://example.org:8443/",
        ),
        (
            "https://name.ngrok.app/#SECRET",
            InviteUrl("name.ngrok.app", 443, "SECRET", is_tls=True, path="/"),
            "wss://name.ngrok.app/",
        ),
        (
            "https://proxy.example.org/teams/concordia/#SECRET",
            InviteUrl("proxy.example.org", 443, "SECRET", is_tls=True, path="/teams/concordia/"),
            "wss://proxy.example.org/teams/concordia/",
        ),
        (
            "https://[::1]:8443/#SECRET",
            InviteUrl("::1", 8443, "SECRET", is_tls=True, path="/"),
            "wss://[::1]:8443/",
        ),
        (
            "http://127.0.0.1:8765/#SECRET",
            InviteUrl("127.0.0.1", 8765, "SECRET", is_tls=False, path="/"),
            "ws://127.0.0.1:8765/",
        ),
        (
            "http://localhost/concordia#SECRET",
            InviteUrl("localhost", 80, "SECRET", is_tls=False, path="/concordia"),
            "ws://localhost/concordia",
        ),
        (
            "wss://example.org:9443/ws#SECRET",
            InviteUrl("example.org", 9443, "SECRET", is_tls=True, path="/ws"),
            "wss://example.org:9443/ws",
        ),
        (
            "ws://[::1]/#SECRET",
            InviteUrl("::1", 80, "SECRET", is_tls=False, path="/"),
            "ws://[::1]/",
        ),
    ],
)
def test_parse_invite_url_accepts(url: str, expected: InviteUrl, ws_url: str) -> None:
    invite = parse_invite_url(url)

    assert invite == expected
    assert invite.ws_url == ws_url
    assert str(invite) == ws_url  # what messages show: never the token
    assert "SECRET" not in repr(invite)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://host:1/#SECRET", "scheme ftp:// is not one of ours"),
        ("host:1/SECRET", "no scheme"),
        ("example.org/#SECRET", "no scheme"),
        ("concordia://host/SECRET", "no port"),
        ("concordias://host/SECRET", "no port"),
        ("concordia://host:0/SECRET", "port must be 1-65535"),
        ("https://host:0/#SECRET", "port must be 1-65535"),
        ("concordia://host:99999/SECRET", "malformed"),
        ("https://host:99999/#SECRET", "malformed"),
        ("concordia://host:http/SECRET", "malformed"),
        ("concordia://::1:80/SECRET", "IPv6 hosts go in brackets"),
        ("https://[::1/#SECRET", "malformed"),
        ("concordia://:1/SECRET", "no host"),
        ("https://:8443/#SECRET", "no host"),
        ("https:///#SECRET", "no host"),
        ("concordia://host:1/", "no token"),
        ("concordia://host:1", "no token"),
        ("https://host/", "no token"),
        ("https://host/#", "no token"),
        ("https://host/SECRET", "no token: it ends with #TOKEN"),
        ("concordia://host:1/SECRET/more", "one path segment"),
        ("concordia://host:1/SECRET?x=1", "no \\? or # part"),
        ("concordia://host:1/#SECRET", "no \\? or # part"),
        ("https://host/?x=1#SECRET", "must not have a \\?"),
        ("concordia://me@host:1/SECRET", "user name or password"),
        ("https://me:pw@host/#SECRET", "user name or password"),
        ("https://host/#SECRET more", "spaces or line breaks"),
        ("https://host/#SECRET\tmore", "spaces or line breaks"),
        ("https://host/#SECRET\nmore", "spaces or line breaks"),
        ("concordia://host:1/SECRET more", "spaces or line breaks"),
    ],
)
def test_parse_invite_url_rejects_naming_the_problem(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as caught:
        parse_invite_url(url)

    message = str(caught.value)
    assert "SECRET" not in message
    assert "an invite link looks like https://HOST[:PORT][/PATH]#TOKEN" in message
    assert "concordia://HOST:PORT/TOKEN" in message
