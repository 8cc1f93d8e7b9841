"""The browser page end to end: real Chromium, `concordia run`, the real `claude` CLI and the
fake Anthropic API.

Each test starts its own bot and drives the page as people would (the invite link, the name
form, Enter in the composer, a click on Allow), then checks what the page shows against what
the far end received (`FakeAnthropic.turns`) and what others saw (a protocol client, a
`concordia join` terminal). Every test ends by checking the browser console: no JavaScript
error, no Content-Security-Policy report.

Selenium blocks, so every call to it runs in a thread (`asyncio.to_thread`) while the loop
keeps reading the bot. Page state that changes faster than a poll could see (the connection
going reconnecting → connected) is recorded by a MutationObserver installed in the page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import make_settings
from tests.e2e.browser import (
    DESKTOP,
    PHONE,
    Browsers,
    console_problems,
    open_page,
    screenshot,
    send,
    text_of,
    wait_for,
)
from tests.e2e.harness import BotProcess, Client
from tests.e2e.test_hostile import ENV_SECRET, ENV_SECRET_NAME, STATIC_VALUES, token_values
from tests.fakes.anthropic_api import FakeAnthropic
from tests.hostile_corpus import CONTROL_CHARS, Case, load
from tests.payloads.images import PNG_1PX, PNG_1PX_B64
from tests.waits import until

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

SLOW_INTERVAL_S = 0.1
SLOW_STEPS = 40  # a SLOW reply streams for about 4 s: long enough to act mid-stream
SLOW_TAIL = " ." * SLOW_STEPS
WAIT_S = 30.0


@pytest.fixture
async def api() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(slow_interval_s=SLOW_INTERVAL_S, slow_steps=SLOW_STEPS) as fake:
        yield fake


def link(bot: BotProcess, token: str) -> str:
    """The invite link as `concordia run` prints it."""
    return f"http://127.0.0.1:{bot.port}/#{token}"


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking Selenium step, off the event loop."""
    return await asyncio.to_thread(fn, *args)


