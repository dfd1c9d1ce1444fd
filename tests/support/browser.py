"""Debian's system Chromium for the console's browser tests, and their screenshots.

Playwright drives the browser at `CUMULO_CHROMIUM`, else `chromium` on PATH; it never
downloads one (`.ci/run` installs Debian's `chromium` package). Screenshots of the pages
go to `artifacts/console/` (not versioned), for people to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"


def chromium_path() -> str:
    """The system Chromium; AssertionError saying how to install it when there is none."""
    found = os.environ.get("CUMULO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        raise AssertionError("the console's browser tests need Chromium: apt-get install chromium")
    return found


def shot(page: Any, name: str) -> None:
    """A full-page screenshot of `page` as artifacts/console/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
