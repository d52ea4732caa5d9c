"""The six voices as the clock processor renders them (OfflineAudioContext): balanced, audible, and ending cleanly.

Each sound is rendered alone, one hit from frame 0, at 44.1 and 48 kHz.
"The hit" is the voice from its onset to its last sample. Figures (print
them with ``-s``) are in docs/page.md, "Sounds".
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

import pytest
from playwright.sync_api import Browser, Page

from .loopsync_browser import HERE, ServeProcess

SOUNDS = ["kick", "snare", "hat", "clap", "tom", "tone"]
SMALL_SPEAKER_HZ = 200.0
"""A phone's or laptop's speaker plays little below this: the check's high-pass corner."""


@pytest.fixture(scope="module")
def offline_page(browser: Browser, loopsync_server: ServeProcess) -> Iterator[Page]:
    """A served loopsync page with the offline render helper."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(loopsync_server.http_url + "?room=sounds")
    page.add_script_tag(path=str(HERE / "offline_render.js"))
    yield page
    context.close()


def hit(page: Page, sound: str, sample_rate: int) -> list[float]:
    """One hit of `sound`, rendered by the clock processor: from its onset to its last non-zero sample."""
    frames = sample_rate  # 1 s: longer than any voice; at 20 BPM the next step is 0.75 s away but never sounds
    result: dict[str, Any] = page.evaluate(
        "(options) => renderClock(options)",
        {"sampleRate": sample_rate, "frames": frames, "windows": [[0, frames]],
         "processorOptions": {"bpm": 20, "me": "me", "endStep": 1, "own": {"sound": sound, "steps": [1] + [0] * 15},
                              "script": [{"type": "play"}]}},
    )
    samples: list[float] = result["windows"][0]
    assert result["onsets"] == [0]
    last = max(index for index, sample in enumerate(samples) if sample != 0.0)
    assert all(sample == 0.0 for sample in samples[last + 1:])
    return samples[: last + 1]


def rms_db(samples: list[float]) -> float:
    return 10 * math.log10(sum(sample * sample for sample in samples) / len(samples))


def high_pass(samples: list[float], sample_rate: int, corner_hz: float) -> list[float]:
    """A second-order Butterworth high-pass (RBJ biquad): roughly what a small speaker leaves of a sound."""
    w = 2 * math.pi * corner_hz / sample_rate
    cos_w, alpha = math.cos(w), math.sin(w) / (2 * math.sqrt(0.5))
    b0, b1, b2 = (1 + cos_w) / 2, -(1 + cos_w), (1 + cos_w) / 2
    a0, a1, a2 = 1 + alpha, -2 * cos_w, 1 - alpha
    out: list[float] = []
    x1 = x2 = y1 = y2 = 0.0
    for x in samples:
        y = (b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2) / a0
        x2, x1, y2, y1 = x1, x, y1, y
        out.append(y)
    return out


@pytest.mark.parametrize("sample_rate", [44100, 48000])
def test_the_voices_are_balanced_audible_on_small_speakers_and_end_without_a_click(offline_page: Page, sample_rate: int) -> None:
    """RMS over each hit within 3 dB across the six sounds, within 8 dB through a 200 Hz high-pass; each decays 40 dB before a smooth end."""
    figures: dict[str, dict[str, float]] = {}
    for sound in SOUNDS:
        samples = hit(offline_page, sound, sample_rate)
        peak = max(abs(sample) for sample in samples)
        tail = samples[-int(0.025 * sample_rate):]  # the last 25 ms
        before_tail = samples[-int(0.030 * sample_rate):-int(0.025 * sample_rate)]
        figures[sound] = {
            "ms": round(len(samples) / sample_rate * 1000, 1),
            "rms_db": round(rms_db(samples), 2),
            "small_speaker_rms_db": round(rms_db(high_pass(samples, sample_rate, SMALL_SPEAKER_HZ)), 2),
            "peak_db": round(20 * math.log10(peak), 2),
            "before_end_db": round(20 * math.log10(max(abs(sample) for sample in before_tail) / peak), 1),
            "largest_step_in_tail": max(abs(b - a) for a, b in zip(tail, tail[1:])),
        }
    print(f"\nsounds at {sample_rate} Hz:", json.dumps(figures))
    levels = [figure["rms_db"] for figure in figures.values()]
    assert max(levels) - min(levels) <= 3.0, figures
    small = [figure["small_speaker_rms_db"] for figure in figures.values()]
    assert max(small) - min(small) <= 8.0, f"some sound vanishes on a small speaker: {figures}"
    for sound, figure in figures.items():
        # Decayed to 40 dB under its peak before its last 25 ms, which fade smoothly to exact zero.
        assert figure["before_end_db"] <= -40, (sound, figure)
        assert figure["largest_step_in_tail"] <= 10 ** (-40 / 20) * 10 ** (figure["peak_db"] / 20), (sound, figure)
        assert figure["peak_db"] < -3, f"{sound} leaves no headroom"


def test_the_hat_has_its_energy_where_ears_and_speakers_are(offline_page: Page) -> None:
    """The hat's energy sits mostly under 12 kHz (it was at 15-20 kHz): less than a quarter of it above 12 kHz."""
    sample_rate = 48000
    samples = hit(offline_page, "hat", sample_rate)
    total = sum(sample * sample for sample in samples)
    above = sum(sample * sample for sample in high_pass(high_pass(samples, sample_rate, 12000), sample_rate, 12000))
    assert above / total < 0.25, above / total
