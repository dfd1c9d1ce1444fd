"""Cancel buttons in a real browser: a running batch (Batches and files page) and a
running eval run (Evaluations page) are cancelled from their pages, through the same
services as the API, for the key's own tenant only; a form post without the CSRF token,
or from another tenant's session, changes nothing.

The work goes to `chat-slower` (3 s an answer), so it is still running when cancelled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from test_browser import admin_post, make_key, sign_in

from support import CumuloServer
from support.browser import shot

LINES = 200


def api(server: CumuloServer, token: str, path: str) -> dict[str, Any]:
    resp = httpx.get(server.url + path, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def csrf_of(page: Any, server: CumuloServer, path: str) -> str:
    page.goto(server.url + path)
    return str(page.locator("input[name=csrf]").first.input_value())


def test_a_running_batch_is_cancelled_from_its_page(
    page: Any, server: CumuloServer, tmp_path: Path, marker: str
) -> None:
    mine = admin_post(server, "/admin/tenants", {"name": f"cb-{marker}"})
    theirs = admin_post(server, "/admin/tenants", {"name": f"cb-other-{marker}"})
    key = make_key(server, "caller", mine["id"])
    other = make_key(server, "caller", theirs["id"])
    sign_in(page, server, key.token)
    page.goto(server.url + "/console/files")
    data = tmp_path / "slow.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "chat-slower",
                        "messages": [{"role": "user", "content": f"{marker} {i}"}],
                    },
                }
            )
            + "\n"
            for i in range(LINES)
        )
    )
    page.get_by_label(re.compile("^File")).set_input_files(str(data))
    page.get_by_label("Purpose", exact=True).select_option("batch")
    page.get_by_role("button", name="Upload").click()
    page.get_by_text("Uploaded").wait_for()
    page.get_by_label("Input file (purpose batch)").select_option(
        page.locator("p.ok code").inner_text()
    )
    page.get_by_role("button", name="Start batch").click()
    row = page.locator("#batches tbody tr").first
    batch_id = row.get_attribute("data-batch")
    row.locator(".status", has_text="in_progress").wait_for(timeout=60_000)
    # Without the CSRF token, and from another tenant's session: refused, it goes on.
    resp = page.request.post(
        f"{server.url}/console/batches/{batch_id}/cancel", form={"x": "1"}, max_redirects=0
    )
    assert resp.status == 403
    with page.context.browser.new_context() as intruder:
        theirs_page = intruder.new_page()
        sign_in(theirs_page, server, other.token)
        resp = theirs_page.request.post(
            f"{server.url}/console/batches/{batch_id}/cancel",
            form={"csrf": csrf_of(theirs_page, server, "/console/files")},
            max_redirects=0,
        )
        assert resp.status == 404
    assert api(server, key.token, f"/v1/batches/{batch_id}")["status"] == "in_progress"
    shot(page, "batch-running")
    page.get_by_role("button", name=f"Cancel {batch_id}").click()
    row = page.locator(f"#batches tr[data-batch='{batch_id}']")
    row.locator(".status", has_text=re.compile("^cancelled$")).wait_for(timeout=60_000)
    batch = api(server, key.token, f"/v1/batches/{batch_id}")
    assert batch["status"] == "cancelled"
    assert batch["request_counts"]["completed"] < LINES
    assert row.get_by_role("button", name=f"Cancel {batch_id}").count() == 0
    shot(page, "batch-cancelled")


def test_a_running_eval_run_is_cancelled_from_its_page(
    page: Any, server: CumuloServer, tmp_path: Path, marker: str
) -> None:
    mine = admin_post(server, "/admin/tenants", {"name": f"ce-{marker}"})
    theirs = admin_post(server, "/admin/tenants", {"name": f"ce-other-{marker}"})
    key = make_key(server, "caller", mine["id"])
    other = make_key(server, "caller", theirs["id"])
    sign_in(page, server, key.token)
    page.goto(server.url + "/console/evals")
    data = tmp_path / "slow-items.jsonl"
    data.write_text(
        "".join(json.dumps({"input": f"{marker} {i}", "ideal": "x"}) + "\n" for i in range(LINES))
    )
    page.get_by_label(re.compile("^Items")).set_input_files(str(data))
    for model in ("chat-echo", "chat-slow"):
        page.get_by_label(model, exact=True).uncheck()
    page.get_by_label("chat-slower", exact=True).check()
    page.get_by_role("button", name="Create and run").click()
    page.get_by_text("Created").wait_for()
    eval_id = page.locator("p.ok code").inner_text()
    row = page.locator(f"#evals tr[data-eval='{eval_id}']")
    row.locator(".status", has_text="in_progress").wait_for(timeout=60_000)
    run_id = row.locator("td code").first.inner_text()
    cancel_url = f"{server.url}/console/evals/{eval_id}/runs/{run_id}/cancel"
    resp = page.request.post(cancel_url, form={"x": "1"}, max_redirects=0)
    assert resp.status == 403
    with page.context.browser.new_context() as intruder:
        theirs_page = intruder.new_page()
        sign_in(theirs_page, server, other.token)
        resp = theirs_page.request.post(
            cancel_url,
            form={"csrf": csrf_of(theirs_page, server, "/console/evals")},
            max_redirects=0,
        )
        assert resp.status == 404
    run_path = f"/v1/evals/{eval_id}/runs/{run_id}"
    assert api(server, key.token, run_path)["status"] == "in_progress"
    page.get_by_role("button", name=re.compile(f"^Cancel run {run_id}")).click()
    row = page.locator(f"#evals tr[data-eval='{eval_id}']")
    row.locator(".status", has_text="canceled").wait_for(timeout=60_000)
    run = api(server, key.token, run_path)
    assert run["status"] == "canceled"
    assert run["progress"]["done"] < LINES
    shot(page, "evals-run-cancelled")
