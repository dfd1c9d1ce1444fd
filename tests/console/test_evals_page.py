"""The Evaluations page in a real browser: create an eval from an uploaded file, two
models and graders of every kind (string checks, similarity metrics with a threshold, a
judge model), watch its runs complete (HTMX refresh), open the side-by-side report;
another tenant's eval is not found."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from test_browser import admin_post, make_key, sign_in

from cumulo.evals import check
from cumulo.evals.criteria import GRADERS, criterion
from support import CumuloServer
from support.browser import shot


def test_create_an_eval_watch_its_runs_and_open_the_report(
    page: Any, server: CumuloServer, tmp_path: Any, marker: str
) -> None:
    mine = admin_post(server, "/admin/tenants", {"name": f"evals-{marker}"})
    theirs = admin_post(server, "/admin/tenants", {"name": f"other-{marker}"})
    key = make_key(server, "caller", mine["id"])
    sign_in(page, server, key.token)
    page.goto(server.url + "/console/evals")
    items = [
        {"input": f"{marker} one", "ideal": f"echo: {marker} one"},
        {"input": f"{marker} two", "ideal": f"echo: {marker} two"},
        {"input": f"{marker} three", "ideal": "something else"},
    ]
    data = tmp_path / "echo-items.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    page.get_by_label(re.compile("^Items")).set_input_files(str(data))
    # Every grader kind the CLI offers: string checks, similarity metrics with a threshold
    # (cosine with an embedding model), and a judge model.
    graders = page.locator("fieldset.graders")
    offered = graders.locator("input[type=checkbox]").evaluate_all("els => els.map(e => e.value)")
    assert set(offered) >= set(GRADERS) - {"meteor"}  # meteor only where WordNet is installed
    for grader in ("contains", "fuzzy_match", "cosine", "judge"):
        graders.get_by_role("checkbox", name=re.compile(f"^{grader} ")).check()
    page.get_by_label(re.compile("^Pass threshold")).fill("0.9")
    page.get_by_label(re.compile("^Judge model")).select_option("chat-echo")
    page.get_by_label(re.compile("^Embedding model")).select_option("embed-fake")
    for model in ("chat-echo", "chat-slow"):
        page.get_by_label(model, exact=True).check()
    shot(page, "evals-form")
    page.get_by_role("button", name="Create and run").click()
    page.get_by_text("Created").wait_for()
    eval_id = page.locator("p.ok code").inner_text()
    shot(page, "evals-started")
    # The criteria are the ones `cumulo eval run --grader` builds (one shared builder).
    resp = httpx.get(f"{server.url}/v1/evals/{eval_id}",
                     headers={"Authorization": f"Bearer {key.token}"})
    built = [criterion("exact"), criterion("contains"), criterion("fuzzy_match", 0.9),
             criterion("cosine", 0.9, embedder="embed-fake"), criterion("judge", judge="chat-echo")]
    assert resp.json()["testing_criteria"] == [check(c, i) for i, c in enumerate(built)]
    rows = page.locator(f"#evals tr[data-eval='{eval_id}']")
    # The table refreshes itself (htmx) until both runs are done: no reload here.
    for i in range(2):
        rows.nth(i).locator(".status", has_text="completed").wait_for(timeout=60_000)
    assert rows.count() == 2
    for i in range(2):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[-4:-1] == ["2", "1", "0"], cells  # passed, failed, errored (then actions)
        assert "3 of 3" in rows.nth(i).inner_text()
    shot(page, "evals-completed")
    link = page.get_by_role("link", name="Side-by-side report of echo-items")
    href = link.get_attribute("href")
    assert href == f"/console/evals/{eval_id}/report"
    resp = page.goto(server.url + href)
    assert resp.status == 200
    report = page.content()
    assert "chat-echo" in report and "chat-slow" in report
    assert report.count("<td>0.6667</td>") >= 4  # each model passed 2 of the 3 items
    shot(page, "evals-report")
    # Another tenant's key: the eval is not on its page, and its report URL is a 404.
    other = make_key(server, "caller", theirs["id"])
    page.context.clear_cookies()
    sign_in(page, server, other.token)
    page.goto(server.url + "/console/evals")
    assert eval_id not in page.content()
    resp = page.goto(server.url + href)
    assert resp.status == 404
    assert "chat-slow" not in page.locator("main").inner_text()
    shot(page, "evals-other-tenant-404")
