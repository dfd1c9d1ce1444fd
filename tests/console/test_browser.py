"""The console in a real browser (headless Chromium, driven by Playwright).

Each test signs in with a key as a person would, uses the pages, and checks what they
show; screenshots of every page go to artifacts/console/.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import sqlite3
from typing import Any

import httpx

from fakes import FakeOpenAIUpstream
from support import ApiKey, CumuloServer, wait_until
from support.browser import shot

_n = itertools.count()
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def sign_in(page: Any, server: CumuloServer, key: str) -> None:
    page.goto(server.url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/console/" in url and "/console/signin" not in url)


def admin_post(server: CumuloServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with server.admin() as admin:
        resp = admin.post(path, json=body)
    assert resp.status_code in (200, 201), resp.text
    data: dict[str, Any] = resp.json()
    return data


def make_key(server: CumuloServer, role: str = "caller", tenant_id: str | None = None) -> ApiKey:
    data = admin_post(
        server, "/admin/keys", {"name": f"k{next(_n)}", "role": role, "tenant_id": tenant_id}
    )
    return ApiKey(data["id"], data["key"])


def chat(server: CumuloServer, key: str, model: str = "chat-echo", text: str = "hello") -> None:
    resp = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text


def test_an_admin_signs_in_and_every_page_shows(page: Any, server: CumuloServer) -> None:
    chat(server, server.admin_key)
    requested: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.on(
        "console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    sign_in(page, server, server.admin_key)
    nav = page.get_by_role("navigation", name="Console pages")
    for title in (
        "Overview",
        "Models",
        "Playground",
        "Evaluations",
        "Fine-tuning",
        "Batches and files",
        "Keys and tenants",
        "Guardrails",
        "Audit",
        "Usage",
    ):
        nav.get_by_role("link", name=title).click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == title
        assert page.locator("p.error").count() == 0
        shot(page, title.lower().replace(" ", "-"))
    # The local engines' stats refresh by themselves (htmx polls their fragment).
    page.goto(server.url + "/console/models")
    with page.expect_response(lambda r: r.url.endswith("/console/models/engine")) as polled:
        pass
    assert polled.value.status == 200
    assert "No local chat engine runs" in page.locator("#engines").inner_text()
    page.goto(server.url + "/console/overview")
    assert page.locator("figure.chart svg").count() >= 3  # requests, tokens, cost
    # Nothing comes from the network (htmx and the stylesheet are the console's own), and
    # nothing the page loads is refused by its Content-Security-Policy or fails.
    assert [u for u in requested if not u.startswith(server.url)] == []
    assert any(u.endswith("/console/static/htmx.min.js") for u in requested)
    assert problems == []
    assert int(page.locator("#total-requests").inner_text().replace(",", "")) >= 1


def test_a_new_key_is_shown_once_with_a_copy_button(page: Any, server: CumuloServer) -> None:
    sign_in(page, server, server.admin_key)
    page.goto(server.url + "/console/keys")
    page.get_by_label("Name", exact=True).first.fill("console-made")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("New key").input_value()
    assert secret.startswith("ck-")
    assert page.get_by_role("button", name="Copy").is_visible()
    shot(page, "key-created")
    # The key works: it signs in, and the API takes it.
    chat(server, secret)
    page.goto(server.url + "/console/keys")
    assert "console-made" in page.content()
    assert secret not in page.content()  # never shown again


def test_compare_two_models_side_by_side(page: Any, server: CumuloServer) -> None:
    key = make_key(server)
    sign_in(page, server, key.token)
    page.goto(server.url + "/console/playground")
    page.get_by_label("Model 1").select_option("chat-echo")
    page.get_by_label("Model 2").select_option("chat-slow")
    page.get_by_label("System prompt").fill("Be brief.")
    page.get_by_label("Prompt", exact=True).fill("compare these two")
    page.get_by_label("Temperature").fill("0.5")
    page.get_by_role("button", name="Send").click()
    panels = page.locator("#panels .panel")
    panels.nth(1).locator(".figures").wait_for(state="visible")
    panels.nth(0).locator(".figures").wait_for(state="visible")
    assert panels.count() == 2
    for i, model in enumerate(("chat-echo", "chat-slow")):
        panel = panels.nth(i)
        assert panel.locator("h2").inner_text() == model
        assert panel.locator(".reply").inner_text() == "echo: compare these two"
        assert re.fullmatch(r"[\d,]+ ms", panel.locator(".latency").inner_text())
        assert re.fullmatch(r"[\d,]+ ms", panel.locator(".ttft").inner_text())
        prompt, completion = panel.locator(".tokens").inner_text().split(" / ")
        assert int(prompt) > 0 and int(completion) > 0
        # 1 and 2 USD per million prompt and completion tokens (the test config's price)
        assert (
            panel.locator(".cost").inner_text()
            == f"${(int(prompt) + 2 * int(completion)) / 1e6:.6f}"
        )
    slow = int(panels.nth(1).locator(".ttft").inner_text().split()[0].replace(",", ""))
    assert slow >= 300  # the slow model waits 0.3 s before its first token
    shot(page, "playground-compare")
    # The calls went through the gateway as this key: its usage records say so.
    rows = server.usage_rows(key.id, expect=2)
    assert sorted(r["model"] for r in rows) == ["chat-echo", "chat-slow"]
    # Saved as an eval item set: a JSONL file of purpose evals, in this key's files.
    page.get_by_role("button", name="Save as eval items").click()
    saved = page.locator("#saved")
    saved.get_by_text("purpose evals").wait_for()
    file_id = saved.locator("code").nth(1).inner_text()
    resp = httpx.get(
        f"{server.url}/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {key.token}"}
    )
    line = resp.json()
    assert line["item"]["input"] == "compare these two"
    assert line["item"]["outputs"] == {
        "chat-echo": "echo: compare these two",
        "chat-slow": "echo: compare these two",
    }


def test_model_output_with_markup_shows_as_text(page: Any, server: CumuloServer) -> None:
    key = make_key(server)
    sign_in(page, server, key.token)
    page.goto(server.url + "/console/playground")
    page.get_by_label("Prompt", exact=True).fill(XSS)
    page.get_by_role("button", name="Send").click()
    panel = page.locator("#panels .panel").first
    panel.locator(".figures").wait_for(state="visible")
    assert panel.locator(".reply").inner_text() == "echo: " + XSS
    assert panel.locator("img").count() == 0 and panel.locator("script").count() == 0
    assert page.evaluate("window.__xss") is None
    # The same reply rendered by the server (no JavaScript) is escaped too.
    page.goto(server.url + "/console/guardrails")
    page.get_by_label("Text").fill(XSS)
    page.get_by_role("button", name="Apply guardrail").click()
    page.locator("#guard-result .action").wait_for()
    assert page.evaluate("window.__xss") is None
    assert page.locator("#guard-result img").count() == 0
    # And a text the guardrail stops.
    page.get_by_label("Guardrail").select_option("strict")
    page.get_by_label("Text").fill("any stock tips for me?")
    page.get_by_role("button", name="Apply guardrail").click()
    page.locator("#guard-result .action", has_text="GUARDRAIL_INTERVENED").wait_for()
    assert "Sorry, I cannot help with that." in page.locator("#guard-result").inner_text()
    shot(page, "guardrail-applied")


def test_a_tenant_admin_sees_only_its_own_tenant(page: Any, server: CumuloServer) -> None:
    mine = admin_post(
        server,
        "/admin/tenants",
        {"name": f"mine{next(_n)}", "budget": {"usd": 5, "period": "month"}},
    )
    theirs = admin_post(server, "/admin/tenants", {"name": f"theirs{next(_n)}"})
    manager = make_key(server, "tenant_admin", mine["id"])
    other = make_key(server, "caller", theirs["id"])
    own = make_key(server, "caller", mine["id"])
    chat(server, other.token, text="from the other tenant")
    chat(server, own.token, text="from my tenant")
    server.usage_rows(other.id)
    server.usage_rows(own.id)
    sign_in(page, server, manager.token)
    page.goto(server.url + "/console/keys")
    html = page.content()
    assert own.id in html and other.id not in html and theirs["id"] not in html
    page.goto(server.url + "/console/usage?range=1h")
    html = page.content()
    assert own.id in html and other.id not in html
    shot(page, "tenant-admin-usage")
    # Its overview: its own tenant's budget, drawn against the limit; nobody else's.
    page.goto(server.url + "/console/overview")
    budgets = page.locator("section", has=page.get_by_role("heading", name="Budget use per tenant"))
    assert budgets.locator("figure.chart svg").count() == 1
    assert mine["name"] in budgets.inner_text() and theirs["name"] not in page.content()
    assert "$5.00 a month" in budgets.inner_text()
    shot(page, "tenant-admin-overview")
    # Direct URLs to the other tenant: not found, as if it did not exist.
    for url in (
        f"/console/keys?tenant_id={theirs['id']}",
        f"/console/usage?tenant_id={theirs['id']}",
        f"/console/tenants/{theirs['id']}",
        f"/console/usage.csv?tenant_id={theirs['id']}",
    ):
        resp = page.goto(server.url + url)
        assert resp.status == 404, url
        assert other.id not in page.content()
    # Nor can it revoke the other tenant's key.
    csrf = (
        page.goto(server.url + "/console/keys")
        and page.locator("input[name=csrf]").first.input_value()
    )
    resp = page.request.post(
        f"{server.url}/console/keys/{other.id}/revoke", form={"csrf": csrf}, max_redirects=0
    )
    assert resp.status == 404
    chat(server, other.token)  # still works
    # The platform-only pages are not offered, and refused on a direct URL.
    assert page.get_by_role("link", name="Overview").count() == 1
    resp = page.goto(server.url + "/console/audit/verify")
    assert resp.status == 403


def test_sign_out_ends_access(page: Any, server: CumuloServer) -> None:
    sign_in(page, server, server.admin_key)
    page.goto(server.url + "/console/keys")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/console/signin"))
    page.goto(server.url + "/console/keys")
    assert "/console/signin" in page.url
    assert page.get_by_label("API key").is_visible()


def test_upload_and_download_a_file(page: Any, server: CumuloServer, tmp_path: Any) -> None:
    key = make_key(server)
    sign_in(page, server, key.token)
    page.goto(server.url + "/console/files")
    data = tmp_path / "items.jsonl"
    data.write_text('{"item": {"input": "2+2"}}\n')
    page.get_by_label(re.compile("^File")).set_input_files(str(data))
    page.get_by_label("Purpose", exact=True).select_option("evals")
    page.get_by_role("button", name="Upload").click()
    page.get_by_text("Uploaded").wait_for()
    row = page.locator("tr", has_text="items.jsonl")
    with page.expect_download() as download:
        row.get_by_role("link", name="Download").click()
    assert download.value.path().read_text() == data.read_text()
    shot(page, "files-uploaded")


def test_wrong_key_is_refused_at_sign_in(page: Any, server: CumuloServer) -> None:
    page.goto(server.url + "/console/signin")
    page.get_by_label("API key").fill("ck-nothing.wrong")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Incorrect API key provided."


UNLABELLED = """() => Array.from(document.querySelectorAll("input, select, textarea, button"))
  .filter((el) => el.type !== "hidden" && !el.closest("template"))
  .filter((el) => el.tagName === "BUTTON"
      ? !(el.textContent.trim() || el.getAttribute("aria-label"))
      : !(el.labels.length || el.getAttribute("aria-label")))
  .map((el) => el.outerHTML)"""


# The roles of form controls in Chromium's accessibility tree.
CONTROL_ROLES = {
    "textbox",
    "searchbox",
    "combobox",
    "listbox",
    "checkbox",
    "radio",
    "spinbutton",
    "slider",
    "button",
    "switch",
}


def unnamed_controls(page: Any) -> list[str]:
    """The form controls the browser's own accessibility tree gives no name (Chromium's
    accessible-name computation, as a screen reader gets it, through the DevTools
    protocol): role and DOM node of each."""
    cdp = page.context.new_cdp_session(page)
    try:
        nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    finally:
        cdp.detach()
    controls = [
        n for n in nodes if not n.get("ignored") and n.get("role", {}).get("value") in CONTROL_ROLES
    ]
    assert controls, "no control in the accessibility tree"  # at least Sign out
    return [
        f"{n['role']['value']} (node {n.get('backendDOMNodeId')})"
        for n in controls
        if not str(n.get("name", {}).get("value", "")).strip()
    ]


def test_every_control_has_a_label_and_the_keyboard_reaches_the_content(
    page: Any, server: CumuloServer
) -> None:
    sign_in(page, server, server.admin_key)
    for path in (
        "overview",
        "models",
        "playground",
        "evals",
        "fine-tuning",
        "files",
        "keys",
        "guardrails",
        "audit",
        "usage",
    ):
        page.goto(f"{server.url}/console/{path}")
        assert page.evaluate(UNLABELLED) == [], path
        assert unnamed_controls(page) == [], path
    page.goto(server.url + "/console/usage")
    page.keyboard.press("Tab")  # the first stop is the skip link
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("Tab")  # then the page's own controls, not the navigation again
    assert page.evaluate("document.activeElement.id") == "u-range"


def test_ledger_verification_names_the_first_bad_entry(page: Any, server: CumuloServer) -> None:
    """It tampers with the server's ledger: no other test here verifies it."""
    make_key(server)  # at least one more entry
    sign_in(page, server, server.admin_key)
    page.goto(server.url + "/console/audit")
    page.get_by_role("link", name="Verify the chain").click()
    page.get_by_text("The ledger verifies").wait_for()
    seq = server.sql("SELECT MIN(seq) FROM ledger WHERE action = 'key.create'")[0][0]
    with contextlib.closing(sqlite3.connect(server.db_path)) as db, db:
        db.execute("UPDATE ledger SET target = 'tampered' WHERE seq = ?", (seq,))
    page.goto(server.url + "/console/audit")
    page.get_by_role("link", name="Verify the chain").click()
    alert = page.locator("#verification [role=alert]")
    alert.wait_for()
    assert f"First bad entry: #{seq}" in alert.inner_text()
    shot(page, "audit-verify-tampered")


