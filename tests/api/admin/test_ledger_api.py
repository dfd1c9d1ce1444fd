"""GET /admin/ledger and /admin/ledger/verify over HTTP (in process), with the real key
check: a platform admin reads and verifies, a caller key is refused, tampering shows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request

from cumulo.api.admin import access
from cumulo.api.admin.ledger import ledger_routes
from cumulo.governance.audit.ledger import Ledger
from cumulo.governance.identity import keys
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store.db import Store

ADMIN = "admin-key-for-the-ledger-tests"


def scenario(tmp_path: Path, body: Any) -> Any:
    async def main() -> Any:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}")
        await store.migrate()
        caller = keys.generate()
        await store.add_key(caller.id, "app", "caller", keys.hash_secret(caller.secret))
        auth = Authenticator(store, env_admin_key=ADMIN)
        await auth.start()
        ledger = Ledger(store, MasterKey(bytes(range(32))))

        async def require_admin(request: Request) -> Principal:
            return await access.admin(auth, request)

        app = Starlette(routes=ledger_routes(ledger, require_admin))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://cumulo") as http:
                return await body(http, ledger, store, caller.token)
        finally:
            await ledger.close()
            await auth.close()
            await store.close()

    return asyncio.run(main())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_list_is_newest_first_and_pages(tmp_path: Path) -> None:
    async def body(http: httpx.AsyncClient, ledger: Ledger, store: Store, _: str) -> None:
        for i in range(5):
            await ledger.append("admin", "key.create", f"key{i}", "t1" if i % 2 else None)
        ledger.record("k1", "guardrail.block", "pii", "t1", {"guardrail": "pii"})  # queued

        first = (await http.get("/admin/ledger?limit=4", headers=bearer(ADMIN))).json()
        assert [e["seq"] for e in first["data"]] == [6, 5, 4, 3] and first["has_more"]
        assert first["data"][0]["action"] == "guardrail.block"
        assert set(first["data"][0]) == {
            "seq",
            "ts",
            "actor",
            "action",
            "target",
            "tenant_id",
            "data",
            "prev_hash",
            "hash",
        }
        rest = (await http.get("/admin/ledger?before_seq=3", headers=bearer(ADMIN))).json()
        assert [e["seq"] for e in rest["data"]] == [2, 1] and not rest["has_more"]
        forward = (await http.get("/admin/ledger?after_seq=4", headers=bearer(ADMIN))).json()
        assert [e["seq"] for e in forward["data"]] == [5, 6]
        tenant = (await http.get("/admin/ledger?tenant_id=t1", headers=bearer(ADMIN))).json()
        assert [e["seq"] for e in tenant["data"]] == [6, 4, 2]

        bad = await http.get("/admin/ledger?limit=0", headers=bearer(ADMIN))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"

    scenario(tmp_path, body)


def test_verify_reports_ok_then_the_first_bad_entry(tmp_path: Path) -> None:
    async def body(http: httpx.AsyncClient, ledger: Ledger, store: Store, _: str) -> None:
        for i in range(4):
            await ledger.append("admin", "tenant.update", f"t{i}", data={"n": i})
        good = await http.get("/admin/ledger/verify", headers=bearer(ADMIN))
        assert good.status_code == 200
        assert good.json()["ok"] is True and good.json()["entries_checked"] == 4
        assert good.json()["first_bad"] is None and good.json()["head"]["seq"] == 4

        async with store.engine.begin() as conn:
            await conn.exec_driver_sql("DELETE FROM ledger WHERE seq = 2")
        bad = (await http.get("/admin/ledger/verify", headers=bearer(ADMIN))).json()
        assert bad["ok"] is False and bad["entries_checked"] == 1
        assert bad["first_bad"]["seq"] == 2 and bad["first_bad"]["reason"] == "missing"

    scenario(tmp_path, body)


def test_a_repair_fails_verification_until_an_admin_acknowledges_it(tmp_path: Path) -> None:
    async def body(http: httpx.AsyncClient, ledger: Ledger, store: Store, caller: str) -> None:
        for i in range(4):
            await ledger.append("admin", "tenant.update", f"t{i}")
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql("DELETE FROM ledger WHERE seq >= 3")
            await conn.exec_driver_sql("DELETE FROM ledger_head")
        await ledger.append("admin", "key.create", "key9")  # the chain resumes: repair at 3
        failed = (await http.get("/admin/ledger/verify", headers=bearer(ADMIN))).json()
        assert failed["ok"] is False and failed["unacknowledged_repairs"] == [3]
        assert failed["first_bad"]["seq"] == 3 and failed["first_bad"]["reason"] == "repaired"

        path = "/admin/ledger/acknowledge"
        refused = await http.post(path, headers=bearer(caller), json={"seq": 3, "reason": "x"})
        assert refused.status_code == 403
        for bad, param in (
            ({"seq": 2, "reason": "not that one"}, "seq"),
            ({"seq": 3}, "reason"),
            ({"seq": 3, "reason": ""}, "reason"),
            ({"seq": 2**70, "reason": "x"}, "seq"),
        ):
            resp = await http.post(path, headers=bearer(ADMIN), json=bad)
            assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
        done = await http.post(
            path, headers=bearer(ADMIN), json={"seq": 3, "reason": "restored after a disk failure"}
        )
        assert done.status_code == 201, done.text
        entry = done.json()
        assert (entry["seq"], entry["action"], entry["actor"]) == (
            5,
            "ledger.acknowledged",
            "admin-env",
        )
        assert entry["data"] == {"seq": 3, "reason": "restored after a disk failure"}
        ok = (await http.get("/admin/ledger/verify", headers=bearer(ADMIN))).json()
        assert ok["ok"] is True and ok["unacknowledged_repairs"] == []
        assert any("acknowledged entry 3" in w for w in ok["warnings"])

    scenario(tmp_path, body)


def test_only_platform_admins_may_read_the_ledger(tmp_path: Path) -> None:
    async def body(http: httpx.AsyncClient, ledger: Ledger, store: Store, caller: str) -> None:
        await ledger.append("admin", "key.create", "key1")
        for path in ("/admin/ledger", "/admin/ledger/verify"):
            anonymous = await http.get(path)
            assert anonymous.status_code == 401
            refused = await http.get(path, headers=bearer(caller))
            assert refused.status_code == 403
            assert refused.json()["error"]["type"] == "permission_error"

    scenario(tmp_path, body)
