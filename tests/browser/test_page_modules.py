"""The page's pure modules (no DOM, no audio) run in real Chromium: presence, mix, heard time, WAV, invite link.

Each case is a row of a table: input in, expected output. Presence runs the
three forms a server sends: the full table with ids, deltas, and the first
server's form (a full table on every change, entries without ids).
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

import pytest
from playwright.sync_api import Browser, Page

from .loopsync_browser import ServeProcess


@pytest.fixture(scope="module")
def page(browser: Browser, loopsync_server: ServeProcess) -> Iterator[Page]:
    """A served page (no user: it shows the join form) to import the modules from."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(loopsync_server.http_url + "?room=modules")
    yield page
    context.close()


def presence_after(page: Page, messages: list[dict[str, Any]], own_id: str | None = None, me: str = "alice") -> dict[str, Any]:
    """Feed `messages` to a fresh Presence; return its entries (sorted by id), groups and descriptions."""
    result: dict[str, Any] = page.evaluate(
        """async ([messages, ownId, me]) => {
             const { Presence, describeGroup } = await import('/presence.js');
             const presence = new Presence();
             presence.onMessage({ type: 'snapshot', id: ownId });
             const understood = messages.map((message) => presence.apply(message));
             const groups = presence.groups(me);
             return {
               understood, known: presence.known,
               entries: [...presence.entries.values()].sort((a, b) => a.id < b.id ? -1 : 1),
               groups: groups.map((g) => ({ user: g.user, ids: g.tabs.map((t) => t.id), other: g.otherTabs.map((t) => t.id),
                                            own: g.own, ...describeGroup(g) })),
             };
           }""",
        [messages, own_id, me],
    )
    return result


def entry(id_: str, user: str, playing: bool = False, bpm: float | None = 120) -> dict[str, Any]:
    return {"id": id_, "user": user, "playing": playing, "bpm": bpm}


def test_a_full_table_replaces_everything(page: Page) -> None:
    """A message with `users` replaces the whole table, also after earlier entries."""
    result = presence_after(page, [
        {"type": "presence", "users": [entry("1", "alice"), entry("2", "bob")]},
        {"type": "presence", "users": [entry("3", "carol", True, 90)]},
    ])
    assert result["understood"] == [True, True]
    assert result["known"] is True
    assert result["entries"] == [entry("3", "carol", True, 90)]


def test_deltas_upsert_by_id_and_remove_who_left(page: Page) -> None:
    """`changed` entries are upserted by id, `left` ids removed; both may be empty."""
    result = presence_after(page, [
        {"type": "presence", "users": [entry("1", "alice"), entry("2", "bob")]},
        {"type": "presence", "changed": [entry("2", "bob", True, 90), entry("5", "dan", False, None)], "left": []},
        {"type": "presence", "changed": [], "left": ["1"]},
        {"type": "presence", "changed": [], "left": ["404"]},
    ])
    assert result["understood"] == [True, True, True, True]
    assert result["entries"] == [entry("2", "bob", True, 90), entry("5", "dan", False, None)]


def test_the_first_servers_form_is_a_full_table_every_time(page: Page) -> None:
    """Entries without ids (the first server's form): each list replaces the table; entries get ids by place."""
    old = [{"user": "alice", "playing": False, "bpm": 120.0}, {"user": "bob", "playing": True, "bpm": 90.0}]
    result = presence_after(page, [
        {"type": "presence", "users": old},
        {"type": "presence", "users": old[1:]},
    ])
    assert result["entries"] == [{"id": "#0", "user": "bob", "playing": True, "bpm": 90.0}]


