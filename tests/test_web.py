"""The built-in transport, served by the real `App` (a `FakeAgent` behind it): the page and
its headers, `/healthz`, the Origin check, catch-up after a reconnect, TLS, the join
throttle by forwarded address and by token attempt, Claude's questions as frames and
answers, and images in a prompt frame."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import make_mocked_request
from PIL import Image as Pillow
from rich.console import Console
from websockets.asyncio.client import connect

from adapters import wire
from adapters.terminal import EXIT_NOT_JOINED, EXIT_OK, run_join
from adapters.web.adapter import event_frame, prompt_images
from adapters.web.http import PAGE_DIR, SECURITY_HEADERS, local_base, origin_allowed
from bot.config import WebSocketSettings
from bot.model import (
    Answerers,
    Author,
    BatchStarted,
    Image,
    OutputText,
    QuestionAsked,
    QuestionClosed,
    QuestionKind,
    QuestionOption,
)
from tests.conftest import make_settings
from tests.fakes.agent import FakeAgent
from tests.payloads.images import PNG_1PX, PNG_1PX_B64
from tests.rigs import Rig, open_rig

pytestmark = pytest.mark.timeout(60)

JAVASCRIPT_TYPES = ("text/javascript", "application/javascript")


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, /, *, sections: dict[str, dict[str, object]] | None = None, **websocket: object
) -> AsyncIterator[Rig]:
    settings = make_settings(
        tmp_path, None, websocket={"host": "127.0.0.1", "port": 0, **websocket}, **(sections or {})
    )
    async with open_rig(settings) as opened:
        yield opened


def base(r: Rig) -> str:
    return f"http://127.0.0.1:{r.app.websocket_port}"


async def join(
    url: str,
    token: str,
    name: str,
    *,
    origin: str | None = None,
    catch_up: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[Any, dict[str, Any]]:
    headers = {"Origin": origin} if origin else {}
    ws = await connect(url, additional_headers=headers, ssl=ssl_context, max_size=None)
    await ws.send(wire.format_frame(wire.Join(token=token, name=name, catch_up=catch_up)))
    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return ws, first


async def test_the_page_and_its_files_carry_the_security_headers(tmp_path: Path) -> None:
    async with rig(tmp_path) as r, aiohttp.ClientSession() as http:
        for path in ("/", "/static/app.js", "/static/style.css", "/static/vendor/purify.min.js"):
            async with http.get(base(r) + path) as answer:
                assert answer.status == 200, path
                for name, value in SECURITY_HEADERS.items():
                    assert answer.headers[name] == value, (path, name)
                assert answer.headers["Server"] == "concordia"
        # The browser refuses a module script served with any other type (app.js imports them).
        for module in sorted(PAGE_DIR.glob("*.js")):
            async with http.get(f"{base(r)}/static/{module.name}") as answer:
                assert answer.status == 200, module.name
                assert answer.content_type in JAVASCRIPT_TYPES, (module.name, answer.content_type)
        async with http.get(base(r) + "/") as page:
            html = await page.text()
            assert page.headers["Cache-Control"] == "no-store"
        assert '<script type="module" src="/static/app.js"></script>' in html
        assert "<script>" not in html  # no inline script: the CSP would refuse it anyway
        async with http.get(base(r) + "/static/nothing-here.js") as missing:
            assert missing.status == 404
            assert "Content-Security-Policy" in missing.headers
        async with http.get(base(r) + "/static/../http.py") as escaped:
            assert escaped.status in (403, 404)


async def test_healthz_answers_while_serving(tmp_path: Path) -> None:
    async with (
        rig(tmp_path) as r,
        aiohttp.ClientSession() as http,
        http.get(base(r) + "/healthz") as answer,
    ):
        assert answer.status == 200
        assert await answer.json() == {"status": "ok"}


async def test_a_page_from_another_site_cannot_open_the_websocket(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        url = f"ws://127.0.0.1:{r.app.websocket_port}/"
        with pytest.raises(Exception, match="403"):
            await join(url, r.invites.prompter, "eve", origin="https://evil.example")
        with pytest.raises(Exception, match="403"):
            await join(url, r.invites.prompter, "eve", origin="null")
        own = f"http://127.0.0.1:{r.app.websocket_port}"
        ws, first = await join(url, r.invites.prompter, "ann", origin=own)
        assert first["type"] == "welcome"
        await ws.close()
        ws, first = await join(url, r.invites.prompter, "cli")  # a program sends no Origin
        assert first["type"] == "welcome"
        await ws.close()


async def test_a_late_joiner_with_catch_up_gets_the_running_batch_so_far(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        url = f"ws://127.0.0.1:{r.app.websocket_port}/"
        ann, _ = await join(url, r.invites.prompter, "ann")
        await ann.send(wire.format_frame(wire.Prompt(id="p1", text="SLOW please")))
        await r.events.until(lambda e: isinstance(e, OutputText))
        started = next(e for e in r.events.seen if isinstance(e, BatchStarted))
        bob, welcome = await join(url, r.invites.prompter, "bob", catch_up=True)
        assert welcome["type"] == "welcome"
        batch = json.loads(await asyncio.wait_for(bob.recv(), 10))
        assert (batch["type"], batch["batch_id"]) == ("batch", started.batch.batch_id)
        so_far = json.loads(await asyncio.wait_for(bob.recv(), 10))
        assert so_far["type"] == "output"
        assert so_far["text"].startswith("ECHO: SLOW")
        # What bob saw so far and what streams after it make the whole output, once each.
        seen = so_far["text"]
        while (frame := json.loads(await asyncio.wait_for(bob.recv(), 30)))["type"] != "done":
            if frame["type"] == "output":
                seen += frame["text"]
        whole = "".join(
            e.text
            for e in r.events.seen
            if isinstance(e, OutputText) and e.batch_id == started.batch.batch_id
        )
        assert seen == whole
        # Without catch_up, a joiner sees only what comes next.
        for ws in (ann, bob):
            await ws.close()


async def flood(url: str, count: int, headers: dict[str, str] | None = None) -> list[str]:
    """``count`` joins with wrong tokens at once; the error codes they got, once some
    refusals are being held back (the first `too_many_attempts` says so)."""
    codes: list[str] = []
    cut_short = asyncio.Event()

    async def bad(i: int) -> None:
        async with connect(url, additional_headers=headers or {}) as ws:
            await ws.send(wire.format_frame(wire.Join(token=f"wrong-{i}", name=f"eve{i}")))
            codes.append(json.loads(await asyncio.wait_for(ws.recv(), 30))["code"])
            if codes[-1] == "too_many_attempts":
                cut_short.set()

    tasks = [asyncio.create_task(bad(i)) for i in range(count)]
    try:
        async with asyncio.timeout(20):
            await cut_short.wait()
    finally:
        flooding.append(tasks)
    return codes


flooding: list[list[asyncio.Task[None]]] = []


async def settle() -> None:
    """Wait for the flood's held refusals to be answered (up to the 10 s cap)."""
    while flooding:
        await asyncio.gather(*flooding.pop())


