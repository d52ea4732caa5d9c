"""A short soak (bench/soak.py) in the test suite: cuts and a killed server lose nothing; the checker counts a loss."""

from __future__ import annotations

import sys
from pathlib import Path

from loopsync.client import Client

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # appended: never shadows a module

import soak  # noqa: E402  (a script in bench/)


async def test_short_soak_loses_nothing_through_cuts_and_a_killed_server(tmp_path: Path) -> None:
    """8 clients in 2 rooms for 8 s, a cut about every 0.7 s, the server SIGKILLed midway: nothing lost, all copies agree."""
    config = soak.Config(clients=8, rooms=2, seconds=8.0, restarts=1, cut_gap=(0.4, 1.0), action_gap=(0.1, 0.5), bpm=(240.0, 300.0), seed=7)
    result = await soak.soak(config, tmp_path / "data")
    assert result.ok, soak.report(result, config)
    assert result.lost == 0
    assert result.restarts == 1 and result.restart_signals == ["SIGKILL"]
    assert result.cuts >= 3
    assert result.disconnects >= result.cuts + config.clients  # every client lost its connection at the restart
    assert result.acknowledged >= 20
    assert result.local_agrees == result.own_agrees == result.presence_agrees == config.clients


def test_checker_counts_an_acknowledged_update_the_server_does_not_hold_as_lost() -> None:
    """The soak's checker is not blind: an ack above the server's seq is a loss, a later server seq a replacement."""
    part_1 = {"sound": "kick", "steps": [1] + [0] * 15}
    part_2 = {"sound": "kick", "steps": [1, 1] + [0] * 14}
    members = []
    for user in ("alice", "bob"):
        member = soak.Member("room0", user)
        member.client = Client("ws://127.0.0.1:9/ws", "room0", user)
        member.sent = {1: part_1, 2: part_2}
        member.acked = {1: part_1, 2: part_2}
        member.client.sync.own["steps"][:] = part_2["steps"]
        members.append(member)
    # The server rolled bob back to seq 1 (his ack of seq 2 is lost); alice is intact.
    store = {"room0": {"alice": (2, part_2), "bob": (1, part_1)}}
    snapshots = {"room0": {"doc": {"parts": {"alice": part_2, "bob": part_1}}}}
    result = soak.Result(clients=2, rooms=1, seconds=0.0)
    soak.check(members, snapshots, store, result)
    assert (result.lost, result.kept, result.superseded) == (1, 2, 1)
    assert result.store_agrees_with_snapshot
    assert result.own_agrees == 1 and result.local_agrees == 0
    assert not result.ok
