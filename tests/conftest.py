"""Fixtures every test folder shares."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def headless_probe(tmp_path: Path) -> Callable[[Path, str], dict[str, Any]]:
    """``probe(page, script)``: open ``page`` in headless Chromium with ``script`` (ending in ``</body>``) put in
    place of its ``</body>``, and return the JSON the script wrote into ``<pre id="probe">``. Skips without Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium)")

    def probe(page: Path, script: str) -> dict[str, Any]:
        page.write_text(page.read_text().replace("</body>", script))
        command = [  # the flags a closed network needs: no background connections, a fresh profile
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom",
            page.as_uri(),
        ]
        dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
        match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
        assert match, dom[-2000:]
        return json.loads(html.unescape(match.group(1)))

    return probe
