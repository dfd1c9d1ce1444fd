"""The Fine-tuning page in a real browser: a job with its loss chart, events and "Try it"
link; another tenant's job is not found.

The job and its events are written into the server's job tables in the shape the
fine-tuning kind (`cumulo.jobs.finetune.kind`) writes them, rather than trained here:
training a model takes longer than these browser tests should. The API's own tests
(tests/integration/test_fine_tuning.py) train for real.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from typing import Any

from test_browser import admin_post, make_key, sign_in

from support import CumuloServer
from support.browser import shot

LOSSES = [2.5, 1.9, 1.4, 1.1]


def _insert_job(server: CumuloServer, tenant_id: str, key_id: str, marker: str) -> tuple[str, str]:
    job_id = f"ftjob-{uuid.uuid4().hex}"
    tuned = f"ft:demo:{marker}:{job_id}"
    now = time.time()
    params = {
        "model": "demo",
        "suffix": marker,
        "fine_tuned_model": tuned,
        "hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0},
    }
    events: list[tuple[str, str]] = [
        ("info", f"created by key {key_id}"),
        ("info", "training starts"),
    ]
    for step, loss in enumerate(LOSSES, 1):
        events.append(
            (
                "metrics",
                json.dumps(
                    {
                        "step": step,
                        "total_steps": len(LOSSES),
                        "train_loss": loss,
                        "tokens_per_s": 120.0,
                    }
                ),
            )
        )
    events.append(
        (
            "metrics",
            json.dumps(
                {
                    "type": "checkpoint",
                    "step": len(LOSSES),
                    "train_loss": LOSSES[-1],
                    "valid_loss": None,
                }
            ),
        )
    )
    events.append(("info", f"<b>{marker}</b> done"))  # shown as text
    with contextlib.closing(sqlite3.connect(server.db_path)) as db, db:
        db.execute(
            "INSERT INTO jobs (id, kind, tenant_id, key_id, status, total, completed, failed,"
            " created_at, finished_at, params, input_file_id) VALUES"
            " (?, 'fine_tuning', ?, ?, 'completed', 1, 1, 0, ?, ?, ?, 'file-train')",
            (job_id, tenant_id, key_id, now, now, json.dumps(params)),
        )
        for seq, (level, message) in enumerate(events, 1):
            db.execute(
                "INSERT INTO job_events (job_id, seq, ts, level, message) VALUES (?, ?, ?, ?, ?)",
                (job_id, seq, now, level, message),
            )
    return job_id, tuned


def test_a_fine_tuning_job_shows_its_loss_curve_and_try_it(
    page: Any, server: CumuloServer, marker: str
) -> None:
    mine = admin_post(server, "/admin/tenants", {"name": f"ft-{marker}"})
    theirs = admin_post(server, "/admin/tenants", {"name": f"ft-other-{marker}"})
    key = make_key(server, "caller", mine["id"])
    job_id, tuned = _insert_job(server, mine["id"], key.id, marker)
    sign_in(page, server, key.token)
    page.goto(server.url + "/console/fine-tuning")
    row = page.locator(f"tr[data-job='{job_id}']")
    assert row.locator(".status").inner_text() == "succeeded"
    try_it = row.get_by_role("link", name=f"Try {tuned} in the playground")
    assert try_it.get_attribute("href") == "/console/playground?model=" + tuned.replace(":", "%3A")
    shot(page, "fine-tuning-list")
    row.get_by_role("link", name=f"Details of {job_id}").click()
    page.wait_for_url(f"**/console/fine-tuning/{job_id}")
    chart = page.locator("figure.chart[aria-label='Loss per step'] svg")
    assert chart.count() == 1
    # One line with a point per training step (the checkpoint event is not a step).
    assert chart.locator(".series .line").count() == 1
    assert page.locator("text=Step 4/4: training loss=1.1000").count() == 1
    assert page.get_by_text(f"<b>{marker}</b> done").count() == 1  # escaped, as text
    # No checkpoint directory was written for this job: the table says so.
    assert page.get_by_text("No checkpoints yet.").count() == 1
    shot(page, "fine-tuning-job")
    # Another tenant: not listed, and the job's URL is a 404.
    other = make_key(server, "caller", theirs["id"])
    page.context.clear_cookies()
    sign_in(page, server, other.token)
    page.goto(server.url + "/console/fine-tuning")
    assert job_id not in page.content()
    for url in (f"/console/fine-tuning/{job_id}", f"/console/fine-tuning/{job_id}/live"):
        resp = page.goto(server.url + url)
        assert resp.status == 404, url
        assert "training starts" not in page.content()
    shot(page, "fine-tuning-other-tenant-404")
