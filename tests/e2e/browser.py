"""Real Chromium for the browser tests: installing it, one driver per page, and the few
things every test does with a page (join, send, wait, read the console, take a picture).

Everything here blocks (Selenium speaks HTTP to chromedriver): async tests call it through
`asyncio.to_thread`, so the event loop keeps reading the bot's output meanwhile. Waits are
`WebDriverWait`s on a condition with a deadline, never sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "DESKTOP",
    "PHONE",
    "Browsers",
    "browsers_in",
    "console_problems",
    "ensure_chromium",
    "open_page",
    "screenshot",
    "send",
    "text_of",
    "wait_for",
]

T = TypeVar("T")

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMEDRIVER: Final = Path("/usr/bin/chromedriver")
PHONE: Final = (390, 844)
DESKTOP: Final = (1280, 900)
WAIT_S: Final = 30.0
_POLL_S = 0.05  # WebDriverWait's re-check interval (its default, 0.5 s, slows every wait)
_INSTALL_TIMEOUT_S = 600
_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)
_REPO = Path(__file__).resolve().parents[2]
# Read at import: the autouse `clean_environ` fixture removes CONCORDIA_* during each test.
_OUTPUT_DIR = Path(os.environ.get("CONCORDIA_TEST_OUTPUT") or _REPO / ".test-output")
_PRIVATE_USE = range(0xE000, 0xF900)  # send_keys reads these as keys (Keys.ENTER is U+E007)


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver if either is missing.

    Fails the run (never skips) when they cannot be installed: a browser suite that skips
    itself where the browser is missing proves nothing.
    """
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    command = "apt-get update -qq && apt-get install -y -qq chromium chromium-driver"
    if os.geteuid() != 0:
        pytest.fail(
            f"{CHROMIUM} or {CHROMEDRIVER} is missing and this is not root: "
            f"run `sudo sh -c '{command}'` (Debian's chromium and chromium-driver)",
            pytrace=False,
        )
    try:
        done = subprocess.run(
            ["sh", "-c", command],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"installing chromium took over {_INSTALL_TIMEOUT_S} s", pytrace=False)
    if done.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            f"the browser tests need {CHROMIUM} and {CHROMEDRIVER}; `{command}` failed "
            f"(exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}",
            pytrace=False,
        )


class Browsers:
    """Makes Chromium drivers, each in a fresh profile, and quits every one it made."""

    def __init__(self, profiles: Path):
        self._profiles = profiles
        self._made: list[Chrome] = []

    def open(self, size: tuple[int, int] = DESKTOP) -> Chrome:
        """A new headless Chromium with its console log kept (see `console_problems`)."""
        options = Options()
        options.binary_location = str(CHROMIUM)
        for argument in _ARGUMENTS:
            options.add_argument(argument)
        profile = tempfile.mkdtemp(prefix="profile-", dir=self._profiles)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={size[0]},{size[1]}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        self._made.append(driver)
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        return driver

    def quit_all(self) -> None:
        """Quit every driver made; idempotent, and a failing quit does not keep the others."""
        made, self._made = self._made, []
        errors = []
        for driver in made:
            try:
                driver.quit()
            except Exception as exc:  # noqa: BLE001 - quit the rest, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@contextmanager
def browsers_in(profiles: Path) -> Iterator[Browsers]:
    """`Browsers` whose drivers all quit when the block ends, failed or not."""
    browsers = Browsers(profiles)
    try:
        yield browsers
    finally:
        browsers.quit_all()


def wait_for(
    driver: WebDriver,
    condition: Callable[[WebDriver], T],
    timeout: float = WAIT_S,
    what: str = "",
) -> T:
    """The first truthy value of ``condition(driver)``; TimeoutException naming ``what``."""
    wait = WebDriverWait(driver, timeout, poll_frequency=_POLL_S)
    return wait.until(condition, message=f"{what or condition!r} within {timeout:g} s")


def _is_typeable(text: str) -> bool:
    """Whether send_keys can type ``text`` as is: printable characters of the BMP only
    (chromedriver refuses the others; typing a line break would press Enter, which sends)."""
    return all(c.isprintable() and ord(c) < 0x10000 and ord(c) not in _PRIVATE_USE for c in text)


def _put_text(driver: WebDriver, selector: str, text: str) -> None:
    """Type ``text`` into a field as a person would, or set its value where typing cannot
    carry it (line breaks, controls, format characters, lone surrogates)."""
    field = driver.find_element(By.CSS_SELECTOR, selector)
    field.clear()
    if _is_typeable(text):
        field.send_keys(text)
    else:
        # As JSON text parsed in the page: a lone surrogate survives only that way.
        driver.execute_script(
            "arguments[0].value = JSON.parse(arguments[1]);", field, json.dumps(text)
        )
    field.click()


def open_page(driver: WebDriver, link: str, name: str) -> None:
    """Open an invite link, join as ``name`` and wait until the page is connected."""
    driver.get(link)
    wait_for(
        driver,
        lambda d: d.find_element(By.ID, "name").is_displayed(),
        what="the join form",
    )
    _put_text(driver, "#name", name)
    driver.find_element(By.ID, "join-btn").click()
    wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#conn[data-state=connected]"),
        what=f"{name!r} connected",
    )


def send(driver: WebDriver, text: str) -> None:
    """Put ``text`` in the composer and press Enter (which sends)."""
    _put_text(driver, "#prompt", text)
    driver.find_element(By.ID, "prompt").send_keys(Keys.ENTER)


def text_of(driver: WebDriver, selector: str) -> str:
    """The ``textContent`` of the first element matching ``selector`` ('' when none)."""
    return str(
        driver.execute_script(
            "const n = document.querySelector(arguments[0]); return n ? n.textContent : '';",
            selector,
        )
    )


def console_problems(driver: Chrome) -> list[str]:
    """Every SEVERE console entry and every Content-Security-Policy message so far.

    Chromedriver hands each entry out once, so they are kept on the driver and each call
    returns all of them since the page opened.
    """
    seen: list[dict[str, Any]] = driver.__dict__.setdefault("_concordia_console", [])
    get_log: Callable[[str], list[dict[str, Any]]] = driver.get_log  # unannotated in selenium
    seen.extend(get_log("browser"))
    return [
        f"{entry.get('level')} {entry.get('source', '')}: {entry.get('message')}"
        for entry in seen
        if entry.get("level") == "SEVERE" or "Content Security Policy" in entry.get("message", "")
    ]


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save the viewport as ``<test output>/<name>.png`` and return its path.

    The folder is ``$CONCORDIA_TEST_OUTPUT`` (as it was when the tests started), else
    ``.test-output/`` in the repository.
    """
    _OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = _OUTPUT_DIR / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"Chromium did not write the screenshot {path}")
    return path
