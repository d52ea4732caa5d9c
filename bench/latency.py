"""Edit-to-ear latency: from one user's edit to the first loop of another user that plays it.

Alice edits at random moments, walking a Gray code so that each pattern
names its update; Bob listens through a real ``loopsync serve --store
sqlite``: two headless clients in this process, or with ``--browser`` two
pages in headless Chromium (Bob's Loop Start the frame his clock processor
played it on). Every edit must be heard within DESIGN.md's bound, from the
first possible Loop Start, and every loop of Bob's must play what its sync
took: exit 0 then, 1 otherwise. docs/benchmarks.md, "Edit-to-ear latency".
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import harness
from loopsync.client import Client, Event

ROOM = "latency"
STEPS = 16
KEPT_EVENTS = frozenset({"edit", "sync", "sync_missed", "loop_start", "received", "ack", "connected", "disconnected", "error"})


def loop_seconds(bpm: float) -> float:
    """One loop of 16 sixteenth notes at ``bpm``."""
    return 60.0 / bpm / 4 * STEPS


def text_histogram(values: list[float], bound: float, bins: int = 20, width: int = 40) -> list[str]:
    """Lines of a text histogram of ``values`` from 0 to the bound (and beyond, if any value is)."""
    top = max([bound, *values]) if values else bound
    size = bound / bins
    count = max(bins, math.ceil(top / size))
    counts = [0] * count
    for value in values:
        counts[min(count - 1, int(value / size))] += 1
    peak = max(counts) or 1
    lines = []
    for index, number in enumerate(counts):
        low, high = index * size, (index + 1) * size
        bar = "#" * round(number / peak * width)
        mark = f"  <- bound {bound:.3f} s" if low < bound <= high + 1e-9 else ""
        lines.append(f"  {low:5.2f}-{high:5.2f} s {number:5d} {bar}{mark}")
    return lines


# -- two headless clients -------------------------------------------------------------


def gray_walk(order: list[int], start: int) -> Iterator[int]:
    """Steps to toggle so that the part walks a Gray code from ``start``: never the same pattern twice (for 2^16 - start edits)."""
    for k in range(start + 1, 2 ** len(order)):
        yield order[(k & -k).bit_length() - 1]  # gray(k) and gray(k - 1) differ in the lowest set bit of k


@dataclass
class Run:
    """What one run recorded: every kept event of both clients, in the order they happened."""

    bpm_a: float
    bpm_b: float
    lead: float
    log: list[tuple[str, Event]] = field(default_factory=list)


async def record(url: str, bpm_a: float, bpm_b: float, lead: float, seconds: float, mean_gap: float, seed: int) -> Run:
    """Play Alice and Bob against ``url``; Alice edits for ``seconds``; return the event log."""
    rng = random.Random(seed)
    run = Run(bpm_a, bpm_b, lead)
    order = list(range(STEPS))
    rng.shuffle(order)
    walk = gray_walk(order, rng.randrange(1, 2**12))
    alice: Client

    def on_alice(event: Event) -> None:
        if event["event"] == "sync" and event["sent"]:
            event["seq"] = max(alice.sync.in_flight)
        if event["event"] in KEPT_EVENTS and event["event"] != "received":
            run.log.append(("A", event))

    bob_seen = {"latest": 0, "synced": 0, "played": 0}  # Alice's seqs: latest received, taken at sync, playing

    def on_bob(event: Event) -> None:
        name = event["event"]
        if name == "received" and event["message"].get("type") == "update" and event["message"].get("user") == "alice":
            bob_seen["latest"] = max(bob_seen["latest"], int(event["message"]["seq"]))
        elif name == "sync":
            bob_seen["synced"] = bob_seen["latest"]
        elif name == "loop_start":
            bob_seen["played"] = bob_seen["synced"]
        if name in KEPT_EVENTS:
            run.log.append(("B", event))

    alice = Client(url, ROOM, "alice", bpm=bpm_a, lead_seconds=lead, sound="kick", on_event=on_alice)
    bob = Client(url, ROOM, "bob", bpm=bpm_b, lead_seconds=lead, sound="hat", on_event=on_bob)
    async with alice, bob:
        await asyncio.wait_for(asyncio.gather(alice.wait_joined(), bob.wait_joined()), 30)
        await asyncio.sleep(max(loop_seconds(bpm_a), loop_seconds(bpm_b)) + 0.1)  # both past a first sync
        end = time.monotonic() + seconds
        for _ in range(int(seconds / mean_gap * 3) + 1):  # bounded in count as well as in time
            await asyncio.sleep(rng.uniform(0.0, 2 * mean_gap))
            if time.monotonic() >= end:
                break
            alice.toggle(next(walk))
        # Drain: until Bob's loop has started with Alice's last confirmed part, or a few bounds have passed.
        bound = loop_seconds(bpm_a) + loop_seconds(bpm_b) + lead
        deadline = time.monotonic() + 3 * bound + 2
        while time.monotonic() < deadline:
            if not alice.sync.dirty() and not alice.sync.in_flight and bob_seen["played"] >= alice.sync.confirmed_seq:
                break
            await asyncio.sleep(0.05)
    return run


def analyse(run: Run) -> dict[str, Any]:
    """The figures of a headless run, from its log (one process, one event loop: "before" and "after" are exact)."""
    alice = [event for who, event in run.log if who == "A"]
    edits, sent_at = alice_edits([(e["monotonic"], None if e["event"] == "edit" else e["seq"])
                                  for e in alice if e["event"] == "edit" or e["event"] == "sync" and e["sent"]])
    seq_of_pattern: dict[tuple[int, ...], int] = {}  # what Bob received from Alice, by pattern
    received_at: dict[int, tuple[int, float]] = {}  # seq -> (log index, time) of Bob's receipt
    latest_at_bob = 0
    taken_at_sync = 0  # Alice's seq that Bob's last sync took
    played: dict[int, int] = {}  # Bob's loop -> Alice's seq it played (-1: a pattern Bob never received)
    loop_started: dict[int, Event] = {}
    syncs_run: list[tuple[int, int]] = []  # (log index, loop) of Bob's syncs that ran
    not_as_synced: list[int] = []
    for index, (who, event) in enumerate(run.log):
        name = event["event"]
        if who == "A":
            continue
        if name == "received" and event["message"].get("type") == "update" and event["message"].get("user") == "alice":
            seq = int(event["message"]["seq"])
            seq_of_pattern[tuple(event["message"]["part"]["steps"])] = seq
            received_at[seq] = (index, event["monotonic"])
            latest_at_bob = max(latest_at_bob, seq)
        elif name == "sync":
            taken_at_sync = latest_at_bob
            syncs_run.append((index, event["loop"]))
        elif name == "loop_start":
            loop = event["loop"]
            part = event["parts"].get("alice")
            played[loop] = 0 if part is None else seq_of_pattern.get(tuple(part["steps"]), -1)
            loop_started[loop] = event
            if played[loop] != taken_at_sync:
                not_as_synced.append(loop)
    # The loop's start on its clock, when it was emitted, and (for the lead window) the emitted time again.
    loop_times = {loop: (e["due"], e["monotonic"], e["monotonic"]) for loop, e in loop_started.items()}
    lateness = [event["monotonic"] - event["due"] for event in loop_started.values()]
    return {
        **summarise(edits, sent_at, received_at, played, loop_times, syncs_run, run.bpm_a, run.bpm_b, run.lead, lateness),
        "acks": sum(1 for event in alice if event["event"] == "ack"),
        "bob_loops": len(loop_started), "bob_loops_not_as_synced": not_as_synced,
        "missed_syncs": {w: sum(1 for who, e in run.log if who == w and e["event"] == "sync_missed") for w in "AB"},
        "errors": [{"code": e.get("code"), "message": e.get("message")} for _, e in run.log if e["event"] == "error"],
        "disconnects": sum(1 for _, event in run.log if event["event"] == "disconnected"),
    }


# -- the same with two browser pages ------------------------------------------------------


# Stamps every event the page records with performance.timeOrigin + performance.now() (one clock
# for every page of the browser), and keeps them in an unbounded list of our own. Alice's sync also
# records the update it sent; Bob's sync the part of Alice it handed to his clock.
_INSTRUMENT_JS = """() => {
  const app = window.loopsync.app;
  const bench = window.__bench = { events: [] };
  const original = app._event.bind(app);
  app._event = (event) => {
    const copy = { ...event, t: performance.timeOrigin + performance.now() };
    if (event.type === 'sync') {
      const posted = app.posted.get(event.id);
      const others = (posted && posted.others) || {};
      copy.alice = others.alice ? others.alice.steps.join('') : null;
      if (event.sent > 0) {
        const update = app.connection.sentLog.filter((m) => m.type === 'update').at(-1);
        copy.seq = update.seq;
        copy.pattern = update.part.steps.join('');
      }
    }
    bench.events.push(copy);
    original(event);
  };
}"""

# Alice's user: edits at random moments (Math.random gaps), walking a Gray code, for `seconds`.
_EDIT_JS = """({ seconds, gap, order, start }) => {
  const bench = window.__bench;
  const end = performance.now() + seconds * 1000;
  let k = start;
  const next = () => {
    if (performance.now() >= end) { bench.editing = false; return; }
    k += 1;
    const step = order[31 - Math.clz32(k & -k)];
    const t = performance.timeOrigin + performance.now();
    window.loopsync.toggleStep(step);
    bench.events.push({ type: 'edit', t, step });
    setTimeout(next, Math.random() * 2 * gap * 1000);
  };
  bench.editing = true;
  setTimeout(next, Math.random() * 2 * gap * 1000);
}"""


def record_browser(chromium: str, seconds: float, bpm_a: float, bpm_b: float, lead: float, mean_gap: float, seed: int) -> dict[str, Any]:
    """Two pages in headless Chromium against a SQLite server; Alice edits; return both pages' stamped events."""
    rng = random.Random(seed)
    order = list(range(STEPS))
    rng.shuffle(order)
    with harness.ServerProcess("loopsync") as server, harness.chromium(chromium) as browser:
        url = f"{server.http_urls[0]}?room={ROOM}&lead={lead:g}"
        pages = {user: harness.open_loopsync(harness.new_page(browser), f"{url}&user={user}&bpm={bpm:g}")
                 for user, bpm in (("alice", bpm_a), ("bob", bpm_b))}
        for page in pages.values():
            page.evaluate(_INSTRUMENT_JS)
        for page in pages.values():
            page.evaluate("() => window.loopsync.play()")
        pages["alice"].wait_for_timeout((max(loop_seconds(bpm_a), loop_seconds(bpm_b)) + 0.1) * 1000)
        pages["alice"].evaluate(_EDIT_JS, {"seconds": seconds, "gap": mean_gap, "order": order, "start": rng.randrange(1, 2**12)})
        pages["alice"].wait_for_function("() => window.__bench.editing === false", timeout=(seconds + 30) * 1000, polling=200)
        # Drain: a few bounds, so that Bob plays Alice's last update.
        pages["bob"].wait_for_timeout((2 * (loop_seconds(bpm_a) + loop_seconds(bpm_b)) + 1) * 1000)
        recorded = {user: page.evaluate("() => window.__bench.events") for user, page in pages.items()}
        recorded["sample_rate"] = pages["bob"].evaluate("() => window.loopsync.context.sampleRate")
    return recorded


