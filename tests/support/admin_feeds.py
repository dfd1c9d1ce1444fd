"""`GET /admin/alerts` and `GET /admin/invocations` over a test store, with fixed callers.

`feeds_client(url)` serves the routes of `api/admin/alerts` over the store at `url` and
yields a `TestClient`; `get(client, path, token)` calls it as one of `PRINCIPALS` (a
platform admin, a tenant admin of t1, a caller of t1; any other token is refused).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.testclient import TestClient

from cumulo.api.admin.alerts import routes
from cumulo.errors import AuthenticationFailed
from cumulo.governance.audit.invocations import InvocationLog
from cumulo.governance.telemetry.alerts import AlertSink
from cumulo.store.db import Store


@dataclass(frozen=True)
class Who:
    role: str
    tenant_id: str | None


PRINCIPALS = {
    "admin": Who("admin", None),
    "ta1": Who("tenant_admin", "t1"),
    "caller1": Who("caller", "t1"),
}


async def authenticate(request: Request) -> Who:
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    if token not in PRINCIPALS:
        raise AuthenticationFailed("Invalid API key.")
    return PRINCIPALS[token]


def get(client: TestClient, path: str, token: str) -> tuple[int, dict[str, object]]:
    res = client.get(path, headers={"authorization": f"Bearer {token}"})
    return res.status_code, res.json()


@contextmanager
def feeds_client(url: str) -> Iterator[TestClient]:
    """The alert and invocation endpoints over the store at `url`, for the test to call."""
    store = Store(url)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await store.close()

    app = Starlette(
        routes=routes(authenticate, AlertSink(store), InvocationLog(store)), lifespan=lifespan
    )
    with TestClient(app) as client:
        yield client