async def test_a_flood_of_bad_tokens_does_not_hold_back_a_good_one(tmp_path: Path) -> None:
    """Measured before: 300 bad joins from one address, then a valid one waited 10.0 s."""
    async with rig(tmp_path) as r:
        url = f"ws://127.0.0.1:{r.app.websocket_port}/"
        codes = await flood(url, 300)
        # Refusals are being held back for seconds now; the team's token goes straight in.
        async with asyncio.timeout(3):
            ws, first = await join(url, r.invites.prompter, "ann")
        assert first["type"] == "welcome"
        await ws.close()
        await settle()
        assert set(codes) == {"bad_token", "too_many_attempts"}


async def test_the_throttle_counts_the_address_the_tunnel_forwards(tmp_path: Path) -> None:
    """The share command here is a no-op "tunnel" that announces the tunnel's own loopback
    port, so the test plays the tunnel's part: it adds X-Forwarded-For itself."""
    announce = (
        "import sys, time; print('http://127.0.0.1:' + sys.argv[1], flush=True); time.sleep(600)"
    )
    settings = make_settings(
        tmp_path,
        None,
        websocket={"host": "127.0.0.1", "port": 0},
        share={
            "command": f'{sys.executable} -c "{announce}" {{port}}',
            "url_pattern": r"http://127\.0\.0\.1:\d+",
        },
    )
    async with open_rig(settings) as r:
        moved = asyncio.Event()
        r.app.address.watch(lambda _: moved.set())
        if not r.app.address.base.endswith(f":{r.app.websocket_port}"):
            moved.set()  # announced already
        async with asyncio.timeout(20):
            await moved.wait()
        tunnel = r.app.address.base.replace("http://", "ws://") + "/"
        assert not tunnel.endswith(f":{r.app.websocket_port}/")  # the tunnel's own port
        await flood(tunnel, 60, {"X-Forwarded-For": "10.9.8.7, 203.0.113.9"})
        # Another teammate behind the same tunnel is not counted with the attacker...
        other = {"X-Forwarded-For": "198.51.100.7"}
        async with connect(tunnel, additional_headers=other) as ws:
            await ws.send(wire.format_frame(wire.Join(token="typo", name="bob")))
            assert json.loads(await asyncio.wait_for(ws.recv(), 3))["code"] == "bad_token"
        # ...while on the direct port the header is the client's own word, and ignored.
        direct = f"ws://127.0.0.1:{r.app.websocket_port}/"
        await flood(direct, 60, {"X-Forwarded-For": "192.0.2.1"})
        async with connect(direct, additional_headers={"X-Forwarded-For": "192.0.2.2"}) as ws:
            await ws.send(wire.format_frame(wire.Join(token="typo", name="bob")))
            assert json.loads(await asyncio.wait_for(ws.recv(), 3))["code"] == "too_many_attempts"
        await settle()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[trustme.CA, Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path / "tls"
    folder.mkdir()
    cert.private_key_pem.write_to_path(folder / "key.pem")
    cert.cert_chain_pems[0].write_to_path(folder / "cert.pem")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    return ca, folder / "cert.pem", folder / "key.pem", folder / "ca.pem"


async def test_concordia_join_over_tls_with_the_ca_and_refused_without(
    tmp_path: Path, tls_files: tuple[trustme.CA, Path, Path, Path]
) -> None:
    _, cert, key, ca_pem = tls_files
    async with rig(tmp_path, tls_cert_file=str(cert), tls_key_file=str(key)) as r:
        link = r.app.address.link(r.invites.prompter)
        assert link.startswith(f"https://127.0.0.1:{r.app.websocket_port}/#")
        console = Console(file=io.StringIO(), force_terminal=False, width=400)
        joined = await run_join(
            link, "ada", lines=_no_lines(), console=console, interactive=False, cafile=ca_pem
        )
        assert joined == EXIT_OK, _printed(console)
        refused_console = Console(file=io.StringIO(), force_terminal=False, width=400)
        refused = await run_join(
            link, "ada", lines=_no_lines(), console=refused_console, interactive=False
        )
        assert refused == EXIT_NOT_JOINED
        said = _printed(refused_console)
        assert "certificate was refused" in said
        assert "--cafile" in said
        assert r.invites.prompter not in said
        # The page is served over TLS as well, with the same headers.
        context = ssl.create_default_context(cafile=str(ca_pem))
        async with (
            aiohttp.ClientSession() as http,
            http.get(link.split("#")[0], ssl=context) as page,
        ):
            assert page.status == 200
            assert "Content-Security-Policy" in page.headers


async def _no_lines() -> AsyncIterator[str]:
    return
    yield


def _printed(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


@pytest.mark.parametrize(
    ("websocket", "expected"),
    [
        ({}, "http://127.0.0.1:8765"),
        ({"host": "::1"}, "http://[::1]:8765"),
        ({"host": "0.0.0.0", "allow_plaintext": True}, f"http://{socket.getfqdn()}:8765"),
        ({"host": "::", "allow_plaintext": True}, f"http://{socket.getfqdn()}:8765"),
        ({"tls_cert_file": "c.pem", "tls_key_file": "k.pem"}, "https://127.0.0.1:8765"),
        (
            {"host": "0.0.0.0", "allow_plaintext": True, "public_url": "https://cc.example.com/"},
            "https://cc.example.com",
        ),
    ],
)
def test_the_link_never_names_a_wildcard_address(
    websocket: dict[str, object], expected: str
) -> None:
    base = local_base(WebSocketSettings.model_validate(websocket), 8765)
    assert base == expected
    assert "0.0.0.0" not in base
    assert "[::]" not in base


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "127.0.0.1:8765", True),  # a program, not a page
        ("http://127.0.0.1:8765", "127.0.0.1:8765", True),
        ("https://abc.ngrok.app", "abc.ngrok.app", True),
        ("https://abc.ngrok.app", "127.0.0.1:41000", True),  # a tunnel that rewrites Host
        ("https://cc.example.com:443", "cc.example.com", True),
        ("http://127.0.0.1:9999", "127.0.0.1:8765", False),  # another port is another site
        ("https://evil.example", "127.0.0.1:8765", False),
        ("null", "127.0.0.1:8765", False),
        ("file://", "127.0.0.1:8765", False),
    ],
)
def test_only_our_own_page_may_open_the_websocket(
    origin: str | None, host: str, allowed: bool
) -> None:
    headers = {"Host": host, **({"Origin": origin} if origin else {})}
    request = make_mocked_request("GET", "/", headers=headers)
    assert origin_allowed(request, {"abc.ngrok.app"}) is allowed


