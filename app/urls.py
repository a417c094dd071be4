"""Where a form may send the browser next: only back to this site."""
from __future__ import annotations

from urllib.parse import urlsplit


def safe_next(target: str | None, fallback: str) -> str:
    """``target`` if it is a same-site path, else ``fallback``: never redirect a user to
    another host. Browsers read a backslash as a slash and drop tabs and newlines, so
    ``/\\evil.example`` and ``/\\t/evil.example`` would leave the site too."""
    if not target or not target.startswith("/") or "\\" in target or any(ord(c) < 32 for c in target):
        return fallback
    parts = urlsplit(target)
    if target.startswith("//") or parts.scheme or parts.netloc:
        return fallback
    return target
