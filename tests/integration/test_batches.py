"""Batches end to end: the official openai SDK against `cumulo serve` in front of the fake
upstream, a server killed mid-batch, cancellation, a budget running out, tenant isolation."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from fakes import FakeOpenAIUpstream
from support import CUMULO_BIN, CumuloServer, clean_env, start_cumulo, wait_until
from support.batches import (
    batch_config,
    chat_line,
    custom_ids,
    jsonl,
    new_key,
    result_lines,
    submit,
    wait_batch,
)

MULTIPLIER = 0.5


@pytest.fixture(scope="module")
def server(
    upstream: FakeOpenAIUpstream, cumulo_factory: Callable[..., CumuloServer]
) -> CumuloServer:
    return cumulo_factory(batch_config(upstream, batch_price_multiplier=MULTIPLIER))


def new_tenant_key(server: CumuloServer, tenant: str) -> str:
    with server.admin() as admin:
        t = admin.post("/admin/tenants", json={"name": tenant})
        assert t.status_code == 201, t.text
        k = admin.post("/admin/keys", json={"name": tenant, "tenant_id": t.json()["id"]})
    assert k.status_code == 201, k.text
    return str(k.json()["key"])


@pytest.fixture
def http(server: CumuloServer) -> Iterator[httpx.Client]:
    _, token = new_key(server, "batch-test")
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as c:
        yield c


def test_openai_sdk_batch_of_1000_lines_with_bad_ones(
    server: CumuloServer, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    key_id, token = new_key(server, "sdk-batch")
    lines, good, bad_body, rejected = [], set(), set(), set()
    for i in range(1000):
        cid = f"{marker}-{i}"
        if i % 50 == 7:  # a body the chat endpoint refuses: the line fails with a 400
            lines.append(
                json.dumps(
                    {
                        "custom_id": cid,
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {"model": "chat-echo", "messages": "not a list"},
                    }
                )
            )
            bad_body.add(cid)
        elif i % 50 == 19:  # the upstream refuses it
            lines.append(chat_line(cid, "chat-upstream-400", f"{cid} rejected"))
            rejected.add(cid)
        else:
            lines.append(chat_line(cid, "chat-echo", f"{cid} hello", max_tokens=20))
            good.add(cid)
    with openai.OpenAI(
        base_url=server.url + "/v1", api_key=token, max_retries=0, timeout=60
    ) as client:
        uploaded = client.files.create(
            file=("requests.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"run": marker},
        )
        assert batch.status == "validating" and batch.metadata == {"run": marker}
        assert client.batches.retrieve(batch.id).id == batch.id
        deadline = time.monotonic() + 120
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, batch
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (
            batch.request_counts.total,
            batch.request_counts.completed,
            batch.request_counts.failed,
        ) == (1000, len(good), len(bad_body) + len(rejected))
        assert batch.output_file_id and batch.error_file_id
        out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
        err = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
        assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
        listed = client.batches.list(limit=5)
        assert batch.id in [b.id for b in listed.data]

    assert custom_ids(out) == dict.fromkeys(good, 1)
    assert custom_ids(err) == dict.fromkeys(bad_body | rejected, 1)
    for line in out:
        resp = line["response"]
        assert resp["status_code"] == 200 and line["error"] is None
        assert (
            resp["body"]["choices"][0]["message"]["content"] == f"echo: {line['custom_id']} hello"
        )
        assert line["id"].startswith("batch_req_") and resp["request_id"].startswith("req_")
    for line in err:
        resp = line["response"]
        if line["custom_id"] in bad_body:
            assert resp["status_code"] == 400
            assert resp["body"]["error"]["param"] == "messages"
        else:
            assert resp["status_code"] >= 400 and resp["body"]["error"]["type"]
    # Each line the gateway served went upstream once, as the batch's owner, marked as batch.
    sent = upstream.received(marker)
    assert len(sent) == len(good) + len(rejected)
    rows = server.sql(
        "SELECT origin, job_id, count(*) FROM usage WHERE key_id = ? GROUP BY 1, 2", (key_id,)
    )
    assert rows == [("batch", batch.id, len(good) + len(rejected))]
    ledger = server.sql(
        "SELECT action, data FROM ledger WHERE target = ? ORDER BY seq", (batch.id,)
    )
    assert [a for a, _ in ledger] == ["batch.created", "batch.finished"]
    digest = server.sql("SELECT sha256 FROM files WHERE id = ?", (uploaded.id,))[0][0]
    assert all(json.loads(d)["input_sha256"] == digest for _, d in ledger)


def test_embeddings_batch_and_batch_pricing(
    server: CumuloServer, http: httpx.Client, marker: str
) -> None:
    lines = [
        json.dumps(
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "embed", "input": [f"{marker} {i}"]},
            }
        )
        for i in range(20)
    ]
    b = wait_batch(http, submit(http, jsonl(lines), "/v1/embeddings")["id"])
    assert b["status"] == "completed" and b["request_counts"]["completed"] == 20
    out = result_lines(http, b["output_file_id"])
    assert len(out[0]["response"]["body"]["data"][0]["embedding"]) == 8

    # The priced model: a batch line costs the multiplier times what the same call costs.
    key_id, token = new_key(server, "priced")
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=h, timeout=30) as c:
        assert (
            c.post(
                "/v1/chat/completions",
                json={
                    "model": "chat-priced",
                    "messages": [{"role": "user", "content": f"{marker} x"}],
                },
            ).status_code
            == 200
        )
        b = wait_batch(c, submit(c, jsonl([chat_line("p1", "chat-priced", f"{marker} x")]))["id"])
        assert b["request_counts"]["completed"] == 1
    query = "SELECT coalesce(origin, 'interactive'), job_id, cost_usd FROM usage WHERE key_id = ?"
    assert wait_until(lambda: len(server.sql(query, (key_id,))) == 2)
    costs = {origin: cost for origin, _, cost in server.sql(query, (key_id,))}
    assert {job for _, job, _ in server.sql(query, (key_id,))} == {None, b["id"]}
    assert costs["batch"] == pytest.approx(costs["interactive"] * MULTIPLIER)


def test_file_that_fails_validation_names_line_and_field(http: httpx.Client) -> None:
    lines = [
        chat_line("a", "chat-echo", "x"),
        chat_line("a", "chat-echo", "y"),
        json.dumps({"custom_id": "c", "method": "GET", "url": "/v1/chat/completions", "body": {}}),
    ]
    b = wait_batch(http, submit(http, jsonl(lines))["id"])
    assert b["status"] == "failed"
    errors = b["errors"]["data"]
    assert {(e["line"], e["param"]) for e in errors} == {(2, "custom_id"), (3, "method")}
    assert b["output_file_id"] is None


def test_cancel_mid_batch_cancels_requests_in_flight(
    server: CumuloServer, http: httpx.Client, marker: str
) -> None:
    lines = [
        chat_line(f"{marker}-{i}", "chat-slow" if i < 8 else "chat-slower", f"{marker} {i}")
        for i in range(40)
    ]
    b = submit(http, jsonl(lines), concurrency=4)
    b = wait_batch(http, b["id"], done_at_least=8)  # the fast ones are done; 4 slow in flight
    resp = http.post(f"/v1/batches/{b['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] in ("cancelling", "cancelled")
    b = wait_batch(http, b["id"], timeout=15)  # well before the slow requests would end
    assert b["status"] == "cancelled"
    counts = b["request_counts"]
    assert counts["total"] == 40 and counts["completed"] == 8 and counts["failed"] == 0
    assert len(result_lines(http, b["output_file_id"])) == 8
    # The requests in flight were cancelled: recorded as the client (the batch) going away.
    statuses = server.sql(
        "SELECT status, count(*) FROM usage WHERE job_id = ? GROUP BY 1", (b["id"],)
    )
    assert dict(statuses)[200] == 8
    assert dict(statuses).get(499, 0) >= 1
    assert http.post(f"/v1/batches/{b['id']}/cancel").json()["status"] == "cancelled"


def test_budget_running_out_fails_the_remaining_lines(server: CumuloServer, marker: str) -> None:
    # Each line costs $0.25 at the batch price: a $2 budget lasts about 8 lines.
    key_id, token = new_key(server, "budgeted", budget={"usd": 2.0, "period": "day"})
    lines = [chat_line(f"{marker}-{i}", "chat-priced", f"{marker} {i}") for i in range(60)]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as c:
        b = wait_batch(c, submit(c, jsonl(lines), concurrency=1)["id"])
        out = result_lines(c, b["output_file_id"])
        err = result_lines(c, b["error_file_id"])
    assert b["status"] == "completed"
    assert 6 <= len(out) <= 10 and len(out) + len(err) == 60
    assert custom_ids(out + err) == {f"{marker}-{i}": 1 for i in range(60)}
    for line in err:
        assert line["response"]["status_code"] == 429
        assert line["response"]["body"]["error"]["type"] == "insufficient_quota"
    spent = server.sql("SELECT sum(cost_usd) FROM usage WHERE key_id = ?", (key_id,))[0][0]
    assert spent == pytest.approx(len(out) * 0.25)


def test_tenant_isolation_of_batches(server: CumuloServer, marker: str) -> None:
    a, b = new_tenant_key(server, f"a-{marker}"), new_tenant_key(server, f"b-{marker}")
    ha = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {a}"}, timeout=30)
    hb = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {b}"}, timeout=30)
    with ha, hb:
        batch = submit(ha, jsonl([chat_line("x", "chat-echo", marker)]))
        batch = wait_batch(ha, batch["id"])
        for method, path in [
            ("GET", f"/v1/batches/{batch['id']}"),
            ("POST", f"/v1/batches/{batch['id']}/cancel"),
        ]:
            resp = hb.request(method, path)
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["type"] == "not_found_error"
        assert batch["id"] not in [x["id"] for x in hb.get("/v1/batches").json()["data"]]
        assert batch["id"] in [x["id"] for x in ha.get("/v1/batches").json()["data"]]
        assert hb.get("/v1/batches", params={"after": batch["id"]}).status_code == 400
        # Nor can it run a batch on the other tenant's file, or read its results.
        resp = hb.post(
            "/v1/batches",
            json={
                "input_file_id": batch["input_file_id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert resp.status_code == 404
        assert hb.get(f"/v1/files/{batch['output_file_id']}/content").status_code == 404


def test_bad_create_requests_name_the_field(http: httpx.Client) -> None:
    for body, param in [
        (
            {"input_file_id": "file-x", "endpoint": "/v1/images", "completion_window": "24h"},
            "endpoint",
        ),
        (
            {"input_file_id": "file-x", "endpoint": "/v1/embeddings", "completion_window": "1h"},
            "completion_window",
        ),
        ({"endpoint": "/v1/embeddings", "completion_window": "24h"}, "input_file_id"),
    ]:
        resp = http.post("/v1/batches", json=body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
    resp = http.post(
        "/v1/batches",
        json={
            "input_file_id": "file-nope",
            "endpoint": "/v1/embeddings",
            "completion_window": "24h",
        },
    )
    assert resp.status_code == 404
    assert http.get("/v1/batches", params={"limit": "0"}).status_code == 400
    assert http.get("/v1/batches/batch_nope").status_code == 404


def test_sigkill_mid_batch_then_restart_delivers_every_line_once(
    upstream: FakeOpenAIUpstream, tmp_path: Path, marker: str
) -> None:
    config = batch_config(upstream, lease_s=2)
    first = start_cumulo(config, tmp_path, FAKE_UPSTREAM_KEY="sk-fake-upstream-" + "0" * 20)
    concurrency = 8
    try:
        _, token = new_key(first, "killed")
        lines = [chat_line(f"{marker}-{i}", "chat-slow", f"{marker}-{i} hi") for i in range(120)]
        with httpx.Client(
            base_url=first.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as c:
            b = submit(c, jsonl(lines), concurrency=concurrency)
            wait_batch(c, b["id"], done_at_least=30)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.stop()
    sent_before = len(upstream.received(marker))
    second = start_cumulo(config, tmp_path, FAKE_UPSTREAM_KEY="sk-fake-upstream-" + "0" * 20)
    try:
        with httpx.Client(
            base_url=second.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as c:
            b = wait_batch(c, b["id"])
            out = result_lines(c, b["output_file_id"])
        assert b["status"] == "completed" and b["request_counts"]["completed"] == 120
        assert custom_ids(out) == {f"{marker}-{i}": 1 for i in range(120)}
        # Only lines in flight at the kill (and finished in the last moment before it, their
        # results not yet written) were sent again.
        again = len(upstream.received(marker)) - 120
        assert 0 <= again <= 2 * concurrency, (again, sent_before)
        events = [
            m
            for (m,) in second.sql(
                "SELECT message FROM job_events WHERE job_id = ? ORDER BY seq", (b["id"],)
            )
        ]
        assert any("runs again" in m for m in events), events
    finally:
        second.stop()


def test_expired_batch_delivers_finished_lines(
    server: CumuloServer, http: httpx.Client, marker: str
) -> None:
    lines = [
        chat_line(f"{marker}-{i}", "chat-echo" if i < 5 else "chat-slower", f"{marker} {i}")
        for i in range(30)
    ]
    b = submit(http, jsonl(lines), concurrency=2)
    wait_batch(http, b["id"], done_at_least=5)
    # Its completion window ends now.
    with contextlib.closing(sqlite3.connect(server.db_path, timeout=10)) as db, db:
        db.execute("UPDATE jobs SET expires_at = 0 WHERE id = ?", (b["id"],))
    b = wait_batch(http, b["id"])
    assert b["status"] == "expired" and b["expired_at"] is not None
    out = result_lines(http, b["output_file_id"])
    err = result_lines(http, b["error_file_id"])
    assert custom_ids(out) == {f"{marker}-{i}": 1 for i in range(5)}
    assert custom_ids(err) == {f"{marker}-{i}": 1 for i in range(5, 30)}
    assert {e["error"]["code"] for e in err} == {"batch_expired"}


def test_cli_batch_create_wait_downloads_the_output(
    server: CumuloServer, tmp_path: Path, marker: str
) -> None:
    _, token = new_key(server, "cli")
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(
        jsonl([chat_line(f"{marker}-{i}", "chat-echo", f"{marker} {i}") for i in range(25)])
    )
    out = tmp_path / "out.jsonl"
    run = subprocess.run(
        [
            str(CUMULO_BIN),
            "--url",
            server.url,
            "--key",
            token,
            "batch",
            "create",
            str(requests),
            "--endpoint",
            "/v1/chat/completions",
            "--wait",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert run.returncode == 0, run.stderr
    assert "25/25 done, 0 failed" in run.stderr  # the progress line
    assert "lines/s" in run.stderr and "ETA" in run.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert custom_ids(lines) == {f"{marker}-{i}": 1 for i in range(25)}
    batch_id = run.stdout.split("id:")[1].split()[0]
    listed = subprocess.run(
        [str(CUMULO_BIN), "--url", server.url, "--key", token, "batch", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert batch_id in listed.stdout and "completed" in listed.stdout


def test_lines_are_guarded_and_stop_when_the_key_is_revoked(
    server: CumuloServer, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    key_id, token = new_key(server, "revoked")
    lines = [chat_line(f"{marker}-g", "chat-private", f"{marker} mail jane.doe@example.com")]
    lines += [chat_line(f"{marker}-{i}", "chat-slow", f"{marker} {i}") for i in range(40)]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as c:
        b = submit(c, jsonl(lines), concurrency=2)
        wait_batch(c, b["id"], done_at_least=5)
        with server.admin() as admin:
            assert admin.delete(f"/admin/keys/{key_id}").status_code in (200, 204)
    with server.admin() as admin:  # the batch is its key's tenant's (here: no tenant)
        b = wait_batch(admin, b["id"])
        out = result_lines(admin, b["output_file_id"])
        err = result_lines(admin, b["error_file_id"])
    assert b["status"] == "completed"
    # The guardrail of the model anonymized the line before it went upstream, as interactively.
    sent = upstream.received(f"{marker} mail")
    assert len(sent) == 1 and "jane.doe@example.com" not in json.dumps(sent[0].body)
    # Once the key is revoked, the remaining lines are not sent: 401 in the error file.
    assert err and {e["response"]["status_code"] for e in err} == {401}
    assert len(out) + len(err) == 41 and len(upstream.received(marker)) == len(out)


def test_job_metrics(server: CumuloServer, http: httpx.Client, marker: str) -> None:
    wait_batch(http, submit(http, jsonl([chat_line("m", "chat-echo", marker)]))["id"])
    text = httpx.get(server.url + "/metrics").text
    done = [
        line
        for line in text.splitlines()
        if line.startswith('cumulo_jobs{kind="batch",status="completed"}')
    ]
    assert done and float(done[0].split()[-1]) >= 1
    assert 'cumulo_job_items_total{kind="batch",status="completed"}' in text
