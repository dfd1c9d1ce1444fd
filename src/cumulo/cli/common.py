"""What the command groups share: the client context, option sets, times and table output."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cumulo.client import Client, ClientError

DEFAULT_URL = "http://127.0.0.1:8080"
NO_KEY = (
    "no API key: give it with --key KEY, or set CUMULO_API_KEY "
    "(CUMULO_ADMIN_KEY is used when that is unset)"
)


class Ctx:
    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        self.key = key

    def client(self) -> Client:
        """A client of the running platform; every client command needs a key."""
        if not self.key:
            raise ClientError(NO_KEY)
        return Client(self.url, self.key)


pass_ctx = click.make_pass_decorator(Ctx)


def limits(rpm: int | None, tpm: int | None, concurrency: int | None) -> dict[str, int] | None:
    given = {"rpm": rpm, "tpm": tpm, "concurrency": concurrency}
    return {k: v for k, v in given.items() if v is not None} or None


_POSITIVE = click.IntRange(min=1)

_limit_options = [
    click.option("--rpm", type=_POSITIVE, metavar="N", help="Requests per minute."),
    click.option("--tpm", type=_POSITIVE, metavar="N", help="Tokens per minute."),
    click.option("--concurrency", type=_POSITIVE, metavar="N", help="Requests at once."),
    click.option(
        "--model",
        "models",
        multiple=True,
        metavar="NAME",
        help="A model it may use (repeatable; default: all).",
    ),
]

_budget_options = [
    click.option(
        "--budget-usd",
        type=click.FloatRange(min=0, min_open=True),
        metavar="USD",
        help="Budget in US dollars per period.",
    ),
    click.option(
        "--budget-period",
        type=click.Choice(["day", "month"]),
        help="The budget's period, a UTC calendar day or month [default: month].",
    ),
    click.option(
        "--budget-soft-pct",
        type=click.FloatRange(0, 1, min_open=True),
        metavar="SHARE",
        help="Share of the budget at which an alert is raised [default: 0.8].",
    ),
]


def _apply(options: list[Callable[[Any], Any]], f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(options):
        f = option(f)
    return f


def limit_options(f: Callable[..., None]) -> Callable[..., None]:
    """--rpm, --tpm, --concurrency and --model (repeatable)."""
    return _apply(_limit_options, f)


def budget_options(f: Callable[..., None]) -> Callable[..., None]:
    """--budget-usd, --budget-period and --budget-soft-pct."""
    return _apply(_budget_options, f)


def budget(
    usd: float | None, period: str | None, soft_pct: float | None, current: Any = None
) -> dict[str, Any] | None:
    """The budget the options describe, over `current` (a budget already set), or None
    when they give no amount and there is none."""
    base = dict(current) if isinstance(current, dict) else {}
    if usd is None and not base:
        if period is not None or soft_pct is not None:
            raise click.UsageError("--budget-period and --budget-soft-pct need --budget-usd")
        return None
    given = {"usd": usd, "period": period, "soft_pct": soft_pct}
    return {**base, **{k: v for k, v in given.items() if v is not None}}


json_option = click.option("--json", "as_json", is_flag=True, help="Print the server's JSON.")


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def when(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """An option's point in time, as Unix seconds: `30m`, `24h` or `7d` ago, an ISO date or
    time (UTC unless it says otherwise), or Unix seconds (an option callback)."""
    if value is None:
        return None
    text = value.strip()
    if m := _DURATION.match(text):
        return time.time() - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time: give e.g. 24h, 7d, 2025-01-31 or 2025-01-31T12:00"
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def iso(ts: float | None) -> str:
    """A Unix time as `2025-01-31T12:00:00Z` (or `-`)."""
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def this_program() -> str:
    """How to run this `cumulo` from here: `cumulo` when it is the one on PATH, else its
    path (`.venv/bin/cumulo` under `make serve`, where the venv is not activated)."""
    program = Path(sys.argv[0]).resolve()
    on_path = shutil.which("cumulo")
    if on_path and Path(on_path).resolve() == program:
        return "cumulo"
    relative = os.path.relpath(program)
    return str(program) if relative.startswith("..") else relative
