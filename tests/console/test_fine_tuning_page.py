"""The Fine-tuning page in a real browser, on a real job: a job started on the demo model
(4 examples, 1 epoch: seconds on a CPU) trains while its page refreshes itself, reaches
succeeded with its loss curve and events, and "Try it" opens the playground on the tuned
model, which answers. A long job is cancelled from its page. Another tenant sees neither
job, nor the tuned model, nor may it cancel the job.

These tests have a server of their own, with the demo model (the other console tests'
server has no local model).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from test_browser import admin_post, make_key, sign_in

from cumulo.engine.demo import build_demo_model
from fakes import FakeOpenAIUpstream
from support import CumuloServer, openai_deployment
from support.browser import shot

NO_ROUTING = {"retries": 0, "breaker": {"consecutive_failures": 1_000_000, "error_rate": 1.0}}


@pytest.fixture(scope="module")
def ft_server(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeOpenAIUpstream,
    cumulo_factory: Callable[..., CumuloServer],
) -> CumuloServer:
    demo = build_demo_model(tmp_path_factory.mktemp("console-ft") / "demo-tiny", seed=0)
    return cumulo_factory(
        {
            "usage": {"flush_interval_s": 0.1},
            "jobs": {"poll_interval_s": 0.2, "lease_s": 2},
            "training": {"threads": 1},
            "models": [
                {
                    "name": "demo-tiny",
                    "routing": NO_ROUTING,
                    "untrained": True,
                    "deployments": [{"provider": "local", "path": str(demo), "dtype": "float32"}],
                },
                {"name": "chat-echo", "deployments": [openai_deployment(upstream, "echo")]},
            ],
        }
    )


def examples(marker: str, n: int = 4) -> bytes:
    line = {
        "messages": [
            {"role": "user", "content": f"Where is {marker}?"},
            {"role": "assistant", "content": "Nimbus City."},
        ]
    }
    return b"".join(json.dumps(line).encode() + b"\n" for _ in range(n))


def start_job(
    server: CumuloServer, token: str, marker: str, epochs: int, n: int = 4
) -> tuple[str, str]:
    """A fine-tuning job of `n` examples started through the API as `token`'s key: (job
    id, tuned model)."""
    with openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0) as c:
        file_id = c.files.create(
            file=("train.jsonl", io.BytesIO(examples(marker, n))), purpose="fine-tune"
        ).id
        job = c.fine_tuning.jobs.create(
            model="demo-tiny",
            training_file=file_id,
            suffix=marker,
            hyperparameters={"n_epochs": epochs, "batch_size": 1},
        )
    return job.id, f"ft:demo-tiny:{marker}:{job.id}"


def job_status(server: CumuloServer, token: str, job_id: str) -> str:
    resp = httpx.get(
        f"{server.url}/v1/fine_tuning/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["status"])


def test_a_real_job_trains_live_to_succeeded_then_try_it(
    page: Any, ft_server: CumuloServer, marker: str
) -> None:
    server = ft_server
    mine = admin_post(server, "/admin/tenants", {"name": f"ft-{marker}"})
    theirs = admin_post(server, "/admin/tenants", {"name": f"ft-other-{marker}"})
    key = make_key(server, "caller", mine["id"])
    job_id, tuned = start_job(server, key.token, marker, epochs=1)
    sign_in(page, server, key.token)
    page.goto(f"{server.url}/console/fine-tuning/{job_id}")
    shot(page, "fine-tuning-job-training")
    # The page refreshes itself (htmx) while the job trains: no reload here.
    page.locator("#ft-job .status", has_text="succeeded").wait_for(timeout=300_000)
    chart = page.locator("figure.chart[aria-label='Loss per step'] svg")
    assert chart.count() == 1
    assert chart.locator(".series .line").count() == 1  # the training loss, a point a step
    events = page.locator("table.events").inner_text()
    assert "training starts" in events
    assert re.search(r"Step 4/4: training loss=\d+\.\d{4}", events), events
    assert page.locator("#ft-job dd.tuned code").inner_text() == tuned
    shot(page, "fine-tuning-job")
    # Without JavaScript the job's page reads the same: status, loss curve, events.
    no_js = page.context.browser.new_context(java_script_enabled=False)
    try:
        plain = no_js.new_page()
        sign_in(plain, server, key.token)
        plain.goto(f"{server.url}/console/fine-tuning/{job_id}")
        assert plain.locator("#ft-job .status").inner_text() == "succeeded"
        assert (
            plain.locator("figure.chart[aria-label='Loss per step'] svg .series .line").count() == 1
        )
        assert "Step 4/4" in plain.locator("table.events").inner_text()
        shot(plain, "no-javascript-fine-tuning-job")
    finally:
        no_js.close()
    # The jobs list: succeeded, with Try it.
    page.goto(server.url + "/console/fine-tuning")
    row = page.locator(f"tr[data-job='{job_id}']")
    assert row.locator(".status").inner_text() == "succeeded"
    shot(page, "fine-tuning-list")
    row.get_by_role("link", name=f"Try {tuned} in the playground").click()
    page.wait_for_url("**/console/playground?model=*")
    assert page.get_by_label("Model 1").input_value() == tuned
    page.get_by_label("Prompt", exact=True).fill(f"Where is {marker}?")
    page.get_by_label("Max tokens").fill("16")
    page.get_by_role("button", name="Send").click()
    panel = page.locator("#panels .panel").first
    panel.locator(".figures").wait_for(state="visible", timeout=120_000)
    assert panel.locator("h2").inner_text() == tuned
    assert panel.locator(".reply").inner_text().strip()  # the tuned model answered
    assert panel.locator(".error").is_hidden(), panel.inner_text()
    shot(page, "fine-tuning-try-it")
    # Another tenant: not listed, its URLs 404, and the tuned model is not offered to it.
    other = make_key(server, "caller", theirs["id"])
    page.context.clear_cookies()
    sign_in(page, server, other.token)
    page.goto(server.url + "/console/fine-tuning")
    assert job_id not in page.content()
    for url in (f"/console/fine-tuning/{job_id}", f"/console/fine-tuning/{job_id}/live"):
        resp = page.goto(server.url + url)
        assert resp.status == 404, url
        assert "training starts" not in page.content()
    page.goto(server.url + "/console/playground")
    assert tuned not in page.content()
    shot(page, "fine-tuning-other-tenant-404")


def test_a_running_job_is_cancelled_from_its_page(
    page: Any, ft_server: CumuloServer, marker: str
) -> None:
    server = ft_server
    mine = admin_post(server, "/admin/tenants", {"name": f"ftc-{marker}"})
    theirs = admin_post(server, "/admin/tenants", {"name": f"ftc-other-{marker}"})
    key = make_key(server, "caller", mine["id"])
    other = make_key(server, "caller", theirs["id"])
    job_id, _ = start_job(server, key.token, marker, epochs=50, n=50)  # 2,500 steps
    # Another tenant's session cannot cancel it: its form post is a 404, the job goes on.
    sign_in(page, server, other.token)
    page.goto(server.url + "/console/fine-tuning")
    csrf = page.locator("input[name=csrf]").first.input_value()
    resp = page.request.post(
        f"{server.url}/console/fine-tuning/{job_id}/cancel", form={"csrf": csrf}, max_redirects=0
    )
    assert resp.status == 404
    page.context.clear_cookies()
    sign_in(page, server, key.token)
    # Without the CSRF token: refused, and nothing changes.
    resp = page.request.post(
        f"{server.url}/console/fine-tuning/{job_id}/cancel", form={"x": "1"}, max_redirects=0
    )
    assert resp.status == 403
    assert job_status(server, key.token, job_id) in ("validating_files", "queued", "running")
    page.goto(f"{server.url}/console/fine-tuning/{job_id}")
    page.locator("#ft-job .status", has_text="running").wait_for(timeout=120_000)
    page.get_by_role("button", name="Cancel this job").click()
    page.wait_for_url(f"**/console/fine-tuning/{job_id}")
    page.locator("#ft-job .status", has_text="cancelled").wait_for()
    assert page.get_by_role("button", name="Cancel this job").count() == 0
    assert job_status(server, key.token, job_id) == "cancelled"
    assert "cancelled by key" in page.locator("table.events").inner_text()
    shot(page, "fine-tuning-cancelled")
