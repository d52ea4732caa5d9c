"""The shared JSON vectors (tests/vectors/*.json) run against the Python core.

The browser's copy of the rules runs the same files; ``tests/vectors/README.md``
is the format both runners follow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loopsync.document import check_name, check_part, differing_users, merge_at_sync
from loopsync.sync import ClientSync, PresenceTable

VECTORS = Path(__file__).parent / "vectors"


def _load(name: str) -> dict[str, Any]:
    with open(VECTORS / name, encoding="utf-8") as file:
        data: dict[str, Any] = json.load(file)
    return data


def _code(problem: Any) -> str | None:
    return None if problem is None else problem.code


NAMES = _load("names.json")["cases"]
PARTS = _load("parts.json")["cases"]
MERGE = _load("merge.json")
SCENARIOS = _load("client.json")["scenarios"]
PRESENCE = _load("presence.json")["scenarios"]


@pytest.mark.parametrize("case", NAMES, ids=[f"{c['kind']}={c['value']!r}" for c in NAMES])
def test_check_name(case: dict[str, Any]) -> None:
    """check_name gives the vector's error code, or None for a valid name."""
    assert _code(check_name(case["kind"], case["value"])) == case["expected"]


@pytest.mark.parametrize("case", PARTS, ids=[str(i) for i in range(len(PARTS))])
def test_check_part(case: dict[str, Any]) -> None:
    """check_part gives the vector's error code, or None for a valid part."""
    assert _code(check_part(case["part"], case["step_count"])) == case["expected"]


@pytest.mark.parametrize("case", MERGE["merge_at_sync"], ids=[c["name"] for c in MERGE["merge_at_sync"]])
def test_merge_at_sync(case: dict[str, Any]) -> None:
    """merge_at_sync takes others' parts from Shared Data and keeps the own part."""
    assert merge_at_sync(case["local"], case["shared"], case["me"]) == case["expected"]


@pytest.mark.parametrize("case", MERGE["differing_users"], ids=[c["name"] for c in MERGE["differing_users"]])
def test_differing_users(case: dict[str, Any]) -> None:
    """differing_users lists the other users whose pending part differs, sorted."""
    assert differing_users(case["playing"], case["pending"], case["me"]) == case["expected"]


def _call(sync: ClientSync, step: dict[str, Any]) -> Any:
    action = step["do"]
    if action == "message":
        return sync.on_message(step["message"])
    if action == "toggle":
        return sync.toggle(step["step"])
    if action == "set_step":
        return sync.set_step(step["step"], step["value"])
    if action == "set_sound":
        return sync.set_sound(step["sound"])
    if action == "play":
        return sync.play()
    if action == "pause":
        return sync.pause()
    if action == "sync":
        return sync.sync()
    if action == "disconnect":
        return sync.on_disconnect()
    raise AssertionError(f"unknown action in vector: {action!r}")


def _check(sync: ClientSync, expected: dict[str, Any], where: str) -> None:
    known = {"loop_parts", "pending_users", "dirty", "confirmed_seq"}
    assert set(expected) <= known, f"{where}: unknown expectation {sorted(set(expected) - known)}"
    if "loop_parts" in expected:
        assert sync.loop_parts == expected["loop_parts"], f"{where}: loop_parts"
    if "pending_users" in expected:
        assert sync.pending_users() == expected["pending_users"], f"{where}: pending_users"
    if "dirty" in expected:
        assert sync.dirty() is expected["dirty"], f"{where}: dirty"
    if "confirmed_seq" in expected:
        assert sync.confirmed_seq == expected["confirmed_seq"], f"{where}: confirmed_seq"


def _state(sync: ClientSync) -> str:
    return json.dumps([sync.loop_parts, sync.own, sync.confirmed, sync.confirmed_seq, sync.next_seq, sorted(sync.in_flight.items())], sort_keys=True)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_client_scenario(scenario: dict[str, Any]) -> None:
    """A scripted ClientSync scenario sends exactly the expected messages and reaches each checkpoint."""
    sync = ClientSync(scenario["me"], scenario.get("sound", "kick"), scenario.get("steps", 16))
    for index, step in enumerate(scenario["script"]):
        where = f"step {index}: {json.dumps(step)[:120]}"
        if "do" in step:
            if step.get("expect_raises"):
                before = _state(sync)
                with pytest.raises(ValueError):
                    _call(sync, step)
                assert _state(sync) == before, f"{where}: raised but changed the state"
            else:
                sent = _call(sync, step) or []
                assert sent == step.get("expect_sent", []), f"{where}: sent"
        if "expect" in step:
            _check(sync, step["expect"], where)


def test_vectors_cover_every_action() -> None:
    """The client scenarios use every action the format defines, so neither runner can skip one."""
    used = {step["do"] for scenario in SCENARIOS for step in scenario["script"] if "do" in step}
    assert used == {"message", "toggle", "set_step", "set_sound", "play", "pause", "sync", "disconnect"}


@pytest.mark.parametrize("scenario", PRESENCE, ids=[s["name"] for s in PRESENCE])
def test_presence_scenario(scenario: dict[str, Any]) -> None:
    """A scripted PresenceTable scenario: full tables replace, deltas upsert and remove by id, entries group by user."""
    table = PresenceTable()
    for index, step in enumerate(scenario["script"]):
        where = f"step {index}: {json.dumps(step)[:120]}"
        if "message" in step:
            assert table.on_message(step["message"]) is step["expect_changed"], f"{where}: changed"
        if step.get("disconnect"):
            table.on_disconnect()
        if "expect" in step:
            assert table.own_id == step["expect"]["own_id"], f"{where}: own_id"
            assert table.by_user() == step["expect"]["by_user"], f"{where}: by_user"
