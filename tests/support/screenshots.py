"""The screenshots the README shows, kept in docs/screenshots by the browser tests.

Every run takes them again, from pages and emails rendered with fixed data and a fixed
clock, and writes beside each a text of what it shows (its words, and a digest of each
file that draws it). A picture is replaced only when that text changes: a change to a
page or an email updates its picture (commit both), while another machine's fonts or
chromium, which draw the same page a few pixels apart, leave the tree clean.
``SCREENSHOTS_DIR`` keeps them elsewhere (a read-only checkout, say).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def screenshots_dir() -> Path:
    directory = Path(os.environ.get("SCREENSHOTS_DIR") or ROOT / "docs" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def drawn_by(*paths: str) -> str:
    """A line per file (relative to the repository) with a digest of its bytes."""
    return "".join(f"{path} {hashlib.sha256((ROOT / path).read_bytes()).hexdigest()[:16]}\n" for path in paths)


def keep_screenshot(name: str, taken: Path, shows: str) -> Path:
    """Keep the picture ``taken`` as ``name`` unless the kept one shows the same ``shows``."""
    kept = screenshots_dir() / name
    record = kept.with_suffix(".txt")
    if not (kept.exists() and record.exists() and record.read_text(encoding="utf-8") == shows):
        shutil.copyfile(taken, kept)
        record.write_text(shows, encoding="utf-8")
    return kept
