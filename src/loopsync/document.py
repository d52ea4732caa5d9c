"""The shared document and its rules: schema, sizes, ownership, merge.

No I/O and no clock here: the server, the headless client and (in its own
copy, ``web/rules.js``) the browser all call these functions, and the shared
vectors in ``tests/vectors/`` pin both copies to the same answers.

A document looks like::

    {"room": "demo", "steps": 16,
     "parts": {"alice": {"sound": "kick", "steps": [1, 0, ...]}}}

Validation never raises on bad input from a peer: it returns an
:class:`Invalid` that names the error code and the bad value, so the layer
above can answer the peer and go on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

DEFAULT_STEPS = 16
MIN_STEPS = 1
MAX_STEPS = 64
MAX_PARTS = 256
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
SOUNDS = ("kick", "snare", "hat", "clap", "tom", "tone")

Part = dict[str, Any]
"""One user's part: ``{"sound": str, "steps": list[int]}`` (each step 0 or 1)."""

Parts = dict[str, Part]


@dataclass(frozen=True)
class Invalid:
    """Why a value from a peer was refused: an error code and a short fragment."""

    code: str
    message: str


def check_name(kind: str, value: object) -> Invalid | None:
    """Check a room or user name: 1-32 of ``A-Z a-z 0-9 _ -``."""
    if not isinstance(value, str):
        return Invalid("bad_name", f"{kind} name must be a string, got {type(value).__name__}")
    if not NAME_PATTERN.fullmatch(value):
        return Invalid("bad_name", f"{kind} name must be 1-32 of A-Z a-z 0-9 _ -, got {value[:40]!r}")
    return None


_SOUND_SET = frozenset(SOUNDS)
_STEP_TYPES = frozenset((int,))  # bool is an int subclass in Python; JSON true is not a step value
_STEP_VALUES = frozenset((0, 1))


def check_part(part: object, step_count: int) -> Invalid | None:
    """Check one part against the room's step count; ``None`` when it is valid."""
    # Every accepted update passes here: a valid part is told by a few checks
    # that run in C; only a bad one goes through the checks that name the problem.
    if type(part) is dict and len(part) == 2:  # two fields, and (below) they are sound and steps
        sound, steps = part.get("sound"), part.get("steps")
        if (type(sound) is str and sound in _SOUND_SET and type(steps) is list and len(steps) == step_count
                and _STEP_TYPES.issuperset(map(type, steps)) and _STEP_VALUES.issuperset(steps)):
            return None
    return _part_problem(part, step_count)


def _part_problem(part: object, step_count: int) -> Invalid | None:
    if not isinstance(part, dict):
        return Invalid("bad_part", f"part must be an object, got {type(part).__name__}")
    extra = set(part) - {"sound", "steps"}
    if extra:
        return Invalid("bad_part", f"unknown part field: {sorted(extra)[0]!r}")
    sound = part.get("sound")
    if sound not in SOUNDS:
        return Invalid("bad_part", f"sound must be one of {', '.join(SOUNDS)}, got {str(sound)[:40]!r}")
    steps = part.get("steps")
    if not isinstance(steps, list):
        return Invalid("bad_part", f"steps must be a list, got {type(steps).__name__}")
    if len(steps) != step_count:
        return Invalid("bad_part", f"steps must have {step_count} entries, got {len(steps)}")
    for index, value in enumerate(steps):
        if type(value) is not int or value not in (0, 1):
            return Invalid("bad_part", f"step {index} must be 0 or 1, got {str(value)[:20]}")
    return None


def empty_part(step_count: int, sound: str = "kick") -> Part:
    """A silent part: what a user owns before their first edit."""
    return {"sound": sound, "steps": [0] * step_count}


def copy_part(part: Mapping[str, Any]) -> Part:
    """A copy of a part that shares no list with the original."""
    return {"sound": part["sound"], "steps": list(part["steps"])}


def merge_at_sync(local: Mapping[str, Part], shared: Mapping[str, Part], me: str) -> Parts:
    """Local Data at a sync moment: every other user's part from ``shared``, ``me``'s from ``local``.

    This is client rule 2 of DESIGN.md. A user missing from ``shared`` is
    dropped (the server never deletes a part, so that only happens for users
    Local Data invented); ``me`` keeps the local part even when the server
    has none yet, since unconfirmed edits live there.
    """
    merged = {user: copy_part(part) for user, part in shared.items() if user != me}
    if me in local:
        merged[me] = copy_part(local[me])
    elif me in shared:
        merged[me] = copy_part(shared[me])
    return dict(sorted(merged.items()))


def differing_users(playing: Mapping[str, Part], pending: Mapping[str, Part], me: str) -> list[str]:
    """Other users whose part in ``pending`` differs from what is playing: what is coming next loop."""
    users = (set(playing) | set(pending)) - {me}
    return sorted(user for user in users if playing.get(user) != pending.get(user))