def js(driver: WebDriver, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def batch_state(driver: WebDriver, batch_id: int, selector: str = "") -> dict[str, Any]:
    """What the page shows of one batch: its status, sources, output text, how many cards,
    how many elements of its output match ``selector``, and how many batches still have
    output waiting to be rendered (``pending``).

    Read two animation frames later: the page renders output at the next frame, so a done
    frame can set the status before the last delta is on screen (and a render that took
    long puts the next one off a few frames: ``pending`` says so).
    """
    return dict(
        driver.execute_async_script(
            """
            const [batchId, selector, reply] = arguments;
            requestAnimationFrame(() => requestAnimationFrame(() => {
              const cards = document.querySelectorAll(`.batch[data-batch-id="${batchId}"]`);
              const card = cards[0];
              const output = card && card.querySelector(".output");
              reply({
                cards: cards.length,
                status: card ? card.dataset.status || null : null,
                sources: card ? card.querySelector(".sources").textContent : "",
                output: output ? output.textContent : "",
                matches: output && selector ? output.querySelectorAll(selector).length : 0,
                pending: window.concordiaDebug.pendingRenders(),
              });
            }));
            """,
            batch_id,
            selector,
        )
    )


def wait_done(
    driver: WebDriver, batch_id: int, status: str = "success", selector: str = ""
) -> dict[str, Any]:
    """Wait until the page shows ``batch_id`` ended, its output all rendered; its state, once
    its status is ``status``."""

    def ended(d: WebDriver) -> dict[str, Any]:
        shown = batch_state(d, batch_id, selector)
        return shown if shown["status"] and not shown["pending"] else {}

    shown = wait_for(driver, ended, what=f"batch {batch_id} ended")
    assert shown["status"] == status, shown
    return shown


def no_console_problems(*drivers: Chrome) -> None:
    for driver in drivers:
        problems = console_problems(driver)
        assert not problems, "\n".join(problems)


def assert_whoami(driver: WebDriver, name: str, role: str) -> None:
    assert text_of(driver, "#whoami") == f"{name} · {role}"


# -- a terminal participant ---------------------------------------------------------------------


class Terminal:
    """`concordia join URL --name NAME` with its stdin kept open (piped mode: it sends each
    line, and exits once stdin closes and its prompts are answered)."""

    def __init__(self, url: str, name: str, cwd: Path):
        self._url = url
        self._name = name
        self._cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.out = ""
        self._printed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Terminal:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "join",
            self._url,
            "--name",
            self._name,
            cwd=self._cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(4096):
            self.out += chunk.decode(errors="replace")
            self._printed.set()
        self._printed.set()

    async def printed(self, *parts: str, within_s: float = WAIT_S) -> str:
        """Wait until the output holds every part."""
        return await until(
            lambda: self.out if all(p in self.out for p in parts) else "",
            self._printed,
            within_s=within_s,
            what=f"{self._name}'s terminal printing {parts!r}",
        )

    async def type_line(self, text: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def close_input(self) -> int:
        """End stdin; the exit code once it is done."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return await asyncio.wait_for(self.proc.wait(), WAIT_S)


# -- 1. two browsers and a terminal in one batch --------------------------------------------------


@pytest.mark.timeout(90)
async def test_two_pages_and_a_terminal_share_one_attributed_batch(
    api: FakeAnthropic, tmp_path: Path, browsers: Browsers
) -> None:
    # Short: the merged prompt's header and all three fit in the echo's 200 characters.
    asks = {"ann": "SLOW fix the parser", "ben": "test the lexer", "cli": "rename config"}
    # A window wide enough that three people pressing Enter together land in one batch.
    # Three people typing: all within the window, whatever the gaps between them.
    make_settings(tmp_path, api, party={"collect_window_s": 2.0, "quiet_gap_s": 2.0})
    async with BotProcess(tmp_path / "config.toml", tmp_path) as bot:
        ann, ben = await asyncio.gather(run(browsers.open, DESKTOP), run(browsers.open, PHONE))
        await asyncio.gather(
            run(open_page, ann, link(bot, bot.invite), "ann"),
            run(open_page, ben, link(bot, bot.invite), "ben"),
        )
        async with Terminal(link(bot, bot.invite), "cli", tmp_path) as cli:
            await cli.printed("joined party")
            await asyncio.gather(
                run(send, ann, asks["ann"]),
                run(send, ben, asks["ben"]),
                cli.type_line(asks["cli"]),
            )
            turn = await asyncio.wait_for(api.requests.get(), WAIT_S)
            for name, text in asks.items():
                assert f"({name}) {text}" in turn.user_text, turn.user_text
            echo = "ECHO: " + turn.user_text[:200]
            assert all(text in echo for text in asks.values()), turn.user_text

            # Mid-stream on the phone: the output has begun, the batch has no status yet.
            batch_id = int(
                await run(
                    wait_for,
                    ben,
                    lambda d: js(
                        d,
                        """const card = document.querySelector(".batch:not([data-status])");
                        return card && card.querySelector(".output").textContent.includes(" .")
                          && card.dataset.batchId;""",
                    ),
                    WAIT_S,
                    "ben's page streaming the SLOW reply",
                )
            )
            picture = await run(screenshot, ben, "party-of-three-mid-stream-phone")
            during = await run(batch_state, ben, batch_id)
            assert during["status"] is None, "the picture was meant to be taken mid-stream"
            assert during["output"].startswith("ECHO:")
            assert picture.is_file()
            assert picture.stat().st_size > 1000
            assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            for page in (ann, ben):
                shown = await run(wait_done, page, batch_id)
                assert shown["cards"] == 1
                for name in asks:
                    assert name in shown["sources"], shown["sources"]
                # Rendered Markdown: the list numbers become <ol> items, the text is all there.
                output = " ".join(shown["output"].split())
                assert output.startswith("ECHO: Several teammates asked for the following.")
                for name, text in asks.items():
                    assert f"({name}) {text}" in output
                assert output.endswith(SLOW_TAIL.strip())
            await cli.printed("✓ done")
            assert echo + SLOW_TAIL in cli.out
            batch_line = next(line for line in cli.out.splitlines() if f"Batch {batch_id}" in line)
            assert all(name in batch_line for name in asks), batch_line
            assert await cli.close_input() == 0, cli.out
        assert len(api.turns) == 1, [t.user_text for t in api.turns]
        assert_whoami(ann, "ann", "prompter")
        assert_whoami(ben, "ben", "prompter")
        no_console_problems(ann, ben)


# -- 2. an approval answered from the page --------------------------------------------------------


@pytest.mark.timeout(90)
async def test_an_approver_allows_a_tool_call_from_the_page(
    api: FakeAnthropic, tmp_path: Path, browsers: Browsers
) -> None:
    make_settings(tmp_path, api)
    async with BotProcess(tmp_path / "config.toml", tmp_path) as bot:
        host, pia = await asyncio.gather(run(browsers.open, DESKTOP), run(browsers.open, PHONE))
        await asyncio.gather(
            run(open_page, host, link(bot, bot.host_token), "hana"),
            run(open_page, pia, link(bot, bot.invite), "pia"),
        )
        await run(send, pia, "TOOL_BASH echo from-the-page > approved.txt")

        def approval_on(page: WebDriver) -> dict[str, Any]:
            return dict(
                wait_for(
                    page,
                    lambda d: js(
                        d,
                        """const a = document.querySelector(".approval");
                        return a && {id: a.dataset.approvalId, text: a.textContent,
                          buttons: [...a.querySelectorAll("button")].map(b => b.dataset.decision)};
                        """,
                    ),
                    WAIT_S,
                    "the approval shown",
                )
            )

        asked, seen = await asyncio.gather(run(approval_on, host), run(approval_on, pia))
        assert asked["buttons"] == ["allow", "always", "deny"]
        assert seen["buttons"] == []  # a prompter sees the request, not the buttons
        assert seen["id"] == asked["id"]
        assert "echo from-the-page > approved.txt" in asked["text"]
        assert "waiting for an approver" in seen["text"]

        await run(
            lambda: host.find_element(
                By.CSS_SELECTOR,
                f'.approval[data-approval-id="{asked["id"]}"] button[data-decision=allow]',
            ).click()
        )

        def resolved_on(page: WebDriver) -> dict[str, Any]:
            return dict(
                wait_for(
                    page,
                    lambda d: js(
                        d,
                        """const a = document.querySelector(".approval[data-resolved]");
                        return a && {allowed: a.dataset.allowed,
                          result: a.querySelector(".approval-result").textContent,
                          buttons: a.querySelectorAll("button").length};""",
                    ),
                    WAIT_S,
                    "the approval resolved",
                )
            )

        for page in (host, pia):
            resolved = await run(resolved_on, page)
            assert resolved == {"allowed": "true", "result": "allowed by hana", "buttons": 0}
            batch_id = int(
                await run(js, page, "return document.querySelector('.batch').dataset.batchId")
            )
            shown = await run(wait_done, page, batch_id)
            assert "TOOL RESULT" in shown["output"]
        assert (tmp_path / "work" / "approved.txt").read_text() == "from-the-page\n"
        await run(screenshot, pia, "approval-allowed-prompter-phone")
        assert_whoami(host, "hana", "host")
        assert_whoami(pia, "pia", "prompter")
        no_console_problems(host, pia)


# -- 2b. Claude's question answered from the page --------------------------------------------------


def question_on(page: WebDriver, resolved: bool = False) -> dict[str, Any]:
    """What the page shows of the first question card (once it is resolved, if asked)."""
    return dict(
        wait_for(
            page,
            lambda d: js(
                d,
                """const [resolved] = arguments;
                const q = document.querySelector(".batch .question");
                if (!q || (resolved && !q.dataset.resolved)) return null;
                const outputs = [...q.closest(".batch").querySelectorAll(".output")];
                return {id: q.dataset.questionId, kind: q.dataset.kind,
                  answered: q.dataset.answered || null,
                  text: q.querySelector(".question-text").textContent,
                  meta: q.querySelector(".question-meta").textContent,
                  options: [...q.querySelectorAll("button.option")].map(
                    b => [b.dataset.option, b.querySelector(".option-label").textContent]),
                  controls: q.querySelectorAll("button, input").length,
                  waiting: (q.querySelector(".waiting") || {}).textContent || "",
                  result: q.querySelector(".question-result").textContent,
                  after: outputs.filter(
                    o => q.compareDocumentPosition(o) & Node.DOCUMENT_POSITION_FOLLOWING)
                    .map(o => o.textContent).join("")};""",
                resolved,
            ),
            WAIT_S,
            "the question resolved" if resolved else "the question shown",
        )
    )


@pytest.mark.timeout(90)
async def test_a_question_is_answered_by_clicking_an_option_on_the_page(
    api: FakeAnthropic, tmp_path: Path, browsers: Browsers
) -> None:
    make_settings(tmp_path, api)
    async with (
        BotProcess(tmp_path / "config.toml", tmp_path) as bot,
        Client(bot.port, bot.invite, "watcher") as watcher,
    ):
        await watcher.expect("welcome")
        pia, bob = await asyncio.gather(run(browsers.open, DESKTOP), run(browsers.open, PHONE))
        await asyncio.gather(
            run(open_page, pia, link(bot, bot.invite), "pia"),
            run(open_page, bob, link(bot, bot.invite), "bob"),
        )
        await run(send, pia, "TOOL_ASK Which database?")
        asked = await watcher.expect("question", within_s=WAIT_S)

        shown, seen = await asyncio.gather(run(question_on, pia), run(question_on, bob))
        assert shown["id"] == seen["id"] == str(asked["question_id"])
        assert (shown["kind"], shown["text"]) == ("choice", "Which database?")
        assert shown["options"] == [["1", "SQLite"], ["2", "Postgres"]]
        assert shown["controls"] == 4  # two options, the own-words box and its Send
        assert f"question {asked['question_id']}" in shown["meta"]
        # Bob is no author of this batch: he sees the question, not the controls.
        assert (seen["controls"], seen["options"]) == (0, [])
        assert "the batch's authors, approvers and the host answer" in seen["waiting"]
        await run(screenshot, pia, "question-open-desktop")

        await run(
            lambda: pia.find_element(
                By.CSS_SELECTOR,
                f'.question[data-question-id="{asked["question_id"]}"] button[data-option="2"]',
            ).click()
        )
        closed = await watcher.expect("question_done", question_id=asked["question_id"])
        assert (closed["answered"], closed["text"]) == (True, "pia answered: Postgres")
        done = await watcher.expect("done", batch_id=asked["batch_id"], within_s=WAIT_S)
        assert done["status"] == "success"
        for page in (pia, bob):
            await run(wait_done, page, asked["batch_id"])
            resolved = await run(question_on, page, True)
            assert resolved["answered"] == "true"
            assert resolved["controls"] == 0  # its controls went away
            assert resolved["result"] == "pia answered: Postgres"
            # What Claude wrote after the answer is below the card, in the same batch.
            assert resolved["after"].startswith("TOOL RESULT: "), resolved
        await run(screenshot, bob, "question-answered-phone")
        assert_whoami(pia, "pia", "prompter")
        no_console_problems(pia, bob)
    results = [
        block
        for turn in api.turns
        for message in turn.body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    assert len(results) == 1
    assert '"Which database?"="Postgres"' in str(results[0]["content"])


# -- 2c. an image pasted into the composer ---------------------------------------------------------

# A paste as the browser fires it, with one file on the clipboard.
_PASTE = """
const [name, type, base64] = arguments;
const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
const clipboard = new DataTransfer();
clipboard.items.add(new File([bytes], name, {type}));
document.getElementById("prompt").dispatchEvent(
  new ClipboardEvent("paste", {clipboardData: clipboard, bubbles: true, cancelable: true}));
"""


def chips(page: WebDriver) -> list[dict[str, Any]]:
    return list(
        js(
            page,
            """return [...document.querySelectorAll("#attachments .chip")].map(c => ({
              name: c.querySelector(".chip-name").textContent,
              width: c.querySelector("img").naturalWidth,
              complete: c.querySelector("img").complete}));""",
        )
    )


@pytest.mark.timeout(90)
async def test_an_image_pasted_into_the_composer_goes_with_the_prompt(
    api: FakeAnthropic, tmp_path: Path, browsers: Browsers
) -> None:
    make_settings(tmp_path, api, party={"collect_window_s": 0.05, "max_image_bytes": 1024})
    big = base64.b64encode(PNG_1PX + b"\0" * 2000).decode()
    async with BotProcess(tmp_path / "config.toml", tmp_path) as bot:
        page = await run(browsers.open, DESKTOP)
        await run(open_page, page, link(bot, bot.invite), "pia")

        await run(js, page, _PASTE, "huge.png", "image/png", big)
        refusal = await run(
            wait_for, page, lambda d: text_of(d, "#attach-error"), WAIT_S, "the refusal"
        )
        assert refusal == (
            "huge.png (2,068 bytes) is larger than the 1,024 bytes an image may have "
            "(party.max_image_bytes)"
        )
        await run(js, page, _PASTE, "notes.txt", "image/png", base64.b64encode(b"hi").decode())
        await run(
            wait_for,
            page,
            lambda d: "notes.txt is not an image" in text_of(d, "#attach-error"),
            WAIT_S,
            "a text file refused",
        )
        assert await run(chips, page) == []
        for name in ("first.png", "dot.png"):
            await run(js, page, _PASTE, name, "image/png", PNG_1PX_B64)
        shown = await run(
            wait_for,
            page,
            lambda d: len(c := chips(d)) == 2 and all(x["complete"] for x in c) and c,
            WAIT_S,
            "two thumbnails",
        )
        # Loaded, so the CSP let the thumbnail's data: URL in.
        assert shown == [
            {"name": "first.png", "width": 1, "complete": True},
            {"name": "dot.png", "width": 1, "complete": True},
        ]
        assert text_of(page, "#attach-error") == ""
        await run(screenshot, page, "images-attached-desktop")
        await run(lambda: page.find_element(By.CSS_SELECTOR, "#attachments .chip-remove").click())
        assert [c["name"] for c in await run(chips, page)] == ["dot.png"]

        await run(send, page, "what is in this picture?")
        turn = await asyncio.wait_for(api.requests.get(), WAIT_S)
        await run(
            wait_for,
            page,
            lambda d: d.find_elements(By.CSS_SELECTOR, ".pending[data-state=queued] .chip"),
            WAIT_S,
            "the prompt queued with its image",
        )
        assert await run(chips, page) == []  # the composer is empty again
        assert (await run(js, page, "return document.getElementById('attachments').hidden")) is True
        await run(screenshot, page, "image-sent-desktop")
        no_console_problems(page)
    images = [
        block
        for message in turn.body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "image"
    ]
    assert images == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX_B64},
        }
    ]
    assert "1. dot.png from pia" in json.dumps(turn.body["messages"][0]["content"])


# -- 3. a dropped connection mid-stream ---------------------------------------------------------

# Records, in order, every change of the connection state (with every pending prompt's state
# at that moment) and every change of a pending prompt's state.
_RECORDER = """
window.__events = [];
const conn = document.getElementById("conn");
const pendings = () => Object.fromEntries([...document.querySelectorAll(".pending")]
  .map((n) => [n.dataset.clientId, n.dataset.state]));
new MutationObserver(() => window.__events.push(["conn", conn.dataset.state, pendings()]))
  .observe(conn, {attributes: true, attributeFilter: ["data-state"]});
new MutationObserver((records) => {
  for (const r of records) {
    if (r.target.classList.contains("pending")) {
      window.__events.push(["pending", r.target.dataset.clientId, r.target.dataset.state]);
    }
  }
}).observe(document.getElementById("log"),
  {subtree: true, attributes: true, attributeFilter: ["data-state"]});
"""

# One task, so nothing of the server's can come in between: the prompt goes out on the open
# socket, the socket is closed before its answer can arrive (the page drops messages once it
# has closed), then a prompt is typed while the page is disconnected. Both are clicks on Send.
_SEND_DROP_SEND = """
const [before, after] = arguments;
const prompt = document.getElementById("prompt");
const sendButton = document.getElementById("send-btn");
prompt.value = before;
sendButton.click();
window.concordiaDebug.dropConnection();
prompt.value = after;
sendButton.click();
const ids = [...document.querySelectorAll(".pending")].map((n) => n.dataset.clientId);
return ids.slice(-2);
"""


@pytest.mark.timeout(90)
async def test_a_dropped_connection_mid_stream_loses_nothing_and_doubles_nothing(
    api: FakeAnthropic, tmp_path: Path, browsers: Browsers
) -> None:
    unanswered = "summarise the changelog"  # sent, its answer lost with the connection
    offline = "list the open issues"  # typed while the page reconnects
    make_settings(tmp_path, api)
    async with (
        BotProcess(tmp_path / "config.toml", tmp_path) as bot,
        Client(bot.port, bot.invite, "watcher") as watcher,
    ):
        await watcher.expect("welcome")
        page = await run(browsers.open, DESKTOP)
        await run(open_page, page, link(bot, bot.invite), "ann")
        await run(js, page, _RECORDER)
        await run(send, page, "SLOW keep talking")
        batch = await watcher.expect("batch")
        slow_id = batch["batch_id"]
        await run(
            wait_for,
            page,
            lambda d: " . ." in batch_state(d, slow_id)["output"],
            WAIT_S,
            "the SLOW reply streaming on the page",
        )
        before_id, after_id = await run(js, page, _SEND_DROP_SEND, unanswered, offline)

        def all_settled(d: WebDriver) -> bool:
            states = js(
                d, "return [...document.querySelectorAll('.pending')].map(n => n.dataset.state)"
            )
            is_connected = bool(d.find_elements(By.CSS_SELECTOR, "#conn[data-state=connected]"))
            return is_connected and all(s == "queued" for s in states)

        await run(wait_for, page, all_settled, WAIT_S, "reconnected, every prompt queued")
        done = await watcher.expect("done", batch_id=slow_id)
        assert done["status"] == "success"
        shown = await run(wait_done, page, slow_id)
        everyone_saw = "".join(
            f["text"] for f in watcher.all if f["type"] == "output" and f["batch_id"] == slow_id
        )
        assert everyone_saw == "ECHO: SLOW keep talking" + SLOW_TAIL
        # The page's rendered paragraph is the whole text, once: no gap, no doubled delta.
        assert shown["output"].strip() == everyone_saw
        assert shown["cards"] == 1

        next_batch = await watcher.expect("batch")
        await watcher.expect("done", batch_id=next_batch["batch_id"])
        await run(wait_done, page, next_batch["batch_id"])
        asked = [t.user_text for t in api.turns]
        assert sum(t.count(unanswered) for t in asked) == 1, asked
        assert sum(t.count(offline) for t in asked) == 1, asked
        assert unanswered in asked[-1]
        assert offline in asked[-1]

        events = await run(js, page, "return window.__events")
        conn = [e[1] for e in events if e[0] == "conn"]
        assert conn[-2:] == ["reconnecting", "connected"], conn
        assert conn.count("connected") == 1, conn  # one reconnect, no flapping
        # Both prompts waited, unanswered, while the page was reconnecting...
        reconnecting = next(e[2] for e in events if e[0] == "conn" and e[1] == "reconnecting")
        assert reconnecting[before_id] == reconnecting[after_id] == "sending", reconnecting
        # ...and each was answered once, queued.
        for client_id in (before_id, after_id):
            changes = [e[2] for e in events if e[0] == "pending" and e[1] == client_id]
            assert changes == ["queued"], (client_id, changes)
        pending = await run(
            js,
            page,
            """return [...document.querySelectorAll(".pending")].map(n => [
              n.querySelector(".pending-text").textContent, n.dataset.state,
              n.querySelector(".pending-status").textContent]);""",
        )
        assert [(p[0], p[1]) for p in pending] == [
            ("SLOW keep talking", "queued"),
            (unanswered, "queued"),
            (offline, "queued"),
        ]
        # The resend of the unanswered prompt was recognised by its id.
        assert pending[1][2].startswith("already queued"), pending[1]
        notices = await run(
            js, page, "return [...document.querySelectorAll('.notice')].map(n => n.textContent)"
        )
        assert notices == ["connection lost: reconnecting…", "reconnected"]
        assert_whoami(page, "ann", "prompter")
        no_console_problems(page)


_OFFLINE = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
_ONLINE = {**_OFFLINE, "offline": False}


@pytest.mark.timeout(60)
async def test_a_batch_that_ends_while_the_page_is_offline_is_shown_ended_and_whole(
    api: FakeAnthropic, tmp_path: Path, browsers: Browsers
) -> None:
    make_settings(tmp_path, api)
    async with (
        BotProcess(tmp_path / "config.toml", tmp_path) as bot,
        Client(bot.port, bot.invite, "watcher") as watcher,
    ):
        await watcher.expect("welcome")
        page = await run(browsers.open, DESKTOP)
        await run(open_page, page, link(bot, bot.invite), "ann")
        await run(send, page, "SLOW keep talking")
        slow_id = (await watcher.expect("batch"))["batch_id"]
        await run(
            wait_for,
            page,
            lambda d: " . ." in batch_state(d, slow_id)["output"],
            WAIT_S,
            "the SLOW reply streaming on the page",
        )
        # Offline (Chromium's network emulation): the page cannot reconnect until the turn ends.
        await run(page.execute_cdp_cmd, "Network.enable", {})
        await run(page.execute_cdp_cmd, "Network.emulateNetworkConditions", _OFFLINE)
        await run(js, page, "window.concordiaDebug.dropConnection()")
        await watcher.expect("done", batch_id=slow_id)
        await run(page.execute_cdp_cmd, "Network.emulateNetworkConditions", _ONLINE)
        await run(
            wait_for,
            page,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#conn[data-state=connected]"),
            WAIT_S,
            "the page reconnected",
        )
        # A command's answer comes after every frame the server sent on rejoining.
        await run(lambda: page.find_element(By.ID, "status-btn").click())
        await run(
            wait_for,
            page,
            lambda d: d.find_elements(By.CSS_SELECTOR, ".command-result[data-name=status]"),
            WAIT_S,
            "the status answer",
        )
        everyone_saw = "".join(
            f["text"] for f in watcher.all if f["type"] == "output" and f["batch_id"] == slow_id
        )
        shown = await run(batch_state, page, slow_id)
        offline_errors = [p for p in console_problems(page) if "ERR_INTERNET_DISCONNECTED" in p]
        assert console_problems(page) == offline_errors
        assert_whoami(page, "ann", "prompter")
        assert shown["output"].strip() == everyone_saw, "output lost while away"
        assert shown["status"] == "success", "the batch still shows as running"


# -- 4. the hostile corpus, rendered inert --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Markup:
    """A browser payload: HTML or Markdown that would run, load or escape if rendered as is.

    ``shown``: text the rendered output must show literally (proof it stayed text);
    ``element``: a selector the rendered output must match (proof the Markdown was rendered,
    so the payload went through markdown-it and DOMPurify rather than around them).
    """

    id: str
    text: str
    shown: str = ""
    element: str = ""


# The corpus is about terminals and chat platforms (controls, pings, secrets); a page has its
# own dangers. Each stays under the echo's 200 characters, so the whole payload comes back;
# block-level Markdown starts after a blank line, since the echo puts "ECHO: " first.
MARKUP = (
    Markup("html-script", "<script>window.__pwned = true</script> run the tests", "<script>"),
    Markup("html-img-onerror", '<img src=x onerror="window.__pwned=true">', "<img src=x"),
    Markup("html-svg-onload", "<svg/onload=alert(1)> and <body onload=alert(2)>", "<svg/"),
    Markup("html-iframe", '<iframe src="javascript:alert(1)"></iframe>', "<iframe"),
    Markup(
        "html-object-embed",
        '<object data="data:text/html,<script>alert(1)</script>"></object>'
        '<embed src="http://evil.example/x.swf">',
        "<object",
    ),
    Markup(
        "html-form",
        '<form action="http://evil.example/"><input name=q><button>go</button></form>',
        "<form",
    ),
    Markup(
        "html-style-link",
        '<style>body{display:none}</style><link rel=stylesheet href="http://evil.example/x.css">',
        "<style>",
    ),
    Markup("html-style-attr", '<div style="position:fixed;inset:0">overlay</div>', "<div style"),
    Markup("html-anchor-js", '<a href="javascript:alert(1)">click</a>', "<a href"),
    Markup("html-math", '<math><mi xlink:href="javascript:alert(1)">x</mi></math>', "<math>"),
    Markup(
        "html-block",
        "see:\n\n<div onmouseover=alert(1)>\n<script>alert(1)</script>\n</div>",
        "<div onmouseover",
    ),
    Markup("md-link-js", "[click me](javascript:alert(1)) and [x](JaVaScRiPt:alert(1))", "[x]"),
    Markup(
        "md-link-data", "[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)", "[d]"
    ),
    Markup("md-link-vbscript", "[vb](vbscript:msgbox(1))", "[vb]"),
    Markup("md-reference-js", "see:\n\n[ref]: javascript:alert(1)\n\nsee [ref] here", "[ref]"),
    Markup(
        "md-image-remote",
        "![pixel](http://evil.example/pixel.png) tracking",
        "image: pixel",
        'a.image-link[href="http://evil.example/pixel.png"]',
    ),
    Markup("md-image-data", "![svg](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)"),
    Markup(
        "md-autolink",
        "<https://evil.example/auto> and www.evil.example/x",
        element='a[href="https://evil.example/auto"][rel~="noopener"][target="_blank"]',
    ),
    Markup(
        "md-code-fence",
        "see:\n\n```html\n<script>alert(1)</script>\n```",
        "<script>alert(1)</script>",
        "pre code",
    ),
    Markup(
        "md-entities",
        "&lt;script&gt;alert(1)&lt;/script&gt; &#x3C;img src=x onerror=alert(1)&#x3E;",
        "<script>alert(1)</script>",
    ),
    Markup(
        "md-table-align",
        "see:\n\n| a | b |\n|:-|-:|\n| <img src=x onerror=alert(1)> | 2 |",
        "<img src=x onerror=alert(1)>",
        "table td.align-left + td.align-right",
    ),
)
MARKUP_NAME = "<img src=x onerror=alert(1)>"  # the page's own display name


# A textarea holds no lone CR: its value turns CR and CRLF into LF (HTML's newline
# normalisation) before the page reads it. "a\r\x1b[K\nb" reaches the server as
# "a\n\x1b[K\nb", whose clean text keeps both line breaks.
BROWSER_CLEAN = {"ctl-cr-escape-lf": "a\n\nb"}


@dataclass(frozen=True, slots=True)
class Ask:
    """One prompt of the hostile test and what must come of it: ``refused`` (with
    ``reason`` in the page's rejection), ``sanitized`` (Claude receives ``clean``),
    ``safe_output`` (``secret`` is not in the output) or ``shown`` (the output shows
    ``shown`` as text, and has an ``element`` when one is named)."""

    id: str
    text: str
    expect: str
    clean: str = ""
    reason: str = ""
    secret: str = ""
    shown: str = ""
    element: str = ""

    @classmethod
    def of(cls, case: Case, values: dict[str, str]) -> Ask:
        secret = case.text(values, key="secret") if "secret" in case.fields else ""
        return cls(
            case.id,
            case.text(values),
            case.expect,
            clean=BROWSER_CLEAN.get(case.id, case.get("clean", "")),
            reason=case.get("reason_contains", ""),
            secret=secret,
        )

    def problems(self, received: str, shown: dict[str, Any]) -> list[str]:
        """What went wrong with an accepted ask: ``received`` by Claude, ``shown`` by the page."""
        found = []
        if CONTROL_CHARS.search(received):
            found.append(f"{self.id}: Claude received control characters {received!r}")
        if self.expect == "sanitized" and received != self.clean:
            found.append(f"{self.id}: Claude received {received!r}, not {self.clean!r}")
        if self.secret and self.secret in shown["output"]:
            found.append(f"{self.id}: the secret is shown in the output")
        if self.shown and self.shown not in shown["output"]:
            found.append(f"{self.id}: the output does not show {self.shown!r} as text")
        if self.element and not shown["matches"]:
            found.append(f"{self.id}: the output has no {self.element!r}")
        if shown["status"] != "success":
            found.append(f"{self.id}: the batch ended {shown['status']}")
        return found


def corpus_cases() -> list[Case]:
    """The corpus's `output` and `control` cases a page can send. Left out: cases of other
    transports only, raw bytes and hand-made frames (a page sends only the JSON its code
    builds), and `out-secret-rotated-invite` (it needs an `invite rotate` first; it is about
    the redactor, which `test_hostile` covers, not about rendering)."""
    return [
        case
        for case in (c.on("websocket") for c in load("output") + load("control"))
        if "websocket" in case.transports and not {"b64", "frame", "flow"} & set(case.fields)
    ]


# Traps anything that runs: the dialogs a payload would call, and `window.open`.
_TRAP = """
for (const name of ["alert", "confirm", "prompt", "open"]) {
  window[name] = () => { window.__pwned = true; };
}
window.__pwned = false;
const all = document.querySelectorAll("*").length;
return all - document.querySelectorAll("#log *").length;
"""

_INERT = """
const log = document.getElementById("log");
const onAttrs = [...document.querySelectorAll("*")].flatMap(
  (n) => [...n.attributes].filter((a) => a.name.toLowerCase().startsWith("on"))
    .map((a) => `${n.tagName} ${a.name}`));
const foreign = performance.getEntriesByType("resource").map((e) => e.name)
  .filter((url) => !url.startsWith("data:") && new URL(url).origin !== location.origin);
return {
  pwned: window.__pwned,
  dangerous: [...log.querySelectorAll("script, iframe, object, embed, form, style, link, img,"
    + " input, button, textarea, select, svg, math, frame, frameset, base, meta")]
    .map((n) => n.outerHTML.slice(0, 120)),
  onAttrs,
  jsLinks: [...document.querySelectorAll("[href], [src], [action], [formaction]")]
    .map((n) => n.getAttribute("href") || n.getAttribute("src") || n.getAttribute("action")
      || n.getAttribute("formaction"))
    .filter((url) => /^\\s*(javascript|vbscript|data:text)/i.test(url)),
  styled: log.querySelectorAll("[style]").length,
  outside: document.querySelectorAll("*").length - log.querySelectorAll("*").length,
  foreign,
};
"""


def send_and_settle(driver: WebDriver, text: str, accepted_before: int) -> tuple[str, str, int]:
    """Send one prompt; wait until it is answered and, if queued, its batch has ended.

    Returns the pending's state, its status text and the batch id (0 when refused).
    """
    send(driver, text)
    state, status = wait_for(
        driver,
        lambda d: js(
            d,
            """const p = [...document.querySelectorAll(".pending")].pop();
            return p.dataset.state !== "sending"
              && [p.dataset.state, p.querySelector(".pending-status").textContent];""",
        ),
        what="the prompt answered",
    )
    if state != "queued":
        return state, status, 0
    wait_for(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".batch[data-status]")) > accepted_before,
        what="its batch ended",
    )
    batch_id = int(
        js(driver, "return [...document.querySelectorAll('.batch')].pop().dataset.batchId")
    )
    return state, status, batch_id


@pytest.mark.timeout(150)
async def test_the_hostile_corpus_is_rendered_inert(
    api: FakeAnthropic, tmp_path: Path, browsers: Browsers
) -> None:
    """The corpus's `output` and `control` cases a page can send (raw bytes and hand-made
    frames cannot come from a page; cases refused by the server are sent and must show as
    refused with the corpus's reason), then `MARKUP`, one turn each so that each comes back
    whole as Claude's output. A hostile display name joins too. Then nothing ran, nothing
    escaped the log, nothing was fetched."""
    base = make_settings(tmp_path, api)
    settings = make_settings(
        tmp_path,
        api,
        party={"member_burst": 1000},
        claude={"env": {**base.claude.env, ENV_SECRET_NAME: ENV_SECRET}},
    )
    cases = corpus_cases()
    names = [c for c in cases if "author_name" in c.fields]
    assert names, "the corpus has a hostile display name"
    async with BotProcess(tmp_path / "config.toml", tmp_path) as bot:
        values = {
            **STATIC_VALUES,
            **token_values(bot.invite, bot.host_token),
            "api_key": settings.claude.env["ANTHROPIC_API_KEY"],
            "env_secret": ENV_SECRET,
        }
        page, other = await asyncio.gather(run(browsers.open, DESKTOP), run(browsers.open, PHONE))
        await run(open_page, page, link(bot, bot.invite), MARKUP_NAME)
        outside = await run(js, page, _TRAP)

        asks = [Ask.of(case, values) for case in cases if "author_name" not in case.fields]
        asks += [Ask(m.id, m.text, "shown", shown=m.shown, element=m.element) for m in MARKUP]
        problems: list[str] = []
        accepted = 0
        for ask in asks:
            turns_before = len(api.turns)
            state, status, batch_id = await run(send_and_settle, page, ask.text, accepted)
            if ask.expect == "refused":
                if state != "rejected" or ask.reason not in status:
                    problems.append(f"{ask.id}: {state} {status!r}, expected refused")
                continue
            if state != "queued":
                problems.append(f"{ask.id}: {state} {status!r}, expected queued")
                continue
            accepted += 1
            shown = await run(batch_state, page, batch_id, ask.element)
            received = api.turns[turns_before].user_text if len(api.turns) > turns_before else ""
            problems += ask.problems(received, shown)

        # A display name is text too.
        for case in names:
            await run(open_page, other, link(bot, bot.invite), case["author_name"])
            await run(js, other, _TRAP)
            assert_whoami(other, case["clean_name"], "prompter")
            # The page joined with catch_up: the last batch (page's, ended) came first.
            ended = await run(
                js, other, "return document.querySelectorAll('.batch[data-status]').length"
            )
            state, status, batch_id = await run(send_and_settle, other, case.text(values), ended)
            assert state == "queued", status
            shown = await run(batch_state, other, batch_id)
            assert f"{case['clean_name']} #" in shown["sources"]
        assert_whoami(page, MARKUP_NAME, "prompter")
        assert f"{MARKUP_NAME} #" in await run(text_of, page, ".batch .sources")

        assert not problems, f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)
        for driver, expected_outside in ((page, outside), (other, None)):
            inert = await run(js, driver, _INERT)
            assert inert["pwned"] is False, "a payload ran"
            assert inert["dangerous"] == []
            assert inert["onAttrs"] == []
            assert inert["jsLinks"] == []
            assert inert["styled"] == 0
            assert inert["foreign"] == []
            if expected_outside is not None:
                assert inert["outside"] == expected_outside, "an element escaped the log"
        await run(screenshot, page, "hostile-corpus-desktop")
        assert_whoami(page, MARKUP_NAME, "prompter")
        no_console_problems(page, other)


# -- 5. another site's page and the WebSocket -----------------------------------------------------

_OTHER_SITE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>elsewhere</title></head>
<body><p id="result">trying</p>
<script>
  const result = document.getElementById("result");
  const ws = new WebSocket("ws://127.0.0.1:BOT_PORT/");
  ws.onopen = () => {
    result.dataset.opened = "true";
    ws.send(JSON.stringify({type: "join", token: "TOKEN", name: "mallory"}));
  };
  ws.onmessage = (event) => { result.dataset.received = event.data; };
  ws.onerror = () => { result.dataset.error = "true"; };
  ws.onclose = (event) => { result.dataset.closed = String(event.code); };
</script></body></html>
"""


@contextlib.asynccontextmanager
async def other_site(html: str) -> AsyncIterator[str]:
    """A page on another loopback port: another origin than the bot's."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


@pytest.mark.timeout(90)
async def test_a_page_from_another_origin_cannot_open_the_websocket(
    api: FakeAnthropic, tmp_path: Path, browsers: Browsers
) -> None:
    make_settings(tmp_path, api)
    async with BotProcess(tmp_path / "config.toml", tmp_path) as bot:
        html = _OTHER_SITE.replace("BOT_PORT", str(bot.port)).replace("TOKEN", bot.invite)
        driver = await run(browsers.open, DESKTOP)
        async with other_site(html) as elsewhere:
            await run(driver.get, elsewhere)
            result = await run(
                wait_for,
                driver,
                lambda d: js(
                    d,
                    "const r = document.getElementById('result');"
                    "return r.dataset.closed !== undefined && {...r.dataset};",
                ),
                WAIT_S,
                "the other site's socket closed",
            )
        assert result == {"error": "true", "closed": "1006"}  # never opened, nothing received
        await bot.said("refused a WebSocket from another site's page")
        assert not [line for line in bot.log if "mallory" in line], "mallory joined"
        refused = console_problems(driver)
        assert refused, "Chromium reports the refused handshake"
        assert all("WebSocket connection to" in p and "403" in p for p in refused), refused

        # The bot's own page, in the same browser, still joins and works.
        await run(open_page, driver, link(bot, bot.invite), "ann")
        state, status, batch_id = await run(send_and_settle, driver, "say hello", 0)
        assert state == "queued", status
        assert (await run(batch_state, driver, batch_id))["output"].strip() == "ECHO: say hello"
        assert [t.user_text for t in api.turns] == ["say hello"]
        assert_whoami(driver, "ann", "prompter")
        assert console_problems(driver) == refused  # nothing new from the bot's page
