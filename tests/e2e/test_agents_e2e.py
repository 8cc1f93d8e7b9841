"""The core cases on every agent driver (issue #17): `concordia run` with ``agent.kind`` set,
WebSocket clients, the agent's real CLI against a fake of the API it calls.

Each driver tells the same stories: prompts from three clients merged into one turn and
streamed to all of them; cancel mid-turn; the agent killed mid-turn, restarted and the batch
re-run; a 200 kB prompt arriving whole; the bot killed mid-batch with nothing lost or
answered twice. Claude's own driver tells them in test_websocket_e2e.py and
test_scenarios.py; the far ends are tests/fakes/*_api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bot.confinement import sandbox_support
from tests import far_ends
from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.far_ends import FAR_ENDS, FarEnd, FarEndFactory

pytestmark = pytest.mark.timeout(180)
every_driver = pytest.mark.parametrize("far_end", FAR_ENDS)


@contextlib.asynccontextmanager
async def _bot(
    far_end: FarEndFactory,
    tmp_path: Path,
    **party: object,
) -> AsyncIterator[tuple[FarEnd, Path]]:
    async with far_end(tmp_path) as end:
        make_settings(tmp_path, None, **end.sections, party=dict(party))
        yield end, tmp_path / "config.toml"


def _kill_agent(bot: BotProcess, marker: str) -> None:
    """kill -9 the agent: the first of the bot's descendants (the agent itself, not the
    bubblewrap around it) whose command line holds ``marker``. Short-lived helpers the
    agent runs may be gone by the time they are looked at."""
    assert bot.proc is not None
    seen: list[list[str]] = []
    for child in psutil.Process(bot.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            command = child.cmdline()
            seen.append(command)
            if marker in " ".join(command) and child.name() != "bwrap":
                child.kill()
                return
    raise AssertionError(f"no {marker} child among {seen}")


def _states(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "state" / "concordia.db") as db:
        return [str(s) for (s,) in db.execute("SELECT state FROM prompts ORDER BY id")]


def _batches(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "batch"]


def _done(frames: list[dict[str, Any]], batch_id: int) -> bool:
    return any(f["type"] == "done" and f["batch_id"] == batch_id for f in frames)


@every_driver
async def test_three_clients_merged_into_one_turn_streamed_to_all(
    far_end: Any, tmp_path: Path
) -> None:
    async with (
        _bot(far_end, tmp_path, collect_window_s=0.3) as (end, config),
        BotProcess(config, tmp_path) as bot,
    ):
        clients = [Client(bot.port, bot.invite, name) for name in ("ann", "bob", "cy")]
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
                await client.expect("welcome")
            # While the first turn runs, one prompt from each: they wait, then go as one.
            await clients[0].prompt("busy", "SLOW first")
            await clients[0].expect("batch")
            await asyncio.wait_for(end.first_delta.wait(), 60)
            await asyncio.gather(
                *(c.prompt(f"p{i}", f"task {i}: {c.name} asks") for i, c in enumerate(clients))
            )
            await clients[1].until(lambda f: len(_batches(f)) == 2, within_s=60)
            merged = _batches(clients[1].all)[1]
            assert {s["author"] for s in merged["sources"]} == {"ann", "bob", "cy"}
            for client in clients:
                await client.until(lambda f: _done(f, merged["batch_id"]), within_s=90)
                (done,) = (
                    f
                    for f in client.all
                    if f["type"] == "done" and f["batch_id"] == merged["batch_id"]
                )
                assert done["status"] == "success"
                said = "".join(
                    f["text"]
                    for f in client.all
                    if f["type"] == "output" and f["batch_id"] == merged["batch_id"]
                )
                assert "ECHO:" in said, "every client saw the merged turn's answer"
        sent = end.user_texts()[-1]
        assert all(f"task {i}" in sent for i in range(3)), "one turn carried all three"
    assert _states(tmp_path) == ["done"] * 4


@every_driver
async def test_cancel_mid_turn_then_the_next_turn_works(far_end: Any, tmp_path: Path) -> None:
    async with (
        _bot(far_end, tmp_path) as (end, config),
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        await alice.prompt("s", "SLOW please")
        batch = await alice.expect("batch")
        await asyncio.wait_for(end.first_delta.wait(), 60)
        await alice.send({"type": "command", "name": "cancel", "args": ""})
        assert (await alice.expect("command_result", name="cancel"))["ok"]
        done = await alice.expect("done", batch_id=batch["batch_id"], within_s=30)
        assert done["status"] == "interrupted"
        await alice.prompt("n", "next one")
        nxt = await alice.expect("done", within_s=60)
        assert nxt["status"] == "success"
        assert "next one" in end.user_texts()[-1]
        await alice.send({"type": "command", "name": "status", "args": ""})
        status = await alice.expect("command_result", name="status")
        assert "restarts: 0" in status["text"], "the interrupt stopped the turn, not the agent"


@every_driver
async def test_the_agent_killed_mid_turn_is_restarted_and_the_batch_rerun(
    far_end: Any, tmp_path: Path
) -> None:
    async with (
        _bot(far_end, tmp_path) as (end, config),
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        await alice.prompt("k", "SLOW to be killed")
        batch = await alice.expect("batch")
        await asyncio.wait_for(end.first_delta.wait(), 60)
        _kill_agent(bot, end.process_marker)
        rerun = await alice.expect("batch", batch_id=batch["batch_id"], within_s=60)
        assert rerun["attempt"] == 2
        done = await alice.expect("done", batch_id=batch["batch_id"], within_s=90)
        assert done["status"] == "success"
        assert sum("SLOW to be killed" in t for t in end.user_texts()) == 2
    assert _states(tmp_path) == ["done"]


@every_driver
async def test_a_200_kb_prompt_arrives_whole(far_end: Any, tmp_path: Path) -> None:
    big = "".join(f"line {n:05d} of the big prompt\n" for n in range(7000))[:200_000]
    assert len(big) == 200_000
    async with (
        _bot(far_end, tmp_path) as (end, config),
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        await alice.prompt("big", big)
        done = await alice.expect("done", within_s=120)
        assert done["status"] == "success", done
        assert big.strip() in end.user_texts()[-1], "the 200 kB prompt reached the model whole"


@every_driver
async def test_the_bot_killed_mid_batch_loses_nothing(far_end: Any, tmp_path: Path) -> None:
    async with _bot(far_end, tmp_path) as (end, config):
        async with (
            BotProcess(config, tmp_path) as bot,
            Client(bot.port, bot.invite, "alice") as alice,
        ):
            await alice.expect("welcome")
            await alice.prompt("a", "SLOW write the release notes")
            await alice.expect("batch")
            await asyncio.wait_for(end.first_delta.wait(), 60)
            await alice.prompt("b", "then tag the release")
            await alice.expect("queued", id="b")
            bot.kill()
            await bot.wait_exit()
        assert _states(tmp_path) == ["sent", "pending"]

        async with (
            BotProcess(config, tmp_path) as bot,
            Client(bot.port, bot.invite, "alice") as alice,
        ):
            await alice.expect("welcome")
            await alice.until(
                lambda frames: len({f["batch_id"] for f in frames if f["type"] == "done"}) == 2,
                within_s=120,
            )
        assert _states(tmp_path) == ["done", "done"]
        texts = end.user_texts()
        assert sum("release notes" in t for t in texts) == 2, "ran, then was re-run once"
        assert sum("tag the release" in t for t in texts) == 1


@pytest.mark.codex
@pytest.mark.skipif(not sandbox_support().is_available, reason="needs bubblewrap (.ci/run has it)")
async def test_an_approved_codex_command_cannot_read_concordias_files(tmp_path: Path) -> None:
    """Codex's own sandbox lets a command read the whole disk: the bubblewrap around it hides
    the state folder (invite tokens) and the config. Checked on what reached the model."""
    async with (
        _bot(far_ends.codex, tmp_path) as (end, config),
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.host_token, "host") as host,
    ):
        await host.expect("welcome")
        state = tmp_path / "state"
        assert any(state.iterdir()), "the bot keeps its database and tokens there"
        await host.prompt("x", f"TOOL_BASH ls -a {state}; cat {config} {state}/*; echo probed")
        approval = await host.expect("approval", within_s=60)
        await host.send(
            {"type": "approve", "approval_id": approval["approval_id"], "decision": "allow"}
        )
        done = await host.expect("done", within_s=60)
        assert done["status"] == "success"
        result = end.user_texts()[-1]
        assert "probed" in result, "the command ran and its output reached the model"
        sent = "\n".join(json.dumps(body) for body in end.bodies())
        for secret in (bot.host_token, bot.invite, "concordia.db", "collect_window_s"):
            assert secret not in sent
