"""What the command groups share: the client context, option sets and table output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from cumulo.client import Client

DEFAULT_URL = "http://127.0.0.1:8080"


class Ctx:
    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        self.key = key

    def client(self) -> Client:
        return Client(self.url, self.key)


pass_ctx = click.make_pass_decorator(Ctx)


def limits(rpm: int | None, tpm: int | None, concurrency: int | None) -> dict[str, int] | None:
    given = {"rpm": rpm, "tpm": tpm, "concurrency": concurrency}
    return {k: v for k, v in given.items() if v is not None} or None


_limit_options = [
    click.option("--rpm", type=int, help="Requests per minute."),
    click.option("--tpm", type=int, help="Tokens per minute."),
    click.option("--concurrency", type=int, help="Requests at once."),
    click.option("--model", "models", multiple=True, help="A model it may use (repeatable)."),
]


def limit_options(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_limit_options):
        f = option(f)
    return f


def table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
