"""`cumulo serve` on PostgreSQL: two workers sharing one database, end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from cumulo.store.db import Store
from fakes import FakeOpenAIUpstream
from support import UPSTREAM_KEY, openai_deployment, start_cumulo, wait_until

PASSWORD = "pg-Pa55word-in-the-url"  # the local server trusts 127.0.0.1, so any password works


def test_cumulo_serves_on_postgresql(
    upstream: FakeOpenAIUpstream, postgres_url: str, tmp_path: Path
) -> None:
    url = postgres_url.replace(
        "postgresql+asyncpg://postgres@", f"postgresql://postgres:{PASSWORD}@"
    )
    config = {
        "database_url": url,
        "server": {"workers": 2},
        "usage": {"flush_interval_s": 0.1},
        "models": [{"name": "chat-echo", "deployments": [openai_deployment(upstream, "echo")]}],
    }
    server = start_cumulo(config, tmp_path, FAKE_UPSTREAM_KEY=UPSTREAM_KEY)
    try:
        key = server.create_key("pg-caller")
        auth = {"Authorization": f"Bearer {key.token}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as http:
            # The key was made by one worker; every worker finds it in the database.
            assert wait_until(
                lambda: all(http.get("/v1/models").status_code == 200 for _ in range(6)), 10
            )
            assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["chat-echo"]
            reply = http.post(
                "/v1/chat/completions",
                json={
                    "model": "chat-echo",
                    "messages": [{"role": "user", "content": "hello postgres"}],
                },
            )
            assert reply.status_code == 200, reply.text
        with server.admin() as admin:
            assert wait_until(
                lambda: any(
                    r["key"] == key.id and r["requests"] >= 1
                    for r in admin.get("/admin/usage").json()["by_key"]
                ),
                10,
            )
    finally:
        assert server.stop() == 0
    assert PASSWORD not in server.output()

    async def stored() -> tuple[list[str], int]:
        store = Store(postgres_url)
        try:
            names = [k.name for k in await store.list_keys()]
            summary = await store.usage_summary()
            [mine] = [r for r in summary["by_key"] if r["key"] == key.id]
            return names, mine["requests"]
        finally:
            await store.close()

    names, requests = asyncio.run(stored())
    assert "pg-caller" in names
    assert requests >= 1
