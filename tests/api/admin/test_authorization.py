"""The authorization matrix: every role x every admin endpoint x own and another tenant.

Two tenants, A and B. Each role (platform admin, tenant admin, caller) of tenant A
calls every admin endpoint once on tenant A's objects and once on tenant B's. A
platform admin may do everything; a tenant admin may manage its own tenant's keys
and read its own tenant, usage, alerts and logs, and gets 404 (never a hint) for
anything of tenant B's; a caller gets 403 everywhere. Lists never leak another
tenant's rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from support import CumuloServer


@dataclass
class Tenant:
    id: str
    tenant_admin: str
    caller: str


def client(cumulo: CumuloServer, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=cumulo.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


_names = itertools.count()


def make_tenant(admin: httpx.Client, label: str) -> Tenant:
    resp = admin.post("/admin/tenants", json={"name": f"{label}-{next(_names)}-{id(admin)}"})
    assert resp.status_code == 201, resp.text
    tid = resp.json()["id"]
    keys = {}
    for role in ("tenant_admin", "caller"):
        r = admin.post(
            "/admin/keys", json={"name": f"{label}-{role}", "tenant_id": tid, "role": role}
        )
        assert r.status_code == 201, r.text
        keys[role] = r.json()["key"]
    return Tenant(tid, keys["tenant_admin"], keys["caller"])


@pytest.fixture(scope="module")
def admin(cumulo: CumuloServer) -> Iterator[httpx.Client]:
    with cumulo.admin() as c:
        yield c


@pytest.fixture(scope="module")
def tenants(admin: httpx.Client) -> dict[str, Tenant]:
    return {"A": make_tenant(admin, "matrix-a"), "B": make_tenant(admin, "matrix-b")}


# Each endpoint: (name, who may call it, request builder). Builders get the admin client
# (to create fresh targets) and the target tenant's id, and return (method, path, json).
Request = tuple[str, str, dict[str, Any] | None]
Builder = Callable[[httpx.Client, str], Request]


def fresh_key(admin: httpx.Client, tenant_id: str) -> str:
    r = admin.post("/admin/keys", json={"name": "target", "tenant_id": tenant_id})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def fresh_tenant(admin: httpx.Client, _tenant_id: str) -> str:
    r = admin.post("/admin/tenants", json={"name": f"doomed-{next(_names)}-{id(admin)}"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


MANAGER = "tenant"  # platform admin, or the tenant's own admin
ADMIN = "admin"  # platform admin only

ENDPOINTS: list[tuple[str, str, Builder]] = [
    ("create key", MANAGER, lambda a, t: ("POST", "/admin/keys", {"name": "new", "tenant_id": t})),
    ("list keys", MANAGER, lambda a, t: ("GET", f"/admin/keys?tenant_id={t}", None)),
    ("revoke key", MANAGER, lambda a, t: ("DELETE", f"/admin/keys/{fresh_key(a, t)}", None)),
    (
        "rotate key",
        MANAGER,
        lambda a, t: ("POST", f"/admin/keys/{fresh_key(a, t)}/rotate", {"grace_s": 10}),
    ),
    ("read tenant", MANAGER, lambda a, t: ("GET", f"/admin/tenants/{t}", None)),
    (
        "change tenant",
        ADMIN,
        lambda a, t: ("PATCH", f"/admin/tenants/{t}", {"log_invocations": False}),
    ),
    ("delete tenant", ADMIN, lambda a, t: ("DELETE", f"/admin/tenants/{fresh_tenant(a, t)}", None)),
    (
        "create tenant",
        ADMIN,
        lambda a, t: ("POST", "/admin/tenants", {"name": f"new-{next(_names)}-{id(a)}"}),
    ),
    ("usage", MANAGER, lambda a, t: ("GET", f"/admin/usage?tenant_id={t}", None)),
    ("guardrails", MANAGER, lambda a, t: ("GET", "/admin/guardrails", None)),
    ("alerts", MANAGER, lambda a, t: ("GET", f"/admin/alerts?tenant_id={t}", None)),
    ("invocations", MANAGER, lambda a, t: ("GET", f"/admin/invocations?tenant_id={t}", None)),
    ("ledger", ADMIN, lambda a, t: ("GET", "/admin/ledger", None)),
    ("verify ledger", ADMIN, lambda a, t: ("GET", "/admin/ledger/verify", None)),
    ("deployments", ADMIN, lambda a, t: ("GET", "/admin/deployments", None)),
    ("engine", ADMIN, lambda a, t: ("GET", "/admin/engine", None)),
]


UNSCOPED = {"guardrails"}  # the same for every tenant: no other tenant to probe


def expected(role: str, own: bool, who_may: str, name: str = "") -> set[int]:
    if role == "admin":
        return {200, 201}
    if role == "caller":
        return {403}
    if who_may == ADMIN:
        return {403}
    return {200, 201} if own or name in UNSCOPED else {404}


@pytest.mark.parametrize("role", ["admin", "tenant_admin", "caller"])
@pytest.mark.parametrize("own", [True, False], ids=["own-tenant", "other-tenant"])
@pytest.mark.parametrize(("name", "who_may", "build"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_matrix(
    cumulo: CumuloServer,
    admin: httpx.Client,
    tenants: dict[str, Tenant],
    role: str,
    own: bool,
    name: str,
    who_may: str,
    build: Builder,
) -> None:
    target = tenants["A" if own else "B"]
    method, path, body = build(admin, target.id)
    token = {
        "admin": cumulo.admin_key,
        "tenant_admin": tenants["A"].tenant_admin,
        "caller": tenants["A"].caller,
    }[role]
    with client(cumulo, token) as http:
        resp = http.request(method, path, json=body)
    assert resp.status_code in expected(role, own, who_may, name), (
        name,
        resp.status_code,
        resp.text,
    )
    if resp.status_code >= 400:
        assert resp.json()["error"]["message"]
    if role == "tenant_admin" and not own:
        assert tenants["B"].id not in resp.text or resp.status_code == 404


def test_tenant_admin_lists_only_its_own_tenant(
    cumulo: CumuloServer, admin: httpx.Client, tenants: dict[str, Tenant]
) -> None:
    a, b = tenants["A"], tenants["B"]
    with client(cumulo, a.caller) as http:  # some usage in A
        http.post(
            "/v1/chat/completions",
            json={"model": "chat-echo", "messages": [{"role": "user", "content": "hi"}]},
        )
    with client(cumulo, b.caller) as http:  # and in B
        http.post(
            "/v1/chat/completions",
            json={"model": "chat-echo", "messages": [{"role": "user", "content": "hi"}]},
        )
    with client(cumulo, a.tenant_admin) as http:
        keys = http.get("/admin/keys").json()["data"]
        assert keys and {k["tenant_id"] for k in keys} == {a.id}
        listed = http.get("/admin/tenants").json()["data"]
        assert [t["id"] for t in listed] == [a.id]
        usage = http.get("/admin/usage").json()
        assert {row["tenant"] for row in usage["by_tenant"]} <= {a.id}
        key_ids = {row["key"] for row in usage["by_key"]}
        assert key_ids and all(k in {x["id"] for x in keys} for k in key_ids)
    with client(cumulo, cumulo.admin_key) as http:
        everything = http.get("/admin/usage").json()
        assert {a.id, b.id} <= {row["tenant"] for row in everything["by_tenant"]}


def test_a_tenant_admin_cannot_mint_admin_keys_or_escape_its_tenant(
    cumulo: CumuloServer, tenants: dict[str, Tenant]
) -> None:
    with client(cumulo, tenants["A"].tenant_admin) as http:
        resp = http.post("/admin/keys", json={"name": "x", "role": "admin"})
        assert resp.status_code == 403 and resp.json()["error"]["param"] == "role"
        resp = http.post("/admin/keys", json={"name": "x"})  # no tenant given: its own
        assert resp.status_code == 201 and resp.json()["tenant_id"] == tenants["A"].id


def test_keys_of_a_deleted_tenant_stop_working(cumulo: CumuloServer, admin: httpx.Client) -> None:
    t = make_tenant(admin, "deleted")
    with client(cumulo, t.caller) as http:
        assert http.get("/v1/models").status_code == 200
        assert admin.delete(f"/admin/tenants/{t.id}").status_code == 200
        assert http.get("/v1/models").status_code == 401
