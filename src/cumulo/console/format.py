"""Jinja filters: times, money, numbers and durations as the console shows them."""

from __future__ import annotations

import time
from typing import Any


def when(ts: Any) -> str:
    """A Unix time as `YYYY-MM-DD HH:MM:SS` UTC (blank for none)."""
    if ts is None:
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts)))
    except (ValueError, OverflowError, OSError):
        return "?"


def usd(value: Any) -> str:
    if value is None:
        return "unknown"
    v = float(value)
    if v == 0:
        return "$0"
    if abs(v) < 0.01:
        return f"${v:.6f}"
    return f"${v:,.4f}" if abs(v) < 1 else f"${v:,.2f}"


def number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def ms(value: Any) -> str:
    return "" if value is None else f"{float(value):,.0f} ms"


FILTERS = {"when": when, "usd": usd, "number": number, "ms": ms}
