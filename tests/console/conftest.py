"""A cumulo server for the console tests, and a headless Chromium driven by Playwright.

The browser is Debian's system Chromium (`/usr/bin/chromium`, or `CUMULO_CHROMIUM`):
Playwright never downloads one. Screenshots of the pages go to `artifacts/console/`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fakes import FakeOpenAIUpstream
from support import CumuloServer, openai_deployment
from support.browser import chromium_path


@pytest.fixture(scope="module")
def server(
    upstream: FakeOpenAIUpstream, cumulo_factory: Callable[..., CumuloServer]
) -> CumuloServer:
    price = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
    return cumulo_factory(
        {
            "usage": {"flush_interval_s": 0.1},
            "guardrails": [
                {
                    "id": "strict",
                    "denied_topics": [{"name": "investment advice", "keywords": ["stock tip*"]}],
                    "blocked_input_message": "Sorry, I cannot help with that.",
                },
            ],
            "models": [
                {
                    "name": "chat-echo",
                    "guardrails": ["strict"],
                    "deployments": [openai_deployment(upstream, "echo", price=price)],
                },
                {
                    "name": "chat-slow",
                    "deployments": [openai_deployment(upstream, "slow:0.3", price=price)],
                },
                {"name": "chat-slower", "deployments": [openai_deployment(upstream, "slow:3")]},
                {
                    "name": "embed-fake",
                    "kind": "embedding",
                    "deployments": [openai_deployment(upstream, "embed")],
                },
            ],
        }
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()