# -- Claude's questions and images over the socket ------------------------------------------------


ASKED = QuestionAsked(
    question_id=3,
    batch_id=2,
    kind=QuestionKind.PLAN,
    header="Plan",
    text="Claude's plan is above.",
    options=(QuestionOption("Approve", "go"), QuestionOption("Reject")),
    multi_select=False,
    answerers=Answerers.APPROVERS,
    mention=(Author("websocket", "ann", "ann", is_verified=False),),
    timeout_s=90.0,
)


def test_questions_become_their_frames() -> None:
    assert event_frame(ASKED) == wire.Question(
        question_id=3,
        batch_id=2,
        kind="plan",
        header="Plan",
        text="Claude's plan is above.",
        options=(
            wire.QuestionOption(label="Approve", description="go"),
            wire.QuestionOption(label="Reject", description=""),
        ),
        multi_select=False,
        answerers="approvers",
        timeout_s=90.0,
    )
    closed = QuestionClosed(3, 2, answered=False, text="nobody answered within 90 s")
    assert event_frame(closed) == wire.QuestionDone(
        question_id=3, batch_id=2, answered=False, text="nobody answered within 90 s"
    )


def _image(data: bytes, media_type: str = "image/png", name: str = "dot.png") -> wire.PromptImage:
    return wire.PromptImage(name=name, media_type=media_type, data=data)


