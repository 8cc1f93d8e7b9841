"""The labelled merge bursts are well formed, and bench.merge scores and dumps them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.merge import (
    KINDS,
    Burst,
    Outcome,
    dump,
    load_bursts,
    merge_all,
    parse_burst,
    score,
)
from bot.merge_local import LocalMerger

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "merge.jsonl"
CLI_TIMEOUT_S = 50

KEEP: dict[str, list[str]] = {"1": ["retries"], "2": ["retries", "fetch_rates"], "3": ["retries"]}
GOOD: dict[str, object] = {
    "id": "b01",
    "kind": "conflict",
    "prompts": [
        {"id": 1, "author": "alice", "text": "add retries to fetch_rates"},
        {"id": 2, "author": "bob", "text": "don't add retries to fetch_rates"},
        {"id": 3, "author": "carol", "text": "add retries to fetch_rates please"},
        {"id": 4, "author": "dave", "text": "+1"},
    ],
    "same_intent": [[1, 3]],
    "must_keep": KEEP,
    "conflicts": [[1, 2], [2, 3]],
    "noise": [4],
}


def test_data_file_is_valid_and_covers_every_kind() -> None:
    bursts = load_bursts(DATA)
    assert len(bursts) >= 90
    counts = Counter(b.kind for b in bursts)
    short = {kind: counts[kind] for kind in KINDS if counts[kind] < 8}
    assert not short, f"kinds with fewer than 8 bursts: {short}"
    assert [b.burst_id for b in bursts] == [f"b{n:02d}" for n in range(1, len(bursts) + 1)]


def test_the_good_burst_parses() -> None:
    burst = parse_burst(GOOD)
    assert burst.must_keep == {1: ("retries",), 2: ("retries", "fetch_rates"), 3: ("retries",)}
    assert burst.same_pairs == {frozenset((1, 3))}
    assert burst.noise == {4}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, r"unknown keys \['extra'\]"),
        ({"kind": "dupe"}, r"burst b01: kind 'dupe' is not one of"),
        ({"id": "burst1"}, r'id must look like "b01"'),
        ({"same_intent": [[1, 7]]}, r"names ids \[7\] that are not prompts of the burst"),
        ({"same_intent": [[1]]}, r"at least two ids"),
        ({"same_intent": [[1, 3], [3, 2]]}, r"ids \[3\] are in two same_intent lists"),
        ({"must_keep": {"1": ["retries"], "3": ["retries"]}}, r"prompts \[2\] are not noise"),
        ({"must_keep": {**KEEP, "4": ["+1"]}}, r"must_keep has noise id 4"),
        ({"must_keep": {**KEEP, "2": ["jitter"]}}, r"'jitter' is not in prompt 2"),
        ({"must_keep": {**KEEP, "2": ["to"]}}, r"holds the stopword 'to'"),
        ({"must_keep": {**KEEP, "2": []}}, r"empty must_keep list is only for"),
        ({"conflicts": [[1, 4]]}, r"conflict \[1, 4\] names a noise id"),
        ({"conflicts": [[1, 3]]}, r"conflict \[1, 3\] is also labelled same_intent"),
        ({"conflicts": [[1, 2, 3]]}, r"a conflict must be a pair"),
        ({"conflicts": []}, r"a conflict burst needs at least one conflicts pair"),
        ({"noise": [9]}, r"noise names ids \[9\]"),
    ],
)
def test_parse_burst_rejects_malformed_bursts(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_burst({**GOOD, **change})


def test_parse_burst_rejects_prompts_not_counted_from_one() -> None:
    prompts = [{"id": 0, "author": "alice", "text": "fix test_login"}]
    with pytest.raises(ValueError, match=r"prompt ids must count 1, 2, … in order"):
        parse_burst({**GOOD, "kind": "distinct", "prompts": prompts})


def test_load_bursts_names_the_line_of_a_bad_burst(tmp_path: Path) -> None:
    path = tmp_path / "bursts.jsonl"
    good = json.dumps(GOOD)
    path.write_text(f"{good}\n\n{json.dumps({**GOOD, 'id': 'b02', 'kind': 'dupe'})}\n")
    with pytest.raises(ValueError, match=r"bursts\.jsonl:3: burst b02: kind 'dupe'"):
        load_bursts(path)
    path.write_text(f"{good}\n{{not json\n")
    with pytest.raises(ValueError, match=r"bursts\.jsonl:2: "):
        load_bursts(path)
    path.write_text(f"{good}\n{good}\n")
    with pytest.raises(
        ValueError, match=r"bursts\.jsonl:2: burst id b01 is already used on line 1"
    ):
        load_bursts(path)


def _outcome(burst: Burst, groups: list[list[int]], dropped: list[int], text: str) -> Outcome:
    return Outcome(burst, tuple(map(tuple, groups)), tuple(dropped), text, elapsed_s=0.0)


def test_score_counts_hits_and_misses() -> None:
    burst = parse_burst(GOOD)
    # 1 and 3 merged, 2 kept apart, the reaction dropped, every word kept.
    right = score([_outcome(burst, [[1, 3], [2]], [4], "add retries to fetch_rates / don't")])
    assert (right.accounted.hits, right.accounted.total) == (1, 1)
    assert (right.same_intent.hits, right.same_intent.total) == (1, 1)
    assert (right.false_merges.hits, right.false_merges.total) == (0, 1)
    assert (right.conflicts.hits, right.conflicts.total) == (2, 2)
    assert (right.noise_dropped.hits, right.noise_dropped.total) == (1, 1)
    # Everything in one group, fetch_rates lost, the reaction missing and id 9 invented.
    wrong = score([_outcome(burst, [[1, 2, 3, 9]], [], "add retries")])
    assert wrong.accounted.hits == 0
    assert wrong.same_intent.hits == 1
    assert (wrong.false_merges.hits, wrong.false_merges.total) == (5, 6)
    assert (wrong.must_keep.hits, wrong.must_keep.total) == (3, 4)
    assert (wrong.conflicts.hits, wrong.conflicts.total) == (0, 2)
    assert wrong.noise_dropped.hits == 0


async def test_local_merger_accounts_for_every_source() -> None:
    bursts = load_bursts(DATA)
    outcomes = await merge_all(bursts, LocalMerger())
    scores = score(outcomes)
    assert (scores.accounted.hits, scores.accounted.total) == (len(bursts), len(bursts))
    assert not [o.burst.burst_id for o in outcomes if o.error]


def test_cli_prints_the_table_and_dumps_one_line_per_burst(tmp_path: Path) -> None:
    out = tmp_path / "dump.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bench.merge", "--data", str(DATA), "--dump", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "sources accounted (must be 100 %)    100.0 %" in result.stdout
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    bursts = load_bursts(DATA)
    assert [line["id"] for line in lines] == [b.burst_id for b in bursts]
    for line, burst in zip(lines, bursts, strict=True):
        assert set(line) == {"id", "groups", "instruction"}
        assert isinstance(line["instruction"], str)
        assert line["instruction"].strip()
        grouped = sorted(i for group in line["groups"] for i in group)
        assert set(grouped) <= {p.prompt_id for p in burst.prompts}


def test_dump_writes_failed_merges_with_no_groups(tmp_path: Path) -> None:
    burst = parse_burst(GOOD)
    failed = Outcome(burst, (), (), "", elapsed_s=0.0, error="boom")
    out = tmp_path / "dump.jsonl"
    dump([failed], out)
    assert json.loads(out.read_text(encoding="utf-8")) == {
        "id": "b01",
        "groups": [],
        "instruction": "",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.jsonl"], "missing.jsonl"),
        (["--data", str(DATA), "--merger", "gemini"], "no Gemini key is set"),
    ],
)
def test_cli_exits_2_when_it_cannot_run(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.merge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