def test_a_chat_sends_its_earlier_turns(
    page: Any, server: CumuloServer, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    key = make_key(server)
    sign_in(page, server, key.token)
    page.goto(server.url + "/console/playground?model=chat-echo")
    page.get_by_label("System prompt").fill("You echo.")
    for text in (f"first {marker}", f"second {marker}"):
        page.get_by_label("Prompt", exact=True).fill(text)
        page.get_by_role("button", name="Send").click()
        page.locator("#transcript li", has_text=f"echo: {text}").wait_for()
    assert page.locator("#transcript li").all_inner_texts() == [
        f"You: first {marker}",
        f"Model: echo: first {marker}",
        f"You: second {marker}",
        f"Model: echo: second {marker}",
    ]
    last = upstream.received(f"second {marker}")[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in last] == [
        ("system", "You echo."),
        ("user", f"first {marker}"),
        ("assistant", f"echo: first {marker}"),
        ("user", f"second {marker}"),
    ]
    shot(page, "playground-chat")
    page.get_by_role("button", name="New chat").click()
    assert page.locator("#transcript li").count() == 0


def test_start_a_batch_and_watch_it_complete(
    page: Any, server: CumuloServer, tmp_path: Any, marker: str
) -> None:
    key = make_key(server)
    sign_in(page, server, key.token)
    page.goto(server.url + "/console/files")
    lines = [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "chat-slow",
                    "messages": [{"role": "user", "content": f"{marker} {i}"}],
                },
            }
        )
        for i in range(6)
    ]
    data = tmp_path / "batch.jsonl"
    data.write_text("\n".join(lines) + "\n")
    page.get_by_label(re.compile("^File")).set_input_files(str(data))
    page.get_by_label("Purpose", exact=True).select_option("batch")
    page.get_by_role("button", name="Upload").click()
    page.get_by_text("Uploaded").wait_for()
    uploaded = page.locator("p.ok code").inner_text()
    page.get_by_label("Input file (purpose batch)").select_option(uploaded)
    page.get_by_role("button", name="Start batch").click()
    row = page.locator("#batches tbody tr").first
    shot(page, "batch-started")
    # The table refreshes itself (htmx) until the batch is done: no reload here.
    row.locator(".status", has_text="completed").wait_for(timeout=60_000)
    assert row.locator(".counts").inner_text() == "6 done, 0 failed of 6"
    assert row.locator("progress").get_attribute("value") == "6"
    shot(page, "batch-completed")
    with page.expect_download() as download:
        row.get_by_role("link", name="Output").click()
    out = [json.loads(x) for x in download.value.path().read_text().splitlines()]
    replies = {
        o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in out
    }
    assert replies == {f"r{i}": f"echo: {marker} {i}" for i in range(6)}
    # Run as the key that started it, through the gateway: its usage records.
    assert len(server.usage_rows(key.id, expect=6)) == 6


