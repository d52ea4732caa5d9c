"""web/rules.js runs the shared JSON vectors of tests/vectors/ in real Chromium.

The same files run against the Python core in tests/test_vectors.py, so the
browser's copy of the rules cannot drift from document.py and sync.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from .loopsync_browser import HERE, ServeProcess
from playwright.sync_api import Browser

VECTORS = HERE.parent / "vectors"


def _load(name: str) -> object:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def test_rules_js_passes_every_shared_vector(browser: Browser, loopsync_server: ServeProcess) -> None:
    """checkName, checkPart, mergeAtSync, differingUsers, every ClientSync and PresenceTable scenario give the vectors' answers."""
    files = {"names": "names.json", "parts": "parts.json", "merge": "merge.json", "client": "client.json", "presence": "presence.json"}
    vectors = {key: _load(name) for key, name in files.items()}
    expected_count = (
        len(vectors["names"]["cases"]) + len(vectors["parts"]["cases"])  # type: ignore[index]
        + len(vectors["merge"]["merge_at_sync"]) + len(vectors["merge"]["differing_users"])  # type: ignore[index]
        + len(vectors["client"]["scenarios"]) + len(vectors["presence"]["scenarios"])  # type: ignore[index]
    )
    assert sorted(path.name for path in Path(VECTORS).glob("*.json")) == sorted(files.values()), "a vector file is not run"
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(loopsync_server.http_url + "?room=vectors")
        page.add_script_tag(path=str(HERE / "run_vectors.js"))
        result = page.evaluate("async (vectors) => runVectors(await import('/rules.js'), vectors)", vectors)
    finally:
        context.close()
    assert result["failures"] == []
    assert result["ran"] == expected_count
