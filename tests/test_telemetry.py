"""bot.telemetry and adapters.web.ops (issue #16): what a party does is counted in the app's
own registry, labels carry no person, and the operator's listener guards what it serves.

The registry is read with `CollectorRegistry.get_sample_value`; the listener is the real
aiohttp server, asked over HTTP by aiohttp's client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from adapters.memory import MemoryPlatform
from adapters.web.ops import OpsServer
from bot import ConcordiaError
from bot.config import MetricsSettings
from bot.model import Role, TurnStatus
from bot.ports import AdapterError
from bot.telemetry import CountedSink, Telemetry
from tests.conftest import make_settings
from tests.rigs import Rig, open_rig

pytestmark = [pytest.mark.timeout(60)]


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_partys_prompts_batches_and_decisions_are_counted(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, None, shell={"enabled": True, "allowed_users": ["memory:host"]}
    )
    async with open_rig(settings) as rig:
        party, registry = rig.party.name, rig.app.telemetry.registry
        assert await rig.chat.join("alice", rig.invites.prompter)
        assert await rig.chat.join("host", rig.invites.host)
        await rig.chat.push_prompt("alice", "hello")
        await rig.chat.push_prompt("eve", "let me in")  # not a member: refused
        assert (await rig.events.done()).status is TurnStatus.SUCCESS
        await rig.chat.push_prompt("alice", "TOOL_BASH echo hi")
        approval = await rig.events.approval()
        assert (await rig.chat.command("host", "approve", f"{approval.approval_id} deny")).ok
        await rig.events.done(after=rig.events.seen.index(approval))
        shell = await rig.chat.command("host", "shell", "true")
        assert shell.ok, shell.text

        assert (
            _value(registry, "concordia_prompts_received_total", party=party, platform="memory")
            == 3
        )
        assert (
            _value(registry, "concordia_prompts_rejected_total", party=party, reason="not_member")
            == 1
        )
        assert _value(registry, "concordia_batches_total", party=party, outcome="success") == 2
        assert _value(registry, "concordia_merges_total", party=party, merger="local") == 2
        assert _value(registry, "concordia_turn_duration_seconds_count", party=party) == 2
        assert _value(registry, "concordia_approvals_total", party=party, outcome="denied") == 1
        assert _value(registry, "concordia_approval_wait_seconds_count", party=party) == 1
        assert _value(registry, "concordia_shell_runs_total", party=party, outcome="exited") == 1
        assert _value(registry, "concordia_cost_usd_total", party=party) > 0
        assert _value(registry, "concordia_agent_up", party=party) == 1
        assert _value(registry, "concordia_queue_depth", party=party) == 0
        assert _value(registry, "concordia_build_info", version=_version(registry)) == 1

        people = {"alice", "host", "eve", "memory:alice"}
        labels = {v for m in registry.collect() for s in m.samples for v in s.labels.values()}
        assert not labels & people, "no person in a label"


def _version(registry: CollectorRegistry) -> str:
    (info,) = [m for m in registry.collect() if m.name == "concordia_build"]
    return info.samples[0].labels["version"]


async def test_a_counted_sink_counts_calls_errors_and_429s_and_keeps_its_controls() -> None:
    telemetry = Telemetry()
    platform = MemoryPlatform()
    sink = CountedSink(platform, telemetry.chat_call("memory"))
    ref = await sink.post("t1", "one")
    await sink.edit(ref, "one, edited")
    platform.fail_next(1, retry_after=0.5)
    with pytest.raises(AdapterError):
        await sink.post("t1", "refused")
    r = telemetry.registry
    assert _value(r, "concordia_chat_calls_total", platform="memory", kind="post") == 1
    assert _value(r, "concordia_chat_calls_total", platform="memory", kind="edit") == 1
    assert _value(r, "concordia_platform_errors_total", platform="memory", kind="post") == 1
    assert _value(r, "concordia_rate_limited_total", platform="memory") == 1
    assert not hasattr(sink, "post_approval"), "no controls the platform does not have"


@contextlib.asynccontextmanager
async def _listener(
    rig: Rig, listen: str = "127.0.0.1:0", token: str = ""
) -> AsyncIterator[tuple[OpsServer, str]]:
    server = OpsServer(
        MetricsSettings(enabled=True, listen=listen),
        rig.app.telemetry.registry,
        rig.app.readiness,
        token=token,
    )
    await server.start()
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def test_the_listener_serves_metrics_health_and_readiness(tmp_path: Path) -> None:
    async with (
        open_rig(make_settings(tmp_path, None)) as rig,
        _listener(rig) as (_, base),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{base}/metrics") as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain; version=")
            text = await reply.text()
        assert "concordia_prompts_received_total" in text or "concordia_build_info" in text
        assert f'concordia_agent_up{{party="{rig.party.name}"}} 1.0' in text
        async with http.get(f"{base}/healthz") as reply:
            assert (reply.status, await reply.json()) == (200, {"status": "ok"})
        async with http.get(f"{base}/readyz") as reply:
            assert reply.status == 200
            assert await reply.json() == {"status": "ready", "problems": []}
        rig.app.adapters.append(_Offline())  # a chat whose gateway dropped: not ready
        async with http.get(f"{base}/readyz") as reply:
            assert reply.status == 503
            body = await reply.json()
        assert body == {
            "status": "not ready",
            "problems": ["the gateway transport is not connected"],
        }


class _Offline:
    """A chat transport whose connection to its platform is down (`ConnectedAdapter`)."""

    name = "gateway"

    async def is_connected(self) -> bool:
        return False


async def test_a_non_loopback_listener_needs_a_bearer_token(tmp_path: Path) -> None:
    async with open_rig(make_settings(tmp_path, None)) as rig:
        with pytest.raises(ConcordiaError, match="METRICS_BEARER_TOKEN"):
            async with _listener(rig, listen="0.0.0.0:0"):
                pass
        token = "m" * 32
        async with (
            _listener(rig, listen="0.0.0.0:0", token=token) as (_, base),
            aiohttp.ClientSession() as http,
        ):
            for given in (None, "Bearer wrong", f"Basic {token}"):
                headers = {"Authorization": given} if given else {}
                async with http.get(f"{base}/metrics", headers=headers) as reply:
                    assert reply.status == 401, given
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{base}/metrics", headers=headers) as reply:
                assert reply.status == 200


async def test_a_stopping_party_refuses_prompts_saying_so(tmp_path: Path) -> None:
    async with open_rig(make_settings(tmp_path, None)) as rig:
        assert await rig.chat.join("alice", rig.invites.prompter)
        assert await rig.chat.join("ann", await rig.book.mint_extra(Role.APPROVER))
        await rig.party.shut_down()
        refused = await rig.chat.push_prompt("alice", "one more")
        assert getattr(refused, "reason", "").startswith("Concordia is restarting")