def _made(kind: str) -> bytes:
    """A real 2x2 image in Pillow's format ``kind`` (the server opens what it is sent)."""
    out = io.BytesIO()
    Pillow.new("RGB", (2, 2), (200, 30, 30)).save(out, format=kind)
    return out.getvalue()


def test_prompt_images_takes_what_its_bytes_say_it_is() -> None:
    gif, webp = _made("GIF"), _made("WEBP")
    mislabelled = (_image(PNG_1PX), _image(gif, "image/gif", "a\x1b[31m\n  b.gif"), _image(webp))

    refused = prompt_images(mislabelled, max_image_bytes=1024, max_frame_bytes=4096)

    assert refused == "dot.png is not a image/png image: its bytes are image/webp"
    labelled = (*mislabelled[:2], _image(webp, "image/webp", ""))
    taken = prompt_images(labelled, max_image_bytes=1024, max_frame_bytes=4096)
    assert taken == (
        Image("dot.png", "image/png", PNG_1PX),
        Image("a b.gif", "image/gif", gif),  # one plain line: no escape, no line break
        Image("image 3", "image/webp", webp),  # no name: its place
    )


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        pytest.param(
            _image(PNG_1PX + b"\0" * 1024),
            "dot.png (1,092 bytes) is larger than the 1,024 bytes an image may have "
            "(party.max_image_bytes); and the whole prompt frame, its images in base64, must "
            "fit in 4,096 bytes (websocket.max_frame_bytes)",
            id="too-large",
        ),
        pytest.param(_image(b""), "dot.png is empty", id="empty"),
        pytest.param(
            _image(b"BM" + b"\0" * 30, "image/bmp"),
            "dot.png: 'image/bmp' is not an image type Claude reads "
            "(image/png, image/jpeg, image/gif, image/webp)",
            id="unknown-type",
        ),
        pytest.param(
            _image(_made("JPEG")),
            "dot.png is not a image/png image: its bytes are image/jpeg",
            id="another-type-than-claimed",
        ),
        pytest.param(
            _image(b"<svg onload=alert(1)>", "image/gif"),
            "dot.png is not an image Claude reads (PNG, JPEG, GIF or WebP)",
            id="no-image-at-all",
        ),
        pytest.param(
            _image(PNG_1PX[:40]),
            "dot.png is not an image Claude reads (PNG, JPEG, GIF or WebP)",
            id="a-png-cut-short",
        ),
    ],
)
def test_prompt_images_refuses_the_prompt_for_one_bad_image(
    image: wire.PromptImage, reason: str
) -> None:
    assert prompt_images((_image(PNG_1PX), image), max_image_bytes=1024, max_frame_bytes=4096) == (
        reason
    )