def test_two_tabs_of_one_user_are_one_group_and_the_own_tab_is_known_by_the_snapshot_id(page: Page) -> None:
    """Entries group by user; the own group's other tabs exclude the snapshot's id; a paused tab is not called playing."""
    result = presence_after(page, [
        {"type": "presence", "users": [entry("7", "alice", True), entry("9", "alice", False, 100), entry("8", "bob", True, 90),
                                       entry("4", "bob", False, 90)]},
    ], own_id="9")
    assert result["groups"] == [
        {"user": "alice", "ids": ["7", "9"], "other": ["7"], "own": True, "state": "playing in 1 of 2 tabs", "tempo": "100/120 BPM"},
        {"user": "bob", "ids": ["4", "8"], "other": ["4", "8"], "own": False, "state": "playing in 1 of 2 tabs", "tempo": "90 BPM"},
    ]
    legacy = presence_after(page, [{"type": "presence", "users": [{"user": "alice", "playing": True, "bpm": 120},
                                                                   {"user": "alice", "playing": False, "bpm": 120}]}])
    assert legacy["groups"][0]["other"] == ["#1"], "without ids, one of the own user's tabs counts as this page"


def test_bad_presence_messages_are_ignored_and_bad_entries_dropped(page: Page) -> None:
    """A message of neither form is not understood; entries without a user are dropped; odd fields are cleaned."""
    result = presence_after(page, [
        {"type": "presence", "users": [entry("1", "alice"), {"id": "2"}, "bob", None, {"id": "3", "user": "carol", "playing": "yes", "bpm": "fast"}]},
        {"type": "presence"},
        {"type": "presence", "changed": [{"user": "no-id"}], "left": []},
    ])
    assert result["understood"] == [True, False, True]
    assert result["entries"] == [entry("1", "alice"), {"id": "3", "user": "carol", "playing": False, "bpm": None}]


def test_the_mix_gives_gains_with_solo_and_mute_and_keeps_only_what_it_understands(page: Page) -> None:
    """Mute silences a row, solo silences every other row, mute wins over solo; unreadable saved state is ignored."""
    result = page.evaluate(
        """async () => {
             const { Mix, userColour } = await import('/mix.js');
             const mix = new Mix({ rows: { bob: { volume: 0.5 }, eve: 'nonsense', carl: { volume: 7 } }, master: 2 });
             const out = [mix.gains()];
             mix.set('carol', { mute: true });
             out.push(mix.gains());
             mix.set('dan', { solo: true });
             mix.set('carol', { solo: true });
             out.push(mix.gains(), mix.silenced('bob'), mix.silenced('dan'), mix.gainOf('carol'));
             mix.set('dan', { solo: false });
             mix.set('carol', { mute: false, solo: false });
             mix.set('bob', { volume: 1 });
             out.push(mix.toJSON(), new Mix(JSON.parse(JSON.stringify(mix))).gains());
             out.push([userColour('alice'), userColour('alice'), userColour('bob')]);
             return out;
           }"""
    )
    assert result[0] == {"gains": {"bob": 0.5, "carl": 1}, "rest": 1, "master": 1}
    assert result[1] == {"gains": {"bob": 0.5, "carl": 1, "carol": 0}, "rest": 1, "master": 1}
    # Solo: every row not soloed is silent, also those the mix never heard of (`rest`); mute wins.
    assert result[2] == {"gains": {"bob": 0, "carl": 0, "carol": 0, "dan": 1}, "rest": 0, "master": 1}
    assert result[3:6] == [True, False, 0]
    assert result[6] == {"rows": {"carl": {"mute": False, "solo": False, "volume": 1}}, "master": 1}
    assert result[7] == {"gains": {"carl": 1}, "rest": 1, "master": 1}
    alice, alice_again, bob = result[8]
    assert alice == alice_again and alice != bob and alice.startswith("hsl(")


