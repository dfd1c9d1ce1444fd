"""A provider's one-line description (logged at start) never shows URL credentials."""

from __future__ import annotations

from pathlib import Path

from cumulo.config import DeploymentConfig
from cumulo.providers.base import ProviderContext, shown_url
from cumulo.providers.openai import OpenAIProvider


def test_user_password_and_query_are_left_out() -> None:
    url = "https://alice:s3cret@llm.internal:8443/v1?api-key=k-123"
    assert shown_url(url) == "https://llm.internal:8443/v1"


def test_ipv6_host_keeps_its_brackets() -> None:
    assert shown_url("http://u:p@[::1]:9000/v1") == "http://[::1]:9000/v1"


def test_unparsable_url_is_not_shown() -> None:
    assert shown_url("http://host:99999999/") == "<url>"


def test_openai_compatible_description_has_no_credentials(tmp_path: Path) -> None:
    d = DeploymentConfig(
        provider="openai", model="m", base_url="https://bob:hunter2@vllm.local/v1?token=t0"
    )
    line = OpenAIProvider(d, "chat", ProviderContext(None, tmp_path)).describe()
    assert "hunter2" not in line and "t0" not in line and "bob" not in line
    assert "https://vllm.local/v1" in line