def analyse_browser(recorded: dict[str, Any], bpm_a: float, bpm_b: float, lead: float) -> dict[str, Any]:
    """The figures of :func:`analyse` from two pages' events; Bob's Loop Start is the frame his clock played it on."""
    alice = [e for e in recorded["alice"] if e["type"] == "edit" or e["type"] == "sync" and e.get("seq") is not None]
    edits, sent_at = alice_edits([(e["t"] / 1000, e["seq"] if e["type"] == "sync" else None) for e in alice])
    seq_of_pattern = {"0" * STEPS: 0, **{e["pattern"]: e["seq"] for e in alice if e["type"] == "sync"}}
    sample_rate = float(recorded["sample_rate"])
    bob = recorded["bob"]
    steps = [e for e in bob if e["type"] == "step"]
    # The audio thread renders a step's quantum, then posts it; the earliest arrival relative to
    # its frame is the best estimate of "rendered now", so it maps Bob's frames to the page clock.
    offset = min(e["t"] / 1000 - e["frame"] / sample_rate for e in steps)
    heard_steps: dict[int, dict[int, bool]] = {}
    loop_start: dict[int, tuple[float, float]] = {}  # loop -> (Loop Start on the audio clock, when the page heard of it)
    for e in steps:
        heard_steps.setdefault(e["loop"], {})[e["step"]] = "alice" in e["sounded"]
        if e["step"] == 0:
            loop_start[e["loop"]] = (offset + e["frame"] / sample_rate, e["t"] / 1000)
    played = {loop: seq_of_pattern.get("".join("1" if heard[i] else "0" for i in range(STEPS)), -1)
              for loop, heard in heard_steps.items() if len(heard) == STEPS and loop in loop_start}
    received_at: dict[int, tuple[int, float]] = {}
    syncs_run: list[tuple[int, int]] = []
    taken: dict[int, int] = {}
    applied_late = 0
    sync_ids: dict[int, int] = {}
    for index, e in enumerate(bob):
        if e["type"] == "recv" and e.get("kind") == "update" and e.get("user") == "alice":
            received_at[e["seq"]] = (index, e["t"] / 1000)
        elif e["type"] == "sync":
            syncs_run.append((index, e["loop"]))
            taken[e["loop"]] = seq_of_pattern.get(e["alice"] or "0" * STEPS, -1)
            sync_ids[e["id"]] = e["loop"]
        elif e["type"] == "applied" and e["id"] in sync_ids and e.get("atLoopStart") != sync_ids[e["id"]]:
            applied_late += 1
    not_as_synced = [loop for loop in sorted(played) if loop in taken and played[loop] != taken[loop]]
    loop_times = {loop: (on_clock, page_heard, on_clock) for loop, (on_clock, page_heard) in loop_start.items()}
    lateness = [page - clock for clock, page in loop_start.values()]
    return {
        "client": "browser",
        **summarise(edits, sent_at, received_at, played, loop_times, syncs_run, bpm_a, bpm_b, lead, lateness),
        "acks": len(sent_at), "bob_loops": len(played), "bob_loops_not_as_synced": not_as_synced + ([-1] * applied_late),
        "missed_syncs": {"A": 0, "B": applied_late},
        "errors": [], "disconnects": sum(1 for e in bob + recorded["alice"] if e["type"] == "disconnected"),
    }


