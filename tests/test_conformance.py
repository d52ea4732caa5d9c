"""The conformance kit (src/loopsync/conformance.py and its scenarios) against our own server, and the kit's own parts.

Every scenario runs against ``loopsync serve`` as a subprocess on SQLite
(the scenarios that restart the server restart it), and must pass.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from loopsync import conformance
from loopsync.cli import main
from loopsync.conformance import Scenario, ScenarioError, load_scenario, load_scenarios, match, run_scenario, transcript
from serve_process import TIME_UNIT, ServeProcess

SCENARIOS = load_scenarios()
TIMEOUT_SECONDS = 2 * TIME_UNIT



@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One ``loopsync serve`` subprocess on SQLite for the module (each scenario plays in a room of its own)."""
    process = ServeProcess(tmp_path_factory.mktemp("conformance") / "data").start()
    yield process
    process.kill()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_scenario_passes_against_our_server(served: ServeProcess, scenario: Scenario) -> None:
    """Each conformance scenario passes against loopsync serve (SQLite), restarts included."""

    async def restart() -> None:
        await asyncio.to_thread(served.restart)

    verdict = await run_scenario(served.ws_url, scenario, restart=restart, timeout_seconds=TIMEOUT_SECONDS)
    assert verdict.verdict == "pass", f"step {verdict.step}: {verdict.reason}"


def test_every_scenario_file_loads_and_the_kit_covers_the_protocol() -> None:
    """The kit's files load, and together they provoke every error code and close code a client can provoke."""
    assert len(SCENARIOS) >= 20
    text = json.dumps([scenario.steps for scenario in SCENARIOS])
    for code in ("bad_json", "bad_message", "unknown_type", "bad_version", "bad_name", "not_joined", "already_joined",
                 "bad_part", "forbidden", "stale_seq", "bad_seq"):
        assert f'"code": "{code}"' in text, code
    for close in (1007, 1008, 1009):
        assert f'"close": {close}' in text, close
    assert any("restart" in scenario.needs for scenario in SCENARIOS)
    assert '"fragments"' in text and '"text_base64"' in text


# -- the command ------------------------------------------------------------------------


