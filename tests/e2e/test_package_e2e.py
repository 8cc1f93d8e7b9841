"""The wheel as users install it: built, put in a fresh virtualenv outside the checkout, run.

What the editable install of the checkout cannot show: that the migrations and every file
of the page are package data inside the wheel, and that `concordia` works from a directory
where the checkout's sources are not importable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import make_settings
from tests.e2e.harness import Client
from tests.fakes.anthropic_api import FakeAnthropic, claude_command, claude_env

pytestmark = [pytest.mark.claude, pytest.mark.packaging, pytest.mark.timeout(240)]

_REPO = Path(__file__).resolve().parents[2]
_PAGE = Path("adapters", "web", "page")
_STEP_TIMEOUT_S = 180.0  # one pip step; a cold pip cache downloads every dependency
_START_TIMEOUT_S = 30.0
_SHUTDOWN_TIMEOUT_S = 10.0  # run.shutdown_timeout_s of the smoke run
_NO_API = "http://127.0.0.1:9"  # the discard port: doctor must not need the API


@dataclass(frozen=True, slots=True)
class Installed:
    """A virtualenv holding only the wheel and its dependencies."""

    venv: Path
    site_packages: Path
    version: str

    @property
    def concordia(self) -> Path:
        return self.venv / "bin" / "concordia"

    def environ(self, home: Path) -> dict[str, str]:
        """The run's whole environment: no PYTHONPATH, and no PATH entry in the checkout,
        so nothing can import or run the checkout's copy."""
        kept = [
            entry
            for entry in os.environ.get("PATH", os.defpath).split(os.pathsep)
            if entry and not Path(entry).resolve().is_relative_to(_REPO)
        ]
        path = os.pathsep.join([str(self.venv / "bin"), *kept])
        return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8"}


def _pip_environ() -> dict[str, str]:
    """This environment (proxies, pip's index settings) without what would point the new
    virtualenv back at the checkout or at the developer's settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "CONCORDIA_")) and name != "VIRTUAL_ENV"
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _check(args: list[str | Path], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=_STEP_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _copy_sources(into: Path) -> None:
    """What the wheel is built from, read from pyproject.toml. setuptools writes build/ and
    *.egg-info next to the sources; a copy keeps that out of the checkout."""
    pyproject = tomllib.loads((_REPO / "pyproject.toml").read_text(encoding="utf-8"))
    tops = {name.split(".")[0] for name in pyproject["tool"]["setuptools"]["packages"]}
    into.mkdir()
    for name in ("pyproject.toml", pyproject["project"]["readme"]):
        shutil.copy2(_REPO / name, into / name)
    for top in sorted(tops):
        shutil.copytree(
            _REPO / top, into / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel (isolated build, as pipx and uv do), install it in a new virtualenv."""
    root = tmp_path_factory.mktemp("package")
    assert not root.resolve().is_relative_to(_REPO), "the virtualenv must be outside the checkout"
    env = _pip_environ()
    _copy_sources(root / "src")
    dist = root / "dist"
    _check(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, root / "src"],
        root,
        env,
    )
    [wheel] = dist.glob("concordia-*.whl")
    venv = root / "venv"
    _check([sys.executable, "-m", "venv", venv], root, env)
    _check([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], root, env)
    found = _check(
        [
            venv / "bin" / "python",
            "-c",
            "import importlib.metadata, sysconfig; "
            "print(sysconfig.get_paths()['purelib']); "
            "print(importlib.metadata.version('concordia'))",
        ],
        root,
        env,
    ).split()
    return Installed(venv=venv, site_packages=Path(found[0]), version=found[1])


def _files(folder: Path) -> set[str]:
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_the_wheel_holds_the_migrations_and_every_file_of_the_page(installed: Installed) -> None:
    site = installed.site_packages
    assert _files(site / _PAGE) == _files(_REPO / _PAGE), "pyproject's package-data globs"
    shipped = {p.name for p in (site / "migrations").glob("*.sql")}
    assert shipped == {p.name for p in (_REPO / "migrations").glob("*.sql")}
    assert shipped, "no migration at all"


