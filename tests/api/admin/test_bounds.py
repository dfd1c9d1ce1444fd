"""Every number the admin API takes is bounded, and one bad stored row never fails a listing.

An integer past 64 bits once went into the database (the reply was a 500) and from then on
every listing that held it answered 500 too, `cumulo keys list` included.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from support import CUMULO_BIN, CumuloServer, clean_env

HUGE = 2**70


@pytest.fixture
def admin(cumulo: CumuloServer) -> Iterator[httpx.Client]:
    with cumulo.admin() as c:
        yield c


def assert_400(resp: httpx.Response, param: str) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"limits": {"rpm": HUGE}}, "limits.rpm"),
        ({"limits": {"tpm": HUGE}}, "limits.tpm"),
        ({"limits": {"concurrency": 10**7}}, "limits.concurrency"),
        ({"budget": {"usd": 1e300}}, "budget.usd"),
        ({"budget": {"usd": 5, "soft_pct": 2}}, "budget.soft_pct"),
    ],
)
def test_out_of_range_numbers_in_a_key_are_refused_naming_the_field(
    admin: httpx.Client, body: dict[str, Any], param: str
) -> None:
    assert_400(admin.post("/admin/keys", json={"name": "bounded", **body}), param)
    assert admin.get("/admin/keys").status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"limits": {"rpm": HUGE}}, "limits.rpm"),
        ({"budget": {"usd": HUGE}}, "budget.usd"),
        ({"log_retention_days": HUGE}, "log_retention_days"),
    ],
)
def test_out_of_range_numbers_in_a_tenant_are_refused_naming_the_field(
    admin: httpx.Client, body: dict[str, Any], param: str
) -> None:
    assert_400(admin.post("/admin/tenants", json={"name": f"bounds-{param}", **body}), param)
    made = admin.post("/admin/tenants", json={"name": f"bounds-ok-{param}"})
    assert made.status_code == 201, made.text
    assert_400(admin.patch(f"/admin/tenants/{made.json()['id']}", json=body), param)
    assert admin.get("/admin/tenants").status_code == 200


def test_a_budget_that_is_not_a_finite_number_is_refused(admin: httpx.Client) -> None:
    body = b'{"name": "inf-budget", "budget": {"usd": Infinity}}'
    resp = admin.post("/admin/keys", content=body)
    assert resp.status_code == 400, resp.text


def test_a_tenant_admin_cannot_poison_the_key_list(
    cumulo: CumuloServer, admin: httpx.Client
) -> None:
    tenant = admin.post("/admin/tenants", json={"name": "poison-check"}).json()
    made = admin.post(
        "/admin/keys", json={"name": "ta", "role": "tenant_admin", "tenant_id": tenant["id"]}
    )
    with httpx.Client(
        base_url=cumulo.url, timeout=30, headers={"Authorization": f"Bearer {made.json()['key']}"}
    ) as ta:
        assert_400(
            ta.post("/admin/keys", json={"name": "x", "limits": {"rpm": HUGE}}), "limits.rpm"
        )
        assert ta.get("/admin/keys").status_code == 200
    assert admin.get("/admin/keys").status_code == 200


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/admin/alerts?before_id=" + str(HUGE), "before_id"),
        ("/admin/alerts?before_id=-1", "before_id"),
        ("/admin/alerts?since=nan", "since"),
        ("/admin/alerts?since=1e300", "since"),
        ("/admin/alerts?limit=0", "limit"),
        ("/admin/invocations?until=inf", "until"),
        ("/admin/invocations?before_id=" + str(HUGE), "before_id"),
        ("/admin/ledger?after_seq=" + str(HUGE), "after_seq"),
        ("/admin/ledger?before_seq=-5", "before_seq"),
        ("/admin/ledger?limit=" + str(HUGE), "limit"),
        ("/admin/usage?since=nan", "since"),
        ("/admin/usage?since=-inf", "since"),
        ("/admin/keys?include_revoked=perhaps", "include_revoked"),
    ],
)
def test_out_of_range_query_parameters_are_refused(
    admin: httpx.Client, path: str, param: str
) -> None:
    assert_400(admin.get(path), param)


def test_a_bad_stored_row_is_shown_as_null_and_the_list_still_answers(
    cumulo_factory: Callable[..., CumuloServer],
) -> None:
    """A row written before the bounds existed (or edited in the database) is listed with
    the field it cannot render as null, named in `unreadable`; the other rows are intact."""
    server = cumulo_factory({"models": []})
    with server.admin() as admin:
        good = admin.post("/admin/keys", json={"name": "good", "limits": {"rpm": 5}}).json()
        bad = admin.post("/admin/keys", json={"name": "bad"}).json()
        tenant = admin.post("/admin/tenants", json={"name": "bad-tenant"}).json()
        with contextlib.closing(sqlite3.connect(server.db_path, timeout=10)) as db, db:
            db.execute(
                "UPDATE api_keys SET limits = ? WHERE id = ?",
                (json.dumps({"rpm": HUGE}), bad["id"]),
            )
            db.execute(
                "UPDATE tenants SET budget = ? WHERE id = ?",
                (json.dumps({"usd": HUGE, "period": "day"}), tenant["id"]),
            )

        keys = admin.get("/admin/keys")
        assert keys.status_code == 200, keys.text
        rows = {k["id"]: k for k in keys.json()["data"]}
        assert rows[good["id"]]["limits"] == {"rpm": 5, "tpm": None, "concurrency": None}
        assert "unreadable" not in rows[good["id"]]
        assert rows[bad["id"]]["name"] == "bad"
        assert rows[bad["id"]]["limits"] is None and rows[bad["id"]]["unreadable"] == ["limits"]

        tenants = admin.get("/admin/tenants")
        assert tenants.status_code == 200, tenants.text
        [row] = [t for t in tenants.json()["data"] if t["id"] == tenant["id"]]
        assert row["budget"] is None and row["unreadable"] == ["budget"]
        one = admin.get(f"/admin/tenants/{tenant['id']}")
        assert one.status_code == 200 and one.json()["unreadable"] == ["budget"]

    listed = subprocess.run(
        [str(CUMULO_BIN), "keys", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(CUMULO_URL=server.url, CUMULO_API_KEY=server.admin_key),
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert bad["id"] in listed.stdout and good["id"] in listed.stdout
    assert "cannot be rendered" in server.output()


@pytest.mark.parametrize("value", ["yes", 1, "true"])
def test_booleans_are_json_booleans(admin: httpx.Client, value: object) -> None:
    assert_400(
        admin.post("/admin/tenants", json={"name": f"bool-{value}", "log_invocations": value}),
        "log_invocations",
    )
