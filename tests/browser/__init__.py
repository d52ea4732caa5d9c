"""Browser tests: real headless Chromium against a real loopsync server."""