def test_cli_passes_a_scenario_and_exits_0(served: ServeProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """loopsync conformance URL --only NAME prints the verdict and exits 0 when it passes."""
    assert main(["conformance", served.ws_url, "--only", "hello_snapshot", "--only", "forbidden"]) == 0
    out = capsys.readouterr().out
    assert "PASS     hello_snapshot" in out and "PASS     forbidden" in out
    assert "2 of 2 scenarios passed, 0 failed." in out


def test_cli_json_reports_each_verdict_and_a_summary(served: ServeProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object per scenario and a summary; a scenario that needs a restart without a command is not run."""
    code = main(["conformance", served.ws_url, "--json", "--only", "bad_part", "--only", "durability_across_restart"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [(line["name"], line["verdict"]) for line in lines[:2]] == [("bad_part", "pass"), ("durability_across_restart", "not run")]
    assert lines[2] == {"summary": True, "passed": 1, "failed": 0, "not_run": 1}


def test_cli_failure_names_the_step_and_exits_1(served: ServeProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server that answers otherwise than a scenario says fails it: exit 1, the step and what differed."""
    wrong = {"name": "wrong", "about": "expects an ack that never comes", "steps": [
        {"send": "alice", "frame": {"type": "hello", "v": 1, "room": "$room", "user": "alice"}},
        {"expect": "alice", "frame": {"type": "snapshot", "revision": 1}},
    ]}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    assert main(["conformance", served.ws_url, "--scenarios", str(tmp_path), "--timeout", str(TIMEOUT_SECONDS)]) == 1
    out = capsys.readouterr().out
    assert "FAIL     wrong at step 2:" in out and "revision: expected 1, got 0" in out


@pytest.mark.parametrize("args, words", [
    ([], "WebSocket URL"),
    (["http://127.0.0.1:1/ws"], "WebSocket URL"),
    (["ws://127.0.0.1:1/ws", "--only", "nope"], "no scenario named 'nope'"),
    (["ws://127.0.0.1:1/ws", "--timeout", "0"], "timeout"),
    (["--transcript", "nope"], "no scenario named 'nope'"),
])
def test_cli_usage_errors_exit_2(args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Usage errors exit 2 with a sentence saying what to give."""
    assert main(["conformance", *args]) == 2
    assert words in capsys.readouterr().err


def test_cli_restart_command_restarts_the_server_between_steps(tmp_path: Path) -> None:
    """--restart-command runs a shell command mid-scenario and waits for the server to come back on the same URL."""
    process = ServeProcess(tmp_path / "data").start()
    assert process.process is not None
    pid_file = tmp_path / "pid"
    pid_file.write_text(str(process.process.pid))
    serve = " ".join(process.command())
    # Stop the running server (a bounded wait: until it is gone or a zombie of this test), start it again in the background.
    command = (f"pid=$(cat {pid_file}); kill -TERM $pid; "
               f"for i in $(seq 400); do ps -o stat= -p $pid 2>/dev/null | grep -qv Z || break; sleep 0.05; done; "
               f"{serve} >{tmp_path / 'restarted.log'} 2>&1 & echo $! > {pid_file}")
    try:
        result = subprocess.run([sys.executable, "-m", "loopsync", "conformance", process.ws_url, "--only", "durability_across_restart",
                                 "--restart-command", command, "--timeout", str(TIMEOUT_SECONDS)],
                                capture_output=True, text=True, timeout=60 * TIME_UNIT)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "PASS     durability_across_restart" in result.stdout
    finally:
        subprocess.run(["kill", "-KILL", pid_file.read_text().strip()], capture_output=True)
        process.kill()


def test_cli_lists_and_transcribes(capsys: pytest.CaptureFixture[str]) -> None:
    """--list names every scenario; --transcript prints the example exchange as the protocol page shows it."""
    assert main(["conformance", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{scenario.name}: " in listed for scenario in SCENARIOS)
    assert main(["conformance", "--transcript", "example_two_users"]) == 0
    text = capsys.readouterr().out
    assert 'alice> {"type":"hello","v":1,"room":"demo","user":"alice","playing":false,"bpm":120}' in text
    assert 'alice< {"type":"snapshot","v":1,"you":"alice","id":"1","revision":0,"seq":0,"doc":{"room":"demo","steps":16,"parts":{}}}' in text
    assert 'bob  < {"type":"error","code":"forbidden","message":"you are \'bob\' and may not write the part of \'alice\'","seq":1}' in text


def test_transcript_shows_example_values_and_repeats() -> None:
    """A transcript puts example values in place of wildcards and shows a repeat once."""
    scenario = SCENARIOS[[s.name for s in SCENARIOS].index("part_removal_at_256_parts")]
    text = transcript(scenario)
    assert "(repeated for ${i} = 1 to 255:)" in text
    assert '"user":"u${i}"' in text


# -- patterns ---------------------------------------------------------------------------

PATTERN_CASES = [
    ("literal object, extra fields allowed", {"type": "ack", "seq": 1}, {"type": "ack", "seq": 1, "revision": 2}, True),
    ("missing field", {"type": "ack", "seq": 1}, {"type": "ack"}, False),
    ("numbers by value", {"bpm": 120}, {"bpm": 120.0}, True),
    ("true is not 1", {"playing": True}, {"playing": 1}, False),
    ("null is null", {"bpm": None}, {"bpm": None}, True),
    ("absent", {"seq": "$absent"}, {"type": "error"}, True),
    ("absent but present", {"seq": "$absent"}, {"seq": None}, False),
    ("any", {"message": "$any"}, {"message": [1]}, True),
    ("int refuses a float", {"seq": "$int"}, {"seq": 1.0}, False),
    ("number takes a float", {"bpm": "$number"}, {"bpm": 96.5}, True),
    ("string with example text", {"message": {"$string": "example"}}, {"message": "other words"}, True),
    ("string refuses a number", {"message": "$string"}, {"message": 3}, False),
    ("bind then equal", [{"id": "$=x"}, {"id": "$x"}], [{"id": "7"}, {"id": "7"}], True),
    ("bind then unequal", [{"id": "$=x"}, {"id": "$x"}], [{"id": "7"}, {"id": "8"}], False),
    ("relative", [{"revision": "$=r"}, {"revision": "$r+1"}], [{"revision": 4}, {"revision": 5}], True),
    ("relative off by one", [{"revision": "$=r"}, {"revision": "$r+1"}], [{"revision": 4}, {"revision": 6}], False),
    ("unordered", {"$unordered": [{"user": "a"}, {"user": "b"}]}, [{"user": "b"}, {"user": "a"}], True),
    ("unordered length", {"$unordered": [{"user": "a"}]}, [{"user": "b"}, {"user": "a"}], False),
    ("unordered with bindings", {"$unordered": [{"id": "$=a", "user": "a"}, {"id": "$=b", "user": "b"}]},
     [{"id": "2", "user": "b"}, {"id": "1", "user": "a"}], True),
    ("list in order", [1, 2], [2, 1], False),
    ("escaped dollar", {"text": "$$int"}, {"text": "$int"}, True),
]


@pytest.mark.parametrize("pattern, actual, matches", [case[1:] for case in PATTERN_CASES], ids=[case[0] for case in PATTERN_CASES])
def test_pattern_matching(pattern: Any, actual: Any, matches: bool) -> None:
    """Wildcards, variables and unordered lists match as docs/conformance.md says."""
    assert (match(pattern, actual, {}) is None) is matches


def test_a_failed_match_binds_nothing() -> None:
    """Variables bound by a pattern that did not match as a whole are not kept."""
    variables: dict[str, Any] = {}
    assert match({"id": "$=x", "seq": 1}, {"id": "7", "seq": 2}, variables) is not None
    assert variables == {}


def test_bad_scenario_files_are_refused(tmp_path: Path) -> None:
    """A scenario whose name is not its file name, or with a step of two kinds, or a restart it does not declare, is refused."""
    cases = {
        "named": {"name": "other", "steps": [{"note": "x"}]},
        "twokinds": {"name": "twokinds", "steps": [{"send": "a", "expect": "a"}]},
        "undeclared": {"name": "undeclared", "steps": [{"restart": True}]},
        "noneeds": {"name": "noneeds", "needs": ["moon"], "steps": [{"note": "x"}]},
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ScenarioError):
            load_scenario(path)
    assert conformance.SCENARIO_DIR.is_dir()


def test_the_protocol_pages_example_is_the_example_scenario() -> None:
    """docs/protocol.md's example exchange is exactly the transcript of the scenario CI plays against the server."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    block = text[text.index("## Example: two users"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    scenario = {scenario.name: scenario for scenario in SCENARIOS}["example_two_users"]
    assert block == transcript(scenario)