# -- figures of either client ----------------------------------------------------------


def alice_edits(moments: list[tuple[float, int | None]]) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """Alice's edits, each with the seq of the update that carried it, and each update's send time.

    ``moments`` are her edits ``(time, None)`` and her sends ``(time, seq)`` in
    the order they happened: a send carries every edit since the one before.
    """
    edits: list[dict[str, Any]] = []
    waiting: list[dict[str, Any]] = []
    sent_at: dict[int, float] = {}
    for moment, seq in moments:
        if seq is None:
            edits.append({"edit": moment})
            waiting.append(edits[-1])
        else:
            sent_at[seq] = moment
            for edit in waiting:
                edit["seq"] = seq
            waiting = []
    return edits, sent_at


def judge_edits(edits: list[dict[str, Any]], received_at: dict[int, tuple[int, float]], sent_at: dict[int, float],
                played: dict[int, int], loop_times: dict[int, tuple[float, float, float]],
                syncs_run: list[tuple[int, int]], bound_fixed: float) -> None:
    """Mark each edit: heard in which loop, its latency against its bound, taken up at the first possible Loop Start.

    ``played[loop]`` is the newest seq of alice's that bob's loop plays;
    ``loop_times[loop]`` is (start on bob's clock, when bob's client reported
    it, the time compared with an update's arrival for the lead window);
    ``syncs_run`` lists (index in bob's event stream, loop synced for).
    """
    for edit in edits:
        seq = edit.get("seq")
        edit["heard"] = False
        if seq is None or seq not in received_at:
            continue
        receipt_index, receipt_time = received_at[seq]
        edit["network"] = receipt_time - sent_at[seq]
        edit["bound"] = bound_fixed + edit["network"]
        heard_loop = next((loop for loop in sorted(played) if played[loop] >= seq), None)
        if heard_loop is None:
            continue
        on_clock, reported, _ = loop_times[heard_loop]
        edit.update(heard=True, loop=heard_loop, latency=on_clock - edit["edit"], latency_emitted=reported - edit["edit"])
        edit["within"] = edit["latency"] <= edit["bound"]
        first = next((loop for sync_index, loop in syncs_run if sync_index > receipt_index), None)
        edit["first_possible_loop"] = first
        edit["first_possible"] = first == heard_loop
        # Arrived after the sync moment of a loop that had not started yet: it waits that loop out, by the rule.
        before = loop_times.get(first - 1) if first is not None else None
        edit["in_lead_window"] = before is not None and before[2] > receipt_time


