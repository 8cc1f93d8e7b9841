"""Fixtures of the end-to-end suite: real Chromium drivers for the browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.browser import Browsers, browsers_in, ensure_chromium


@pytest.fixture(scope="session")
def chromium_profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chromium is installed (or the run fails saying why); its profiles go under here."""
    ensure_chromium()
    return tmp_path_factory.mktemp("chromium")


@pytest.fixture
def browsers(chromium_profiles: Path) -> Iterator[Browsers]:
    """``browsers.open(size)`` gives a fresh headless Chromium; all quit after the test."""
    with browsers_in(chromium_profiles) as made:
        yield made
