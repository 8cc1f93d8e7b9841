"""`concordia run` end to end: WebSocket clients, the real `claude` CLI, the fake Anthropic API.

Stories every transport tells alike (a prompt sent during a turn merged into the next batch,
a dropped connection, kill -9 of the bot) are in `test_scenarios.py`."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]


def _config(tmp_path: Path, api: FakeAnthropic, **overrides: dict[str, object]) -> Path:
    make_settings(tmp_path, api, **overrides)
    return tmp_path / "config.toml"


def _claude_pid(bot: BotProcess) -> int:
    assert bot.proc is not None
    children = psutil.Process(bot.proc.pid).children(recursive=True)
    claude = [c for c in children if "claude" in " ".join(c.cmdline())]
    assert claude, f"no claude child among {[c.cmdline() for c in children]}"
    return claude[0].pid


def _db_states(tmp_path: Path) -> dict[int, str]:
    with sqlite3.connect(tmp_path / "state" / "concordia.db") as db:
        return {int(i): str(s) for i, s in db.execute("SELECT id, state FROM prompts")}


async def test_three_clients_thirty_prompts_each_in_exactly_one_batch(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with BotProcess(_config(tmp_path, fake_api), tmp_path) as bot:
        clients = [Client(bot.port, bot.invite, f"user{i}") for i in range(3)]
        for client in clients:
            await client.__aenter__()
            await client.expect("welcome")
        try:

            async def send_ten(client: Client) -> list[dict[str, Any]]:
                for n in range(10):
                    await client.prompt(
                        f"p{n}", f"task {n} from {client.name}: rename variable v{n}"
                    )
                return [await client.expect("queued") for _ in range(10)]

            queued = await asyncio.gather(*(send_ten(c) for c in clients))
            prompt_ids = {frame["prompt_id"] for frames in queued for frame in frames}
            assert len(prompt_ids) == 30

            # Every client sees batches covering all 30 prompts, each batch ending in done.
            def covered(frames: list[dict[str, Any]]) -> bool:
                sources = {
                    s["prompt_id"] for f in frames if f["type"] == "batch" for s in f["sources"]
                }
                started = {f["batch_id"] for f in frames if f["type"] == "batch"}
                ended = {f["batch_id"] for f in frames if f["type"] == "done"}
                return sources == prompt_ids and started == ended

            for client in clients:
                await client.until(covered, within_s=90)
                batches = [f for f in client.all if f["type"] == "batch"]
                listed = [s["prompt_id"] for b in batches for s in b["sources"]]
                assert sorted(listed) == sorted(prompt_ids), "each prompt in exactly one batch"
                dones = [f for f in client.all if f["type"] == "done"]
                assert [d["status"] for d in dones] == ["success"] * len(batches)
                outputs = {f["batch_id"] for f in client.all if f["type"] == "output"}
                assert outputs == {b["batch_id"] for b in batches}, (
                    "every batch's output reached every client"
                )
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
    assert fake_api.max_in_flight == 1
    assert set(_db_states(tmp_path).values()) == {"done"}


async def test_killed_claude_restarts_resumes_and_reruns_the_batch(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with (
        BotProcess(_config(tmp_path, fake_api), tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        await alice.prompt("warm", "hello")
        await alice.expect("done")
        session_id = fake_api.turns[-1].session_id
        assert session_id

        fake_api.first_delta.clear()
        await alice.prompt("k", "SLOW to be killed")
        batch = await alice.expect("batch")
        await asyncio.wait_for(fake_api.first_delta.wait(), 30)
        psutil.Process(_claude_pid(bot)).kill()

        notice = await alice.expect("system")
        assert "re-run" in notice["message"]
        rerun = await alice.expect("batch", batch_id=batch["batch_id"])
        assert rerun["attempt"] == 2
        done = await alice.expect("done", batch_id=batch["batch_id"], within_s=60)
        assert done["status"] == "success"
    rerun_request = fake_api.turns[-1]
    assert "SLOW to be killed" in rerun_request.user_text
    assert rerun_request.session_id == session_id, "the restarted CLI resumed the same conversation"
    assert set(_db_states(tmp_path).values()) == {"done"}


async def test_bad_input_is_rejected_and_the_connection_stays(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    config = _config(
        tmp_path, fake_api, party={"collect_window_s": 0.05, "max_prompt_chars": 250_000}
    )
    async with (
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        cases = {"empty": "", "blank": "  \n\t ", "nul": "a\x00b", "long": "x" * 250_001}
        for client_id, text in cases.items():
            await alice.prompt(client_id, text)
            rejected = await alice.expect("rejected", id=client_id)
            assert rejected["reason"]
        await alice.send({"type": "bogus"})
        assert (await alice.expect("error"))["code"] == "unknown_type"
        assert alice.ws is not None
        await alice.ws.send("{not json")
        assert (await alice.expect("error"))["code"] == "malformed"
        # json.loads raises RecursionError on this nesting, and ValueError on this number.
        await alice.ws.send("[" * 100_000 + "]" * 100_000)
        assert (await alice.expect("error"))["code"] == "malformed"
        await alice.ws.send('{"type": "prompt", "id": ' + "9" * 5_000 + ', "text": "x"}')
        assert (await alice.expect("error"))["code"] == "malformed"
        # JSON may carry a lone surrogate; UTF-8 cannot, so the answer escapes it.
        await alice.prompt("\ud800", "")
        assert (await alice.expect("rejected", id="\ud800"))["reason"]

        big = "B" * 200_000
        escape = "fix it\x1b[31m red\x1b]0;title\x07\x9b2J now"
        await alice.prompt("big", big)
        await alice.prompt("esc", escape)
        await alice.expect("queued", id="big")
        await alice.expect("queued", id="esc")
        await alice.until(lambda frames: any(f["type"] == "done" for f in frames), within_s=60)
    sent = "\n".join(t.user_text for t in fake_api.turns)
    assert big in sent, "the 200 kB prompt reached the API whole"
    assert "fix it red now" in sent
    assert not any(ch in sent for ch in "\x1b\x07\x9b\x00")


async def test_bad_token_closes_with_4001(fake_api: FakeAnthropic, tmp_path: Path) -> None:
    async with (
        BotProcess(_config(tmp_path, fake_api), tmp_path) as bot,
        Client(bot.port, "not-the-token", "mallory") as mallory,
    ):
        error = await mallory.expect("error")
        assert error["code"] == "bad_token"
        await asyncio.wait_for(mallory.closed.wait(), 10)
        assert mallory.ws is not None
        assert mallory.ws.close_code == 4001
    log = "".join(bot.log)
    assert "refused a join with a bad token" in log
    assert bot.invite not in log
    assert bot.host_token not in log


async def test_cancel_interrupts_a_slow_turn_and_the_next_turn_works(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with (
        BotProcess(_config(tmp_path, fake_api), tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        await alice.prompt("s", "SLOW please")
        batch = await alice.expect("batch")
        await asyncio.wait_for(fake_api.first_delta.wait(), 30)
        await alice.expect("output", batch_id=batch["batch_id"])
        await alice.send({"type": "command", "name": "cancel", "args": ""})
        result = await alice.expect("command_result", name="cancel")
        assert result["ok"]
        done = await alice.expect("done", batch_id=batch["batch_id"], within_s=20)
        assert done["status"] == "interrupted"
        await alice.prompt("n", "next one")
        nxt = await alice.expect("done", within_s=30)
        assert nxt["status"] == "success"
    assert fake_api.turns[-1].user_text == "next one"


async def test_oversized_frame_closes_with_1009(fake_api: FakeAnthropic, tmp_path: Path) -> None:
    config = _config(
        tmp_path, fake_api, websocket={"host": "127.0.0.1", "port": 0, "max_frame_bytes": 4096}
    )
    async with (
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        await alice.prompt("huge", "x" * 10_000)
        await asyncio.wait_for(alice.closed.wait(), 10)
        assert alice.ws is not None
        assert alice.ws.close_code == 1009
    assert fake_api.turns == []


async def test_api_failure_fails_the_batch_with_the_apis_message(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with (
        BotProcess(_config(tmp_path, fake_api), tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        await alice.prompt("f", "FAIL this one")
        done = await alice.expect("done", within_s=30)
        assert done["status"] == "error"
        assert "500" in done["detail"]
        assert "fake internal error" in done["detail"]
        await alice.prompt("ok", "and this works")
        assert (await alice.expect("done", within_s=30))["status"] == "success"
    assert set(_db_states(tmp_path).values()) == {"failed", "done"}


async def test_turn_timeout_interrupts_and_reports(fake_api: FakeAnthropic, tmp_path: Path) -> None:
    claude = make_settings(tmp_path, fake_api).claude
    overrides = {
        "command": claude.command,
        "env": claude.env,
        "workdir": str(claude.workdir),
        "turn_timeout_s": 1.0,
    }
    config = _config(tmp_path, fake_api, claude=overrides)
    async with (
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        await alice.prompt("s", "SLOW beyond the deadline")
        done = await alice.expect("done", within_s=30)
        assert done["status"] == "error"
        assert "turn_timeout_s" in done["detail"]
        await alice.prompt("n", "next")
        assert (await alice.expect("done", within_s=30))["status"] == "success"