def summarise(edits: list[dict[str, Any]], sent_at: dict[int, float], received_at: dict[int, tuple[int, float]],
              played: dict[int, int], loop_times: dict[int, tuple[float, float, float]], syncs_run: list[tuple[int, int]],
              bpm_a: float, bpm_b: float, lead: float, lateness: list[float]) -> dict[str, Any]:
    """Judge every edit (:func:`judge_edits`) and sum up: latency, network, the bound, the model's mean, Bob's loops' lateness."""
    bound_fixed = loop_seconds(bpm_a) + loop_seconds(bpm_b) + lead
    judge_edits(edits, received_at, sent_at, played, loop_times, syncs_run, bound_fixed)
    heard = [e for e in edits if e["heard"]]
    latencies = sorted(e["latency"] for e in heard)
    emitted = sorted(e["latency_emitted"] for e in heard)
    networks = sorted(e["network"] for e in heard)
    lateness = sorted(lateness)
    p = harness.percentile
    return {
        "bpm_a": bpm_a, "bpm_b": bpm_b, "lead_s": lead,
        "loop_a_s": loop_seconds(bpm_a), "loop_b_s": loop_seconds(bpm_b), "bound_without_network_s": bound_fixed,
        "edits": len(edits), "updates": len(sent_at), "heard": len(heard),
        "latency_s": {"min": min(latencies, default=math.nan), "p50": p(latencies, 0.5), "p90": p(latencies, 0.9),
                      "max": max(latencies, default=math.nan), "mean": statistics.fmean(latencies) if latencies else math.nan},
        "latency_emitted_s": {"p50": p(emitted, 0.5), "p90": p(emitted, 0.9), "max": max(emitted, default=math.nan)},
        "network_ms": {"p50": p(networks, 0.5) * 1000, "p90": p(networks, 0.9) * 1000, "max": max(networks, default=math.nan) * 1000},
        "model_mean_s": (loop_seconds(bpm_a) + loop_seconds(bpm_b)) / 2 + lead + (statistics.fmean(networks) if networks else 0.0),
        "within_bound": sum(1 for e in heard if e["within"]),
        "within_bound_emitted": sum(1 for e in heard if e["latency_emitted"] <= e["bound"]),
        "smallest_margin_s": min((e["bound"] - e["latency"] for e in heard), default=math.nan),
        "first_possible": sum(1 for e in heard if e["first_possible"]),
        "in_lead_window": sum(1 for e in heard if e["in_lead_window"]),
        "loop_start_lateness_ms": {"p50": p(lateness, 0.5) * 1000, "max": max(lateness, default=math.nan) * 1000},
        "histogram": text_histogram(latencies, bound_fixed + (statistics.median(networks) if networks else 0.0)),
        "per_edit": edits,
    }