@pytest.mark.parametrize(
    ("clock", "expected"),
    [
        # getOutputTimestamp sane: its context time, carried forward to now.
        ({"currentTime": 10.0, "baseLatency": 0.01, "outputLatency": 0.04,
          "outputTimestamp": {"contextTime": 9.9, "performanceTime": 5000}, "performanceNow": 5020}, 9.92),
        # Its time ahead of what was rendered (not sane): the latencies.
        ({"currentTime": 10.0, "baseLatency": 0.01, "outputLatency": 0.04,
          "outputTimestamp": {"contextTime": 10.5, "performanceTime": 5000}, "performanceNow": 5000}, 9.95),
        # Zero (not started) or absent: the latencies.
        ({"currentTime": 2.0, "baseLatency": 0.005, "outputLatency": 0.0,
          "outputTimestamp": {"contextTime": 0, "performanceTime": 0}, "performanceNow": 100}, 1.995),
        ({"currentTime": 2.0, "baseLatency": 0.005, "outputLatency": 0.1, "outputTimestamp": None, "performanceNow": 100}, 1.895),
        # More than half a second behind: not sane either.
        ({"currentTime": 10.0, "baseLatency": 0.0, "outputLatency": 0.02,
          "outputTimestamp": {"contextTime": 9.0, "performanceTime": 5000}, "performanceNow": 5000}, 9.98),
    ],
)
def test_the_heard_time_is_the_output_timestamp_where_sane_else_the_latencies(page: Page, clock: dict[str, Any], expected: float) -> None:
    """A step is drawn when the output plays it: getOutputTimestamp() where sane, else currentTime less the latencies."""
    heard = page.evaluate("async (clock) => (await import('/heard.js')).heardContextTime(clock)", clock)
    assert heard == pytest.approx(expected, abs=1e-9)


def test_the_heard_queue_releases_in_order_and_stays_bounded(page: Page) -> None:
    """Events leave the queue once their time is heard, oldest first; past its limit the oldest come out at once."""
    result = page.evaluate(
        """async () => {
             const { HeardQueue } = await import('/heard.js');
             const queue = new HeardQueue(3);
             const pushed = [1, 2, 3, 4].map((t) => queue.push({ contextTime: t }).map((e) => e.contextTime));
             return [pushed, queue.release(2.5).map((e) => e.contextTime), queue.release(3.5).map((e) => e.contextTime),
                     queue.releaseAll().map((e) => e.contextTime)];
           }"""
    )
    assert result == [[[], [], [], [1]], [2], [3], [4]]


def test_a_wav_file_holds_the_samples_exactly(page: Page) -> None:
    """encodeWav writes a RIFF/WAVE file of 32-bit float samples, interleaved, that reads back bit for bit."""
    data = bytes(page.evaluate(
        """async () => {
             const { encodeWav } = await import('/wav.js');
             const left = new Float32Array([0, 0.5, -0.25, 1e-7]);
             const right = new Float32Array([1, -1, 0.125, 0]);
             return Array.from(new Uint8Array(encodeWav([left, right], 44100)));
           }"""
    ))
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    fmt = struct.unpack("<4sIHHIIHHH", data[12:38])
    assert fmt == (b"fmt ", 18, 3, 2, 44100, 44100 * 8, 8, 32, 0)
    assert data[38:50] == b"fact" + struct.pack("<II", 4, 4)
    assert data[50:54] == b"data" and struct.unpack("<I", data[54:58])[0] == 32
    samples = struct.unpack("<8f", data[58:])
    assert samples == struct.unpack("<8f", struct.pack("<8f", 0, 1, 0.5, -1, -0.25, 0.125, 1e-7, 0))


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("http://127.0.0.1:8765/?room=demo&user=alice&bpm=90#x", "http://127.0.0.1:8765/?room=demo"),
        ("https://loops.example/app/?user=bob", "https://loops.example/app/?room=jam-1"),
    ],
)
def test_an_invite_link_names_the_room_and_nothing_else(page: Page, href: str, expected: str) -> None:
    """The invite link carries the room only: never the user, the tempo or the lead."""
    room = "demo" if "demo" in expected else "jam-1"
    assert page.evaluate("async ([href, room]) => (await import('/address.js')).inviteLink(href, room)", [href, room]) == expected
