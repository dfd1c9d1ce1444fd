"""Shared fixtures: a fake OpenAI upstream and `cumulo serve` as a real subprocess.

`cumulo` (session) is one gateway for the whole run, configured with one model
per upstream behaviour (`support.gateway_config`); tests that need their own
server (durability, shutdown) start one with `cumulo_factory`. Every test that
looks at usage makes its own caller key (`caller_key`) and filters on it.

Helpers live in the `support` and `fakes` packages, not here: test modules
import those, never `conftest` (another directory may have its own).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeOpenAIUpstream
from support import AZURE_KEY, UPSTREAM_KEY, ApiKey, CumuloServer, gateway_config, start_cumulo
from support.pg import postgres_database


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream() as fake:
        yield fake


@pytest.fixture(scope="session")
def cumulo_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., CumuloServer]]:
    """`factory(config, **env)` starts a server (`workdir`, `args` and `cafile` as
    `start_cumulo` takes them); all still running are stopped at the end."""
    started: list[CumuloServer] = []

    def factory(
        config: dict[str, Any],
        *,
        workdir: Path | None = None,
        args: tuple[str, ...] = (),
        cafile: Path | None = None,
        **env: str,
    ) -> CumuloServer:
        env = {"FAKE_UPSTREAM_KEY": UPSTREAM_KEY, "FAKE_AZURE_KEY": AZURE_KEY, **env}
        server = start_cumulo(
            config, workdir or tmp_path_factory.mktemp("cumulo"), args=args, cafile=cafile, **env
        )
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def cumulo(
    upstream: FakeOpenAIUpstream, cumulo_factory: Callable[..., CumuloServer]
) -> CumuloServer:
    """The shared gateway, in front of the fake upstream."""
    return cumulo_factory(gateway_config(upstream))


@pytest.fixture
def caller_key(cumulo: CumuloServer, request: pytest.FixtureRequest) -> ApiKey:
    """A fresh caller key, so the test can find exactly its own usage records."""
    return cumulo.create_key(request.node.name[:200])


@pytest.fixture
def marker() -> str:
    """A unique word to put in a prompt and find again at the upstream."""
    return "m" + secrets.token_hex(6)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test (`postgresql+asyncpg://` URL), dropped
    afterwards; the test fails, saying so, if PostgreSQL is not reachable (see `support.pg`)."""
    with postgres_database() as url:
        yield url