def ok(figures: dict[str, Any]) -> bool:
    """The verdict: every edit heard, within the bound, at the first possible Loop Start; every loop as synced."""
    return (figures["edits"] > 0 and figures["heard"] == figures["edits"] and figures["within_bound"] == figures["edits"]
            and figures["first_possible"] == figures["edits"] and not figures["bob_loops_not_as_synced"] and not figures["errors"])


def report(figures: dict[str, Any], seconds: float) -> str:
    """The figures as text for people."""
    f = figures
    n = f["edits"] or 1
    lat, net = f["latency_s"], f["network_ms"]
    browser = f.get("client") == "browser"
    lines = [
        ("Browser pages (headless Chromium): " if browser else "Headless clients: ") + f"alice at {f['bpm_a']:g} BPM (loop {f['loop_a_s']:.3f} s) edits at random moments for {seconds:g} s,",
        f"  bob at {f['bpm_b']:g} BPM (loop {f['loop_b_s']:.3f} s) hears; lead {f['lead_s'] * 1000:.0f} ms; server: loopsync serve --store sqlite",
        f"edits: {f['edits']} in {f['updates']} updates ({f['acks']} acknowledged); heard by bob: {f['heard']}/{f['edits']}",
        f"latency, edit -> bob's Loop Start that plays it: p50 {lat['p50']:.3f} s  p90 {lat['p90']:.3f} s  max {lat['max']:.3f} s"
        f"  (min {lat['min']:.3f}, mean {lat['mean']:.3f})",
        f"  (to the moment bob's {'page heard of that Loop Start' if browser else 'loop_start event was emitted'}:"
        f" p50 {f['latency_emitted_s']['p50']:.3f} s, max {f['latency_emitted_s']['max']:.3f} s;"
        f" within the bound {f['within_bound_emitted']}/{f['edits']})",
        f"network, alice's send -> bob's receipt (commit included): p50 {net['p50']:.1f} ms  p90 {net['p90']:.1f} ms  max {net['max']:.1f} ms",
        f"bound (DESIGN.md) = alice's loop + bob's loop + lead + network = {f['bound_without_network_s']:.3f} s + network",
        f"  baseline: uniform random edit moments give a mean of (loop A + loop B) / 2 + lead + network = {f['model_mean_s']:.3f} s;"
        f" measured mean {lat['mean']:.3f} s",
        f"within the bound: {f['within_bound']}/{f['edits']} ({f['within_bound'] / n:.1%}); smallest margin {f['smallest_margin_s'] * 1000:.0f} ms",
        f"taken up at the first possible Loop Start (bob's first sync after the update arrived): {f['first_possible']}/{f['edits']}"
        f" ({f['first_possible'] / n:.1%}); {f['in_lead_window']} of them arrived inside the lead (after a sync moment, before its"
        f" Loop Start) and rightly waited one more loop",
        f"bob's loops: {f['bob_loops']}, playing other than what their sync took: {len(f['bob_loops_not_as_synced'])};"
        + (f" answers applied after their Loop Start: {f['missed_syncs']['B']}; the page heard of a Loop Start"
           if browser else f" missed syncs: alice {f['missed_syncs']['A']}, bob {f['missed_syncs']['B']}; loop start emitted")
        + f" late by p50 {f['loop_start_lateness_ms']['p50']:.1f} ms, max {f['loop_start_lateness_ms']['max']:.1f} ms",
    ]
    if f["errors"] or f["disconnects"]:
        lines.append(f"errors: {f['errors']}; disconnects: {f['disconnects']}")
    lines.append("latency histogram (bins of a twentieth of the bound with the median network; each edit is checked against its own):")
    lines += f["histogram"]
    lines.append("verdict: " + ("OK" if ok(f) else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = harness.arguments(__doc__, smoke="edit for 3 s (the test suite)", long="edit for 300 s instead of 60")
    parser.add_argument("--seconds", type=float, help="edit for this many seconds (instead of --smoke's or --long's)")
    parser.add_argument("--bpm-a", type=float, default=300.0, help="alice's tempo, the editor (default 300)")
    parser.add_argument("--bpm-b", type=float, default=233.0, help="bob's tempo, the listener (default 233)")
    parser.add_argument("--lead", type=float, default=0.05, help="both clients' lead in seconds (default 0.05)")
    parser.add_argument("--gap", type=float, default=0.2, help="mean seconds between edits (default 0.2)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the edit moments and steps")
    parser.add_argument("--browser", action="store_true", help="two pages in headless Chromium instead of two headless clients")
    parser.add_argument("--chromium", default=harness.CHROMIUM, help="the Chromium binary for --browser")
    args = parser.parse_args(argv)
    seconds = args.seconds or (300.0 if args.long else 3.0 if args.smoke else 60.0)
    if args.browser:
        recorded = record_browser(args.chromium, seconds, args.bpm_a, args.bpm_b, args.lead, args.gap, args.seed)
        figures = analyse_browser(recorded, args.bpm_a, args.bpm_b, args.lead)
    else:
        with harness.ServerProcess("loopsync") as server:
            run = asyncio.run(record(server.ws_url, args.bpm_a, args.bpm_b, args.lead, seconds, args.gap, args.seed))
        figures = analyse(run)
    print(report(figures, seconds), flush=True)
    harness.write_json(args.json, figures)
    return 0 if ok(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
