"""The hostile-input corpus itself: well-formed, covering every category on every transport."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hostile_corpus import (
    CATEGORIES,
    CONTROL_CHARS,
    CORPUS_DIR,
    TRANSPORTS,
    CorpusError,
    fill,
    load,
    load_all,
    placeholders,
)

# Every {{name}} the suite (tests/e2e/test_hostile.py) provides on some transport.
KNOWN_PLACEHOLDERS = frozenset(
    {
        "invite", "host_token", "invite_upper", "invite_truncated", "invite_flipped",
        "invite_sha256", "default_invite", "old_invite", "rotated_invite", "api_key",
        "env_secret", "discord_token", "slack_bot_token", "slack_app_token", "bob_slack",
        "bob_discord", "role_discord", "channel_slack", "channel_discord", "n",
        "state_dir", "state_parent", "config_file", "credentials_file", "host_token_reversed",
        "invite_spaced", "invite_base64",
    }
)  # fmt: skip


def test_every_line_parses_and_ids_are_unique() -> None:
    cases = load_all()
    files = sorted(p.stem for p in CORPUS_DIR.glob("*.jsonl"))
    assert files == sorted(CATEGORIES), "one file per category, no stray file"
    lines = sum(
        1 for p in CORPUS_DIR.glob("*.jsonl") for line in p.read_text().splitlines() if line
    )
    assert len(cases) == lines


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_category_has_cases_on_every_transport(category: str, transport: str) -> None:
    assert [c for c in load(category) if transport in c.transports]


def test_clean_texts_hold_no_control_character_and_differ_from_their_input() -> None:
    sanitized = [c for c in load_all() if c.expect == "sanitized"]
    assert len(sanitized) >= 30
    for case in sanitized:
        assert CONTROL_CHARS.search(case["clean"]) is None, case.id
        assert case["clean"] == case["clean"].strip(), f"{case.id}: edge whitespace is ambiguous"
        hostile_elsewhere = case.id.endswith("kept") or case.get("author_name")
        assert case.text() != case["clean"] or hostile_elsewhere, case.id


def test_placeholders_are_known_and_filled_strictly() -> None:
    for case in load_all():
        for value in _strings(dict(case.fields)):
            unknown = set(placeholders(value)) - KNOWN_PLACEHOLDERS
            assert not unknown, f"{case.id}: unknown placeholders {unknown}"
    with pytest.raises(KeyError, match="invite"):
        fill("say {{invite}}", {})
    assert fill("a {{x}} b", {"x": "1"}) == "a 1 b"


def test_a_malformed_line_is_reported_with_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = {"id": "x", "category": "control", "expect": "exploded", "text": "t"}
    (tmp_path / "control.jsonl").write_text(json.dumps(bad) + "\n")
    monkeypatch.setattr("tests.hostile_corpus.CORPUS_DIR", tmp_path)
    with pytest.raises(CorpusError, match=r"control\.jsonl:1: expect 'exploded'"):
        load("control")


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
