"""Where the browser tests leave the screenshots the README shows.

They are retaken on every run, from pages and emails the app renders with fixed data
and a fixed clock, so a run changes a file only when what it shows has changed: commit
it then. ``SCREENSHOTS_DIR`` sends them elsewhere (a read-only checkout, say).
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def screenshot_path(name: str) -> Path:
    """The file for screenshot ``name`` (its directory made if need be)."""
    directory = Path(os.environ.get("SCREENSHOTS_DIR") or ROOT / "docs" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name
