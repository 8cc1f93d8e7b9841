"""`concordia run` as a service (issue #16): metrics that match what clients saw, readiness
asked by `concordia doctor --running`, JSON logs, and a graceful stop mid-turn after which
the batch runs again once and nothing is lost or doubled. The real CLI and the fake API;
WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _prompt_states(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "state" / "concordia.db") as db:
        return [str(s) for (s,) in db.execute("SELECT state FROM prompts ORDER BY id")]


def _sample(metrics: str, name: str) -> float:
    """The value of the one sample ``name`` (labels included, as exposed)."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_match_what_clients_saw_and_doctor_asks_the_running_bot(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    port = _free_port()
    metrics = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    make_settings(tmp_path, fake_api, metrics=metrics)
    config = tmp_path / "config.toml"
    async with (
        BotProcess(config, tmp_path, args=("--log-format", "json")) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
        Client(bot.port, bot.invite, "bob") as bob,
    ):
        await alice.expect("welcome")
        await bob.expect("welcome")
        await alice.prompt("a1", "summarise the readme")
        await alice.expect("done")
        await bob.prompt("b1", "\x00")  # refused: a NUL byte
        await bob.expect("rejected")
        await bob.prompt("b2", "and the changelog")
        await bob.expect("done")

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as reply,
        ):
            assert reply.status == 200
            text = await reply.text()
        received = 'concordia_prompts_received_total{party="default",platform="websocket"}'
        assert _sample(text, received) == 3
        rejected = 'concordia_prompts_rejected_total{party="default",reason="unsafe"}'
        assert _sample(text, rejected) == 1
        dones = [f for f in alice.all if f["type"] == "done" and f["status"] == "success"]
        success = 'concordia_batches_total{outcome="success",party="default"}'
        assert _sample(text, success) == len(dones) == 2
        assert _sample(text, "concordia_connected_clients") == 2
        assert _sample(text, 'concordia_agent_up{party="default"}') == 1

        doctor = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bot.cli", "doctor", "--running", "--config", str(config)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "the running bot is ready" in doctor.stdout

    logged = [line for line in bot.log if line.strip()]
    assert logged, "the bot logged"
    for line in logged:
        entry = json.loads(line)  # every line one JSON object
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    assert bot.invite not in "".join(bot.log), "tokens stay redacted"


async def test_sigterm_mid_turn_exits_0_and_the_batch_runs_again_once(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    make_settings(tmp_path, fake_api, run={"shutdown_timeout_s": 10.0})
    config = tmp_path / "config.toml"
    bot = BotProcess(config, tmp_path)
    await bot.start()
    try:
        async with Client(bot.port, bot.invite, "alice") as alice:
            await alice.expect("welcome")
            await alice.prompt("a1", "SLOW write the release notes")
            await asyncio.wait_for(fake_api.first_delta.wait(), 30)
            await alice.prompt("a2", "then tag the release")
            await alice.expect("queued", id="a2")
            assert bot.proc is not None
            bot.proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(bot.wait_exit(), 15)
        assert code == 0, "".join(bot.log[-20:])
        assert "interrupted by the stop; the next start runs it again" in "".join(bot.log)
        assert sorted(_prompt_states(tmp_path)) == ["pending", "sent"], "nothing lost"
    finally:
        await bot.stop()

    again = BotProcess(config, tmp_path)
    async with again, Client(again.port, again.invite, "alice") as alice:
        await alice.expect("welcome")

        def both_done(frames: list[dict[str, Any]]) -> bool:
            return _prompt_states(tmp_path) == ["done", "done"]

        await alice.until(both_done, within_s=90)
    turns = [t.user_text for t in fake_api.turns]
    assert sum("release notes" in t for t in turns) == 2, "sent, then re-run once"
    assert "re-sent" in [t for t in turns if "release notes" in t][1]
    assert sum("tag the release" in t for t in turns) == 1, "the queued one, once"
