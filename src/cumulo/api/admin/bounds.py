"""Bounds on what the admin API reads and renders.

Query parameters are checked into range (a 400 naming the parameter), so that nothing
out of range reaches the database. Stored rows are rendered defensively: a value JSON
cannot carry (e.g. an integer past 64 bits, stored before bounds were checked) is shown
as null with a log line, so one bad row never turns a listing into a 500.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from starlette.requests import Request

from cumulo.errors import InvalidRequest

log = logging.getLogger(__name__)
INT64_MAX = 2**63 - 1


def renderable(item: dict[str, Any], kind: str) -> dict[str, Any]:
    """`item` (one stored row's view) as it can be sent: a field JSON cannot carry (an
    integer past 64 bits, a row written before its bounds were checked) is shown as null
    and named in `unreadable`, with a log line; one bad row never fails a whole answer."""
    try:
        orjson.dumps(item)
        return item
    except (orjson.JSONEncodeError, TypeError):
        pass
    out: dict[str, Any] = {}
    unreadable = []
    for name, value in item.items():
        try:
            orjson.dumps(value)
            out[name] = value
        except (orjson.JSONEncodeError, TypeError):
            out[name] = None
            unreadable.append(name)
    out["unreadable"] = unreadable
    log.warning(
        "%s %s: stored %s cannot be rendered as JSON; shown as null",
        kind,
        item.get("id", item.get("seq")),
        ", ".join(unreadable),
    )
    return out


def query_int(request: Request, name: str, low: int = 0, high: int = INT64_MAX) -> int | None:
    """Query parameter `name` as an integer in [low, high] (absent: None), else a 400."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}.", param=name)
    return value


def query_time(request: Request, name: str) -> float | None:
    """Query parameter `name` as a Unix time in seconds (absent: None), else a 400."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1e11:  # NaN fails too; 1e11 s is the year 5138
        raise InvalidRequest(f"'{name}' must be a Unix time in seconds.", param=name)
    return value


def query_bool(request: Request, name: str) -> bool:
    """Query parameter `name`: `true`/`1` or `false`/`0` (absent: false), else a 400."""
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "1", "false", "0"):
        raise InvalidRequest(f"'{name}' must be true or false.", param=name)
    return raw in ("true", "1")
