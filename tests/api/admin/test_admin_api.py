"""The admin API: keys (shown once, stored hashed, revocable) and usage summaries."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from support import ApiKey, CumuloServer, wait_until

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def admin(cumulo: CumuloServer) -> Iterator[httpx.Client]:
    with cumulo.admin() as c:
        yield c


def as_key(cumulo: CumuloServer, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=cumulo.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_create_key_shows_the_secret_once_and_stores_only_its_hash(
    cumulo: CumuloServer, admin: httpx.Client
) -> None:
    resp = admin.post("/admin/keys", json={"name": "billing-service"})
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["name"] == "billing-service" and created["role"] == "caller"
    token = created["key"]
    assert token.startswith(f"ck-{created['id']}.")
    secret = token.split(".", 1)[1]
    assert len(secret) >= 32

    listed = admin.get("/admin/keys")
    assert listed.status_code == 200
    [row] = [k for k in listed.json()["data"] if k["id"] == created["id"]]
    assert row["name"] == "billing-service" and row["revoked_at"] is None
    assert secret not in listed.text
    assert "key" not in row and "secret_hash" not in row

    # Everything cumulo keeps on disk: the secret is not in it, its SHA-256 is.
    stored = b"".join(p.read_bytes() for p in cumulo.home.rglob("*") if p.is_file())
    assert secret.encode() not in stored
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored


def test_a_new_key_works_at_once_and_is_refused_once_revoked(
    cumulo: CumuloServer, admin: httpx.Client
) -> None:
    created = admin.post("/admin/keys", json={"name": "short-lived"}).json()
    with as_key(cumulo, created["key"]) as caller:
        assert caller.get("/v1/models").status_code == 200
        ok = caller.post("/v1/chat/completions", json={"model": "chat-echo", "messages": HELLO})
        assert ok.status_code == 200

        revoked = admin.delete(f"/admin/keys/{created['id']}")
        assert revoked.status_code == 200
        assert revoked.json() == {"id": created["id"], "revoked": True}

        for resp in (
            caller.get("/v1/models"),
            caller.post("/v1/chat/completions", json={"model": "chat-echo", "messages": HELLO}),
        ):
            assert resp.status_code == 401
            assert resp.json()["error"]["type"] == "authentication_error"

    active = [k["id"] for k in admin.get("/admin/keys").json()["data"]]
    assert created["id"] not in active
    everything = admin.get("/admin/keys", params={"include_revoked": "true"}).json()["data"]
    [row] = [k for k in everything if k["id"] == created["id"]]
    assert row["revoked_at"] is not None

    again = admin.delete(f"/admin/keys/{created['id']}")
    assert again.status_code == 404


def test_revoking_an_unknown_key_is_404(admin: httpx.Client) -> None:
    resp = admin.delete("/admin/keys/0000000000000000")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "key_not_found"


def test_a_caller_key_cannot_use_the_admin_api(cumulo: CumuloServer, admin: httpx.Client) -> None:
    caller = cumulo.create_key("nosy")
    other = cumulo.create_key("victim")
    with as_key(cumulo, caller.token) as c:
        for resp in (
            c.get("/admin/keys"),
            c.post("/admin/keys", json={"name": "mine", "role": "admin"}),
            c.delete(f"/admin/keys/{other.id}"),
            c.get("/admin/usage"),
        ):
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["type"] == "permission_error"
    # Nothing changed: the other key still works and no key was created.
    with as_key(cumulo, other.token) as c:
        assert c.get("/v1/models").status_code == 200
    assert "mine" not in [k["name"] for k in admin.get("/admin/keys").json()["data"]]


def test_an_admin_key_created_through_the_api_can_administer(cumulo: CumuloServer) -> None:
    second_admin = cumulo.create_key("ops", role="admin")
    with as_key(cumulo, second_admin.token) as c:
        created = c.post("/admin/keys", json={"name": "made-by-ops"})
        assert created.status_code == 201
        assert c.delete(f"/admin/keys/{created.json()['id']}").status_code == 200


def test_the_admin_api_needs_a_key(cumulo: CumuloServer) -> None:
    with httpx.Client(base_url=cumulo.url) as anon:
        assert anon.get("/admin/keys").status_code == 401
        assert anon.post("/admin/keys", json={"name": "x"}).status_code == 401


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "x", "scopes": ["all"]}, "scopes"),
        ({"name": 5}, "name"),
    ],
)
def test_create_key_validation(admin: httpx.Client, body: dict[str, object], param: str) -> None:
    resp = admin.post("/admin/keys", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_create_key_with_invalid_json_is_400(admin: httpx.Client) -> None:
    resp = admin.post("/admin/keys", content=b"{name", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400


def test_last_used_is_tracked(cumulo: CumuloServer, admin: httpx.Client) -> None:
    key = cumulo.create_key("tracked")

    def last_used() -> float | None:
        rows = admin.get("/admin/keys").json()["data"]
        return next(k["last_used_at"] for k in rows if k["id"] == key.id)

    assert last_used() is None
    before = time.time()
    with as_key(cumulo, key.token) as c:
        c.get("/v1/models")
    assert wait_until(lambda: last_used() is not None, timeout=5)
    assert last_used() >= before - 1  # type: ignore[operator]


def test_usage_summary_per_key_and_per_model(cumulo: CumuloServer, admin: httpx.Client) -> None:
    since = time.time()
    a, b = cumulo.create_key("team-a"), cumulo.create_key("team-b")
    with as_key(cumulo, a.token) as c:
        for _ in range(2):
            assert (
                c.post(
                    "/v1/chat/completions", json={"model": "chat-echo", "messages": HELLO}
                ).status_code
                == 200
            )
        assert (
            c.post(
                "/v1/chat/completions", json={"model": "chat-500", "messages": HELLO}
            ).status_code
            == 502
        )
    with as_key(cumulo, b.token) as c:
        assert (
            c.post(
                "/v1/embeddings", json={"model": "embed", "input": ["one two", "three"]}
            ).status_code
            == 200
        )

    resp = admin.get("/admin/usage", params={"since": since})
    assert resp.status_code == 200
    summary = resp.json()
    by_key = {r["key"]: r for r in summary["by_key"]}
    assert set(by_key) == {a.id, b.id}
    assert (by_key[a.id]["requests"], by_key[a.id]["errors"]) == (3, 1)
    assert (by_key[a.id]["prompt_tokens"], by_key[a.id]["completion_tokens"]) == (4, 6)
    assert by_key[a.id]["avg_latency_ms"] > 0
    assert (by_key[b.id]["requests"], by_key[b.id]["errors"], by_key[b.id]["prompt_tokens"]) == (
        1,
        0,
        3,
    )
    by_model = {r["model"]: r for r in summary["by_model"]}
    assert set(by_model) == {"chat-echo", "chat-500", "embed"}
    assert (by_model["chat-echo"]["requests"], by_model["chat-echo"]["errors"]) == (2, 0)
    assert (by_model["chat-500"]["requests"], by_model["chat-500"]["errors"]) == (1, 1)

    everything = admin.get("/admin/usage").json()
    total = sum(r["requests"] for r in everything["by_key"])
    assert total >= 4 and total == sum(r["requests"] for r in everything["by_model"])


def test_usage_since_must_be_a_number(admin: httpx.Client) -> None:
    resp = admin.get("/admin/usage", params={"since": "yesterday"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "since"


def test_rotation_issues_a_new_key_and_the_old_one_expires_after_its_grace(
    cumulo: CumuloServer, admin: httpx.Client
) -> None:
    tenant = admin.post("/admin/tenants", json={"name": f"rotating-{time.time_ns()}"}).json()
    old = admin.post(
        "/admin/keys", json={"name": "svc", "tenant_id": tenant["id"], "models": ["chat-echo"]}
    ).json()
    resp = admin.post(f"/admin/keys/{old['id']}/rotate", json={"grace_s": 3600})
    assert resp.status_code == 201, resp.text
    new = resp.json()
    assert new["id"] != old["id"] and new["replaces"] == old["id"]
    assert (new["name"], new["tenant_id"], new["models"]) == ("svc", tenant["id"], ["chat-echo"])
    for token in (old["key"], new["key"]):  # both work during the grace period
        with as_key(cumulo, token) as c:
            assert (
                c.post(
                    "/v1/chat/completions", json={"model": "chat-echo", "messages": HELLO}
                ).status_code
                == 200
            )
    listed = {k["id"]: k for k in admin.get("/admin/keys").json()["data"]}
    assert listed[old["id"]]["expires_at"] == pytest.approx(new["old_expires_at"])

    # Rotating again with no grace: the previous key stops at once.
    newer = admin.post(f"/admin/keys/{new['id']}/rotate", json={"grace_s": 0}).json()
    with as_key(cumulo, new["key"]) as c:
        resp = c.get("/v1/models")
        assert resp.status_code == 401 and "expired" in resp.json()["error"]["message"]
    with as_key(cumulo, newer["key"]) as c:
        assert c.get("/v1/models").status_code == 200


def test_a_key_is_rotated_once_and_never_once_expired_or_revoked(
    cumulo: CumuloServer, admin: httpx.Client
) -> None:
    def rotate(key_id: str, grace_s: float = 3600) -> httpx.Response:
        return admin.post(f"/admin/keys/{key_id}/rotate", json={"grace_s": grace_s})

    def live_named(name: str) -> list[str]:
        return [k["id"] for k in admin.get("/admin/keys").json()["data"] if k["name"] == name]

    in_grace = admin.post("/admin/keys", json={"name": "rot-grace"}).json()
    assert rotate(in_grace["id"]).status_code == 201
    again = rotate(in_grace["id"])
    assert again.status_code == 400, again.text
    assert again.json()["error"]["code"] == "key_already_rotated"

    expired = admin.post("/admin/keys", json={"name": "rot-expired"}).json()
    assert rotate(expired["id"], grace_s=0).status_code == 201
    for _ in range(5):
        resp = rotate(expired["id"])
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "key_not_found"
    assert len(live_named("rot-expired")) == 2  # the expired one and its one successor

    revoked = admin.post("/admin/keys", json={"name": "rot-revoked"}).json()
    assert admin.delete(f"/admin/keys/{revoked['id']}").status_code == 200
    assert rotate(revoked["id"]).status_code == 404

    # Rotations of one key at once: one wins, the others are refused and add nothing.
    raced = admin.post("/admin/keys", json={"name": "rot-race"}).json()
    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(r.status_code for r in pool.map(lambda _: rotate(raced["id"]), range(6)))
    assert statuses == [201, 400, 400, 400, 400, 400]
    assert len(live_named("rot-race")) == 2


def test_made_up_model_names_share_one_usage_row(
    cumulo: CumuloServer, admin: httpx.Client, caller_key: ApiKey
) -> None:
    """A caller cannot grow the usage tables' model column by inventing names."""
    names = [f"junk-{i}-{time.time_ns()}" for i in range(3)]
    with as_key(cumulo, caller_key.token) as c:
        for name in names:
            resp = c.post("/v1/chat/completions", json={"model": name, "messages": HELLO})
            assert resp.status_code == 404
    rows = cumulo.usage_rows(caller_key.id, expect=3)
    assert [r["model"] for r in rows] == ["_unknown"] * 3
    by_model = {m["model"] for m in admin.get("/admin/usage").json()["by_model"]}
    assert "_unknown" in by_model and not by_model & set(names)


def test_a_key_narrowed_to_some_models_sees_and_uses_only_those(
    cumulo: CumuloServer, admin: httpx.Client
) -> None:
    key = admin.post("/admin/keys", json={"name": "narrow", "models": ["chat-echo"]}).json()
    with as_key(cumulo, key["key"]) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["chat-echo"]
        assert c.get("/v1/models/chat-tools").status_code == 404
        resp = c.post("/v1/chat/completions", json={"model": "chat-tools", "messages": HELLO})
        assert resp.status_code == 404 and resp.json()["error"]["param"] == "model"
        assert (
            c.post(
                "/v1/chat/completions", json={"model": "chat-echo", "messages": HELLO}
            ).status_code
            == 200
        )
    resp = admin.post("/admin/keys", json={"name": "bad", "models": ["no-such-model"]})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "models.0"