def test_the_installed_code_is_imported_not_the_checkout(
    installed: Installed, tmp_path: Path
) -> None:
    out = _check(
        [
            installed.venv / "bin" / "python",
            "-c",
            "import adapters.web.http, bot.cli, migrations; "
            "print(bot.cli.__file__, migrations.__file__, adapters.web.http.PAGE_DIR)",
        ],
        tmp_path,
        installed.environ(tmp_path),
    )
    for where in out.split():
        assert Path(where).is_relative_to(installed.site_packages), out


def test_version_names_the_installed_version(installed: Installed, tmp_path: Path) -> None:
    out = _check([installed.concordia, "--version"], tmp_path, installed.environ(tmp_path))
    assert installed.version in out


def test_doctor_runs_from_outside_the_checkout(installed: Installed, tmp_path: Path) -> None:
    # Credentials are only looked at: no API is called, so no fake needs to serve.
    claude: dict[str, object] = {
        "command": claude_command(),
        "env": claude_env(tmp_path / "home", _NO_API),
    }
    make_settings(tmp_path, None, claude=claude)
    out = _check(
        [installed.concordia, "doctor", "--config", tmp_path / "config.toml"],
        tmp_path,
        installed.environ(tmp_path / "home"),
    )
    assert re.search(r"^✓ Claude [\d.]+: \S+/claude$", out, re.MULTILINE), out
    assert "✓ Claude has credentials" in out
    assert "everything needed is in place" in out


@dataclass(slots=True)
class _Run:
    proc: asyncio.subprocess.Process
    port: int
    invite: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
async def smoke_run(
    installed: Installed, fake_api: FakeAnthropic, tmp_path: Path
) -> AsyncIterator[_Run]:
    """`concordia run` of the installed wheel, started from a directory outside the checkout."""
    make_settings(tmp_path, fake_api, run={"shutdown_timeout_s": _SHUTDOWN_TIMEOUT_S})
    stderr = tmp_path / "run.log"
    with stderr.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            installed.concordia,
            "run",
            "--config",
            str(tmp_path / "config.toml"),
            cwd=tmp_path,
            env={**installed.environ(tmp_path / "home"), "PYTHONUNBUFFERED": "1"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    assert proc.stdout is not None
    links: dict[str, str] = {}
    drain: asyncio.Task[bytes] | None = None
    try:
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                while len(links) < 2:
                    line = (await proc.stdout.readline()).decode()
                    assert line, f"concordia run exited {await proc.wait()}:\n{stderr.read_text()}"
                    kind, _, link = line.strip().partition(": ")
                    if kind in ("invite", "host"):
                        links[kind] = link.strip()
        except TimeoutError:
            pytest.fail(f"no invite links within {_START_TIMEOUT_S} s:\n{stderr.read_text()}")
        # Nothing reads stdout from here on; a full pipe must not block the bot.
        drain = asyncio.create_task(proc.stdout.read())
        address, _, token = links["invite"].partition("/#")
        yield _Run(proc=proc, port=int(address.rsplit(":", 1)[1]), invite=token, stderr=stderr)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if drain is not None:
            await drain


async def test_run_serves_the_page_answers_and_exits_0_on_sigterm(
    smoke_run: _Run, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{smoke_run.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as page:
            assert page.status == 200
            assert await page.read() == (_REPO / _PAGE / "index.html").read_bytes()
        async with http.get(f"{base}/static/vendor/purify.min.js") as vendored:
            assert vendored.status == 200
            assert await vendored.read() == (_REPO / _PAGE / "vendor/purify.min.js").read_bytes()
        async with http.get(f"{base}/healthz") as health:
            assert health.status == 200

    async with Client(smoke_run.port, smoke_run.invite, "ops") as client:
        await client.expect("welcome")
        await client.prompt("p1", "say hello from the wheel")
        queued = await client.expect("queued", id="p1")
        done = await client.expect("done", within_s=60)
        assert done["status"] == "success", smoke_run.log()
    assert any("say hello from the wheel" in turn.user_text for turn in fake_api.turns)

    smoke_run.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(smoke_run.proc.wait(), _SHUTDOWN_TIMEOUT_S + 10)
    assert code == 0, smoke_run.log()

    # The run created the database from the migrations inside the wheel.
    latest = max(int(p.name[:4]) for p in (_REPO / "migrations").glob("*.sql"))
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "concordia.db")) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (latest,)
        state = db.execute("SELECT state FROM prompts WHERE id = ?", (queued["prompt_id"],))
        assert state.fetchone() == ("done",)