def test_reading_pages_work_without_javascript(
    browser: Any, server: CumuloServer, marker: str
) -> None:
    chat(server, server.admin_key, text="short")
    chat(server, server.admin_key, text="a somewhat longer prompt costs a little more")
    server.usage_rows("admin-env", expect=2)
    eval_id, run_id = finished_eval(server, marker)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        sign_in(page, server, server.admin_key)
        for path, title in (
            ("overview", "Overview"),
            ("models", "Models"),
            ("usage", "Usage"),
            ("evals", "Evaluations"),
            ("fine-tuning", "Fine-tuning"),
            ("files", "Batches and files"),
            ("keys", "Keys and tenants"),
            ("audit", "Audit"),
            ("guardrails", "Guardrails"),
        ):
            page.goto(f"{server.url}/console/{path}")
            assert page.locator("h1").inner_text() == title
        page.goto(server.url + "/console/usage?range=1h")
        page.get_by_role("link", name="Cost").click()  # sorted on the server
        assert page.locator("th[aria-sort=ascending]").inner_text().startswith("Cost")
        costs = page.locator("table.usage tbody tr td:nth-child(8)").all_inner_texts()
        assert len(costs) >= 2
        values = [float(c.lstrip("$")) if c != "unknown" else -1.0 for c in costs]
        assert values == sorted(values)
        page.goto(server.url + "/console/overview?range=7d")
        assert page.locator("figure.chart svg").count() >= 3
        # The Evaluations page: a finished run with its counts, and its report.
        page.goto(server.url + "/console/evals")
        row = page.locator(f"#evals tr[data-eval='{eval_id}']")
        assert row.locator(f".status[data-run='{run_id}']").inner_text() == "completed"
        assert row.locator("td").all_inner_texts()[-4:-1] == ["1", "1", "0"]
        shot(page, "no-javascript-evals")
        row.get_by_role("link", name=re.compile("^Side-by-side report")).click()
        assert "chat-echo" in page.content()
        # The Fine-tuning page (its jobs are trained in test_fine_tuning_page.py, whose
        # server has the demo model: a trained job's page is read without JavaScript there).
        page.goto(server.url + "/console/fine-tuning")
        assert page.get_by_text("No fine-tuning jobs.").count() == 1
        page.goto(server.url + "/console/audit")
        page.get_by_role("link", name="Verify the chain").click()
        assert page.locator("h1").inner_text() == "Ledger verification"
        shot(page, "no-javascript-verify")
    finally:
        context.close()