async def expect(ws: Any, kind: str, within_s: float = 10.0, **fields: Any) -> dict[str, Any]:
    """The next frame of ``kind`` with ``fields``; the frames before it are dropped."""
    async with asyncio.timeout(within_s):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                return dict(frame)


async def output_until_done(ws: Any, within_s: float = 30.0) -> tuple[str, dict[str, Any]]:
    """The output text up to the next done frame, and that frame."""
    said = ""
    async with asyncio.timeout(within_s):
        while (frame := json.loads(await ws.recv()))["type"] != "done":
            said += frame["text"] if frame["type"] == "output" else ""
    return said, frame


def ws_url(r: Rig) -> str:
    return f"ws://127.0.0.1:{r.app.websocket_port}/"


async def test_a_question_is_answered_over_the_socket_first_answer_wins(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert isinstance(r.api, FakeAgent)
        ann, _ = await join(ws_url(r), r.invites.prompter, "ann")
        bob, _ = await join(ws_url(r), r.invites.prompter, "bob")
        await ann.send(wire.format_frame(wire.Prompt(id="p1", text="TOOL_ASK Which database?")))
        asked = await expect(ann, "question")
        assert asked == {
            "type": "question",
            "question_id": asked["question_id"],
            "batch_id": asked["batch_id"],
            "kind": "choice",
            "header": "Choice",
            "text": "Which database?",
            "options": [
                {"label": "SQLite", "description": "one file"},
                {"label": "Postgres", "description": "a server"},
            ],
            "multi_select": False,
            "answerers": "authors",
            "timeout_s": 60.0,  # questions.timeout_s 0: as long as the turn may run
        }
        assert (await expect(bob, "question"))["question_id"] == asked["question_id"]
        # A late joiner is shown the question still waiting, right after its welcome.
        cy, _ = await join(ws_url(r), r.invites.host, "cy")
        assert json.loads(await asyncio.wait_for(cy.recv(), 10)) == asked

        answer = wire.Answer(question_id=asked["question_id"], text="2")
        await bob.send(wire.format_frame(answer))  # not an author of this batch
        refused = await expect(bob, "command_result", name="answer")
        assert not refused["ok"]
        assert "only the authors of this batch, approvers and the host" in refused["text"]
        await ann.send('{"type": "answer", "question_id": "one", "text": "2"}')
        assert (await expect(ann, "error"))["code"] == "malformed"
        await ann.send(wire.format_frame(answer))
        taken = await expect(ann, "command_result", name="answer")
        assert taken["ok"]
        assert taken["text"] == f"question {asked['question_id']}: ann answered: Postgres"
        for ws in (ann, bob, cy):
            closed = await expect(ws, "question_done")
            assert closed == {
                "type": "question_done",
                "question_id": asked["question_id"],
                "batch_id": asked["batch_id"],
                "answered": True,
                "text": "ann answered: Postgres",
            }
        await cy.send(wire.format_frame(wire.Answer(question_id=asked["question_id"], text="1")))
        late = await expect(cy, "command_result", name="answer")
        assert (late["ok"], late["text"]) == (
            False,
            f"question {asked['question_id']} is not waiting",
        )
        said, done = await output_until_done(ann)
        assert said.endswith('TOOL RESULT: {"Which database?": "Postgres"}')
        assert (done["batch_id"], done["status"]) == (asked["batch_id"], "success")
        for ws in (ann, bob, cy):
            await ws.close()


async def test_the_welcome_gives_the_image_limits_and_images_reach_the_agent(
    tmp_path: Path,
) -> None:
    sections: dict[str, dict[str, object]] = {"party": {"max_image_bytes": 1024}}
    async with rig(tmp_path, sections=sections, max_frame_bytes=8192) as r:
        assert isinstance(r.api, FakeAgent)
        ann, welcome = await join(ws_url(r), r.invites.prompter, "ann")
        assert (welcome["max_image_bytes"], welcome["max_frame_bytes"]) == (1024, 8192)

        def prompt(client_id: str, *images: dict[str, object]) -> str:
            frame = {"type": "prompt", "id": client_id, "text": "what is it?", "images": images}
            return json.dumps(frame)

        dot: dict[str, object] = {"name": "dot.png", "media_type": "image/png", "data": PNG_1PX_B64}
        big = base64.b64encode(PNG_1PX + b"\0" * 1000).decode()
        await ann.send(prompt("jpeg", dot | {"media_type": "image/jpeg"}))
        assert (await expect(ann, "rejected", id="jpeg"))["reason"] == (
            "dot.png is not a image/jpeg image: its bytes are image/png"
        )
        await ann.send(prompt("big", dot, dot | {"name": "big.png", "data": big}))
        reason = (await expect(ann, "rejected", id="big"))["reason"]
        assert "big.png (1,068 bytes) is larger than the 1,024 bytes" in reason
        assert "party.max_image_bytes" in reason
        assert "8,192 bytes (websocket.max_frame_bytes)" in reason
        await ann.send(prompt("b64", dot | {"data": "not base64!"}))
        error = await expect(ann, "error")
        assert (error["code"], error["id"]) == ("malformed", "b64")
        assert "images[0].data" in error["message"]
        assert r.api.turns == []  # none of them reached Claude

        await ann.send(prompt("ok", dot, dot | {"name": "two.png"}))
        assert (await expect(ann, "queued", id="ok"))["duplicate"] is False
        assert (await expect(ann, "done"))["status"] == "success"
        (turn,) = r.api.turns
        assert turn.images == (
            Image("dot.png", "image/png", PNG_1PX),
            Image("two.png", "image/png", PNG_1PX),
        )
        assert "1. dot.png from ann; 2. two.png from ann" in turn.user_text
        await ann.close()
