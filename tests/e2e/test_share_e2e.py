"""`concordia run` sharing the party: a tunnel command's link announced, joined through,
restarted when it dies and stopped with the bot; ngrok without a token says what to do.

The tunnel provider's cloud cannot be reached here: `tests/fakes/tunnel.py` stands in for
it (a loopback forwarder that prints its URL, as cloudflared or bore print theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic
from tests.waits import until

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

_REPO = str(Path(__file__).resolve().parents[2])
_SHARED = "concordia: the party is shared at "


async def _shared_links(bot: BotProcess, count: int) -> list[str]:
    """The first ``count`` public links the bot announced, waiting for them."""

    def links() -> list[str] | None:
        found = [line[len(_SHARED) :].strip() for line in bot.stdout if line.startswith(_SHARED)]
        return found if len(found) >= count else None

    found = await until(links, bot.printed, within_s=30, what=f"{count} shared link(s)")
    assert found is not None
    return found


def _stand_in(bot: BotProcess) -> psutil.Process:
    assert bot.proc is not None
    tunnels = []
    for child in psutil.Process(bot.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # claude's short-lived helpers come and go
            if "tests.fakes.tunnel" in " ".join(child.cmdline()):
                tunnels.append(child)
    assert len(tunnels) == 1, tunnels
    return tunnels[0]


async def _joins_through(link: str, token: str, name: str) -> None:
    port = int(link.rsplit(":", 1)[1])
    async with Client(port, token, name) as client:
        assert (await client.expect("welcome"))["name"] == name
        await client.prompt("p1", f"hello from {name}")
        await client.expect("queued", id="p1")
        assert (await client.expect("done"))["status"] == "success"


async def test_the_share_command_link_is_announced_restarted_and_stopped_with_the_bot(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    make_settings(
        tmp_path,
        fake_api,
        share={
            "command": f"{sys.executable} -m tests.fakes.tunnel --to {{port}}",
            "url_pattern": r"http://127\.0\.0\.1:\d+",
        },
    )
    env = {"PYTHONPATH": _REPO}
    async with BotProcess(tmp_path / "config.toml", tmp_path, env=env) as bot:
        [first] = await _shared_links(bot, 1)
        assert first != f"http://127.0.0.1:{bot.port}"  # the tunnel's address, not ours
        assert f"invite: {first}/#{bot.invite}" in "".join(bot.stdout)
        await _joins_through(first, bot.invite, "alice")
        # `concordia invite` in another terminal shows the running bot's public link.
        invite = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "invite",
            "--config",
            str(tmp_path / "config.toml"),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
        )
        shown, _ = await asyncio.wait_for(invite.communicate(), 30)
        assert f"invite: {first}/#{bot.invite}" in shown.decode()

        stand_in = _stand_in(bot)
        os.killpg(stand_in.pid, signal.SIGKILL)  # the tunnel dies, whole group
        _, second = await _shared_links(bot, 2)
        await bot.said("the share command exited")
        await _joins_through(second, bot.invite, "bob")
        restarted = _stand_in(bot)
        assert restarted.pid != stand_in.pid

        assert bot.proc is not None
        bot.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bot.proc.wait(), 30) == 0
        gone, alive = await asyncio.to_thread(psutil.wait_procs, [restarted], 10)
        assert not alive, "the stand-in tunnel outlived the bot"
        assert gone


async def test_share_with_ngrok_and_no_token_says_what_to_do_and_serves_locally(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """The real ngrok SDK is installed (concordia[share]); no authtoken is set."""
    make_settings(tmp_path, fake_api)
    async with BotProcess(tmp_path / "config.toml", tmp_path, args=("--share",)) as bot:
        said = await bot.said("NGROK_AUTHTOKEN")
        assert "serving locally" in said
        assert "Traceback" not in "".join(bot.log)
        await _joins_through(f"http://127.0.0.1:{bot.port}", bot.invite, "alice")


async def test_share_with_ngrok_offline_says_so_without_the_token(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """The real ngrok SDK with a made-up token: no network here, so the session fails."""
    make_settings(tmp_path, fake_api)
    token = "2fakeNgrokAuthtoken_0123456789abcdefghij"
    async with BotProcess(
        tmp_path / "config.toml", tmp_path, env={"NGROK_AUTHTOKEN": token}, args=("--share",)
    ) as bot:
        said = await bot.said("ngrok could not open")
        assert "serving locally" in said
        await _joins_through(f"http://127.0.0.1:{bot.port}", bot.invite, "alice")
        assert token not in "".join(bot.log) + "".join(bot.stdout)


async def test_doctor_names_what_keeps_teammates_out(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("not a certificate\n", encoding="utf-8")
    (tmp_path / "tls" / "key.pem").write_text("not a key\n", encoding="utf-8")
    make_settings(
        tmp_path,
        fake_api,
        websocket={
            "tls_cert_file": str(tmp_path / "tls" / "cert.pem"),
            "tls_key_file": str(tmp_path / "tls" / "key.pem"),
        },
        share={"provider": "ngrok"},
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "doctor",
        "--config",
        str(tmp_path / "config.toml"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    said = out.decode()
    assert proc.returncode == 1, said
    assert "do not make a certificate and its key" in said
    assert "NGROK_AUTHTOKEN is empty" in said
