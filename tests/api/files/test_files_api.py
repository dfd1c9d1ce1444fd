"""The Files API on a live `cumulo serve`: the official openai SDK's files.create / list /
retrieve / content / delete, tenant isolation on every endpoint, errors naming the field,
and the audit ledger entries of uploads and deletes."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from support import ApiKey, CumuloServer

_names = itertools.count()


def tenant_key(cumulo: CumuloServer, label: str) -> ApiKey:
    with cumulo.admin() as admin:
        t = admin.post("/admin/tenants", json={"name": f"files-{label}-{next(_names)}"})
        assert t.status_code == 201, t.text
        k = admin.post(
            "/admin/keys", json={"name": label, "role": "caller", "tenant_id": t.json()["id"]}
        )
        assert k.status_code == 201, k.text
    return ApiKey(k.json()["id"], k.json()["key"])


def sdk(cumulo: CumuloServer, key: ApiKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=cumulo.url + "/v1", api_key=key.token, max_retries=0)


def http(cumulo: CumuloServer, key: ApiKey) -> httpx.Client:
    return httpx.Client(
        base_url=cumulo.url, headers={"Authorization": f"Bearer {key.token}"}, timeout=30
    )


BATCH = b"".join(
    json.dumps(
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        }
    ).encode()
    + b"\n"
    for i in range(50)
)


def test_openai_sdk_create_list_retrieve_content_delete(cumulo: CumuloServer) -> None:
    key = tenant_key(cumulo, "sdk")
    client = sdk(cumulo, key)
    created = client.files.create(file=("requests.jsonl", BATCH), purpose="batch")
    assert created.id.startswith("file-") and created.object == "file"
    assert created.bytes == len(BATCH) and created.filename == "requests.jsonl"
    assert created.purpose == "batch" and created.status == "processed"
    evals = client.files.create(file=("e.jsonl", b'{"x": 1}\n'), purpose="evals")

    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).read() == BATCH

    listed = client.files.list()
    assert [f.id for f in listed.data] == [evals.id, created.id]
    assert [f.id for f in client.files.list(purpose="batch").data] == [created.id]
    page = client.files.list(limit=1, order="asc")
    assert [f.id for f in page.data] == [created.id] and page.has_more
    assert [f.id for f in client.files.list(limit=1, order="asc", after=created.id).data] == [
        evals.id
    ]
    assert [f.id for f in client.files.list(order="asc")] == [created.id, evals.id]  # auto-paging

    deleted = client.files.delete(created.id)
    assert deleted.id == created.id and deleted.deleted and deleted.object == "file"
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    assert [f.id for f in client.files.list().data] == [evals.id]

    # The ledger holds both actions with the contents' hash.
    digest = hashlib.sha256(BATCH).hexdigest()
    with cumulo.admin() as admin:
        entries = admin.get("/admin/ledger", params={"limit": 1000}).json()["data"]
    mine = [
        (e["action"], e["data"]["sha256"], e["actor"])
        for e in entries
        if e.get("target") == created.id
    ]
    assert sorted(mine) == [("file.delete", digest, key.id), ("file.upload", digest, key.id)]


def test_another_tenants_file_is_not_found_on_every_endpoint(cumulo: CumuloServer) -> None:
    owner, other = tenant_key(cumulo, "owner"), tenant_key(cumulo, "other")
    mine = sdk(cumulo, owner).files.create(file=("a.jsonl", b"secret\n"), purpose="user_data")
    theirs = sdk(cumulo, other)
    with pytest.raises(openai.NotFoundError):
        theirs.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.files.delete(mine.id)
    assert list(theirs.files.list()) == []
    with pytest.raises(openai.BadRequestError):  # not even usable as a cursor
        theirs.files.list(after=mine.id)
    # Still there, intact, for its owner.
    assert sdk(cumulo, owner).files.content(mine.id).read() == b"secret\n"


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        ({"file": ("a.jsonl", b"x")}, {}, "purpose"),
        ({"file": ("a.jsonl", b"x")}, {"purpose": "assistants-ish"}, "purpose"),
        ({"file": ("a.jsonl", b"x")}, {"purpose": "batch_output"}, "purpose"),  # cumulo's own
        ({}, {"purpose": "batch"}, "file"),
        ({"file": ("a.jsonl", b"x")}, {"purpose": "batch", "colour": "red"}, "colour"),
    ],
)
def test_bad_uploads_name_the_field(
    cumulo: CumuloServer,
    caller_key: ApiKey,
    files: dict[str, Any],
    data: dict[str, str],
    param: str,
) -> None:
    with http(cumulo, caller_key) as client:
        resp = client.post("/v1/files", files=files or {"other": ("o", b"")}, data=data)
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error"
        assert client.get("/v1/files").json()["data"] == []


def test_not_multipart_and_bad_queries(cumulo: CumuloServer, caller_key: ApiKey) -> None:
    with http(cumulo, caller_key) as client:
        resp = client.post("/v1/files", json={"purpose": "batch"})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "file"
        for query, param in [
            ({"limit": "0"}, "limit"),
            ({"order": "up"}, "order"),
            ({"purpose": "nope"}, "purpose"),
            ({"after": "file-x"}, "after"),
        ]:
            resp = client.get("/v1/files", params=query)
            assert resp.status_code == 400, (query, resp.text)
            assert resp.json()["error"]["param"] == param
        assert client.get("/v1/files/file-nope").status_code == 404


def test_without_a_key_401(cumulo: CumuloServer) -> None:
    calls: list[Callable[[httpx.Client], httpx.Response]] = [
        lambda c: c.get("/v1/files"),
        lambda c: c.post("/v1/files", files={"file": ("a", b"x")}, data={"purpose": "batch"}),
        lambda c: c.get("/v1/files/file-x"),
        lambda c: c.get("/v1/files/file-x/content"),
        lambda c: c.delete("/v1/files/file-x"),
    ]
    with httpx.Client(base_url=cumulo.url) as client:
        for call in calls:
            resp = call(client)
            assert resp.status_code == 401
            assert resp.json()["error"]["type"] == "authentication_error"


def test_multipart_bounds(cumulo: CumuloServer, caller_key: ApiKey) -> None:
    def post(files: list[tuple[str, Any]], data: dict[str, str]) -> dict[str, Any]:
        with http(cumulo, caller_key) as client:
            resp = client.post("/v1/files", files=files, data=data)
            assert resp.status_code == 400, resp.text
            assert client.get("/v1/files").json()["data"] == []
        return dict(resp.json()["error"])

    one = ("file", ("a.jsonl", b"x"))
    err = post([one, *[(f"f{i}", ("n", b"")) for i in range(20)]], {"purpose": "batch"})
    assert "more than 16 parts" in err["message"]
    err = post([one], {"purpose": "b" * 5000})
    assert err["param"] == "purpose" and "longer than 4096 bytes" in err["message"]
    err = post([one, ("file", ("b.jsonl", b"y"))], {"purpose": "batch"})
    assert err["param"] == "file" and "more than one" in err["message"]
    assert not [p for p in (cumulo.home / "files").rglob("upload-*")]