def finished_eval(server: CumuloServer, marker: str) -> tuple[str, str]:
    """An eval of the admin key with one run on chat-echo (of 2 items, 1 passing),
    created through the API and waited for: (eval id, run id)."""
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    schema = {
        "type": "object",
        "properties": {"input": {"type": "string"}, "ideal": {"type": "string"}},
    }
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
        ev = c.post(
            "/v1/evals",
            json={
                "name": f"no-js {marker}",
                "data_source_config": {"type": "custom", "item_schema": schema},
                "testing_criteria": [
                    {
                        "type": "string_check",
                        "name": "exact",
                        "operation": "eq",
                        "input": "{{sample.output_text}}",
                        "reference": "{{item.ideal}}",
                    }
                ],
            },
        ).json()
        rows = [
            {"item": {"input": "a", "ideal": "echo: a"}},
            {"item": {"input": "b", "ideal": "no"}},
        ]
        run = c.post(
            f"/v1/evals/{ev['id']}/runs",
            json={
                "data_source": {
                    "type": "completions",
                    "model": "chat-echo",
                    "input_messages": {
                        "type": "template",
                        "template": [{"role": "user", "content": "{{item.input}}"}],
                    },
                    "source": {"type": "file_content", "content": rows},
                }
            },
        ).json()
        path = f"/v1/evals/{ev['id']}/runs/{run['id']}"
        assert wait_until(lambda: c.get(path).json()["status"] == "completed", timeout=60)
    return str(ev["id"]), str(run["id"])
