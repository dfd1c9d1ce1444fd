"""The `cumulo` command, run as a user runs it: a subprocess against a running server."""

from __future__ import annotations

import functools
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fakes import FakeOpenAIUpstream, embedding_of
from support import (
    CUMULO_BIN,
    ApiKey,
    CumuloServer,
    clean_env,
    free_port,
    openai_deployment,
    write_config,
)
from support.waiting import wait_until


def cumulo_cli(
    *args: str, url: str, key: str | None = None, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = clean_env(CUMULO_URL=url, **env)
    if key is not None:
        full_env["CUMULO_API_KEY"] = key
    return subprocess.run(
        [str(CUMULO_BIN), *args],
        env=full_env,
        input=stdin,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cumulo: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# -- keys ---------------------------------------------------------------------------


def fields_of(stdout: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in stdout.splitlines())}


def test_tenants_and_their_keys_from_the_cli(cumulo: CumuloServer) -> None:
    made = cumulo_cli(
        "tenants",
        "create",
        "cli-team",
        "--model",
        "chat-echo",
        "--rpm",
        "5",
        "--budget-usd",
        "3",
        "--budget-period",
        "day",
        url=cumulo.url,
        key=cumulo.admin_key,
    )
    assert made.returncode == 0, made.stderr
    tenant_id = fields_of(made.stdout)["id"]
    listed = cumulo_cli("tenants", "list", url=cumulo.url, key=cumulo.admin_key)
    assert [tenant_id, "cli-team", "chat-echo", "-"] in [
        line.split() for line in listed.stdout.splitlines()
    ]

    key = cumulo_cli(
        "keys",
        "create",
        "cli-team-admin",
        "--role",
        "tenant_admin",
        "--tenant",
        tenant_id,
        url=cumulo.url,
        key=cumulo.admin_key,
    )
    assert key.returncode == 0, key.stderr
    admin = fields_of(key.stdout)
    assert admin["tenant"] == tenant_id and admin["role"] == "tenant_admin"
    # The tenant admin makes and rotates its own keys; it cannot make admin keys.
    own = fields_of(cumulo_cli("keys", "create", "svc", url=cumulo.url, key=admin["key"]).stdout)
    assert own["tenant"] == tenant_id
    rotated = cumulo_cli(
        "keys", "rotate", own["id"], "--grace", "60", url=cumulo.url, key=admin["key"]
    )
    assert rotated.returncode == 0, rotated.stderr
    assert fields_of(rotated.stdout)["key"] != own["key"]
    listed = cumulo_cli("keys", "list", url=cumulo.url, key=admin["key"])
    states = {line.split()[0]: line.split()[4] for line in listed.stdout.splitlines()[1:]}
    assert states[own["id"]] == "expires"
    refused = cumulo_cli(
        "keys", "create", "root", "--role", "admin", url=cumulo.url, key=admin["key"]
    )
    assert_one_line_error(refused, "403")


def test_tenants_show_update_and_delete(cumulo: CumuloServer) -> None:
    admin = {"url": cumulo.url, "key": cumulo.admin_key}
    made = cumulo_cli(
        "tenants",
        "create",
        "cli-changing",
        "--model",
        "chat-echo",
        "--rpm",
        "5",
        "--tpm",
        "1000",
        "--budget-usd",
        "3",
        "--log-retention-days",
        "7",
        **admin,
    )
    assert made.returncode == 0, made.stderr
    tenant_id = fields_of(made.stdout)["id"]

    # Only what is given changes: --rpm keeps the tpm, --budget-period keeps the amount.
    changed = cumulo_cli(
        "tenants",
        "update",
        tenant_id,
        "--name",
        "cli-changed",
        "--rpm",
        "9",
        "--budget-period",
        "day",
        "--guardrail",
        "pii-anonymize",
        "--log-invocations",
        "--json",
        **admin,
    )
    assert changed.returncode == 0, changed.stderr
    data = json.loads(changed.stdout)
    assert data["name"] == "cli-changed" and data["models"] == ["chat-echo"]
    assert data["limits"] == {"rpm": 9, "tpm": 1000, "concurrency": None}
    assert (data["budget"]["usd"], data["budget"]["period"]) == (3.0, "day")
    assert data["guardrails"] == ["pii-anonymize"] and data["log_invocations"] is True
    assert data["log_retention_days"] == 7

    cleared = cumulo_cli(
        "tenants",
        "update",
        tenant_id,
        "--all-models",
        "--no-limits",
        "--no-budget",
        "--no-guardrails",
        "--no-log-invocations",
        **admin,
    )
    assert cleared.returncode == 0, cleared.stderr
    shown = fields_of(cumulo_cli("tenants", "show", tenant_id, **admin).stdout)
    assert shown == {
        "id": tenant_id,
        "name": "cli-changed",
        "models": "*",
        "limits": "-",
        "budget": "-",
        "guardrails": "-",
        "log": "off",
    }

    clash = cumulo_cli("tenants", "update", tenant_id, "--no-budget", "--budget-usd", "1", **admin)
    assert clash.returncode == 2 and "contradict" in clash.stderr
    nothing = cumulo_cli("tenants", "update", tenant_id, **admin)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr

    key = fields_of(cumulo_cli("keys", "create", "doomed", "--tenant", tenant_id, **admin).stdout)
    asked = cumulo_cli("tenants", "delete", tenant_id, stdin="n\n", **admin)
    assert asked.returncode != 0 and "aborted" in asked.stderr.lower()
    deleted = cumulo_cli("tenants", "delete", tenant_id, "--yes", **admin)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted {tenant_id}"
    assert_one_line_error(cumulo_cli("tenants", "show", tenant_id, **admin), "404")
    assert_one_line_error(cumulo_cli("models", "list", url=cumulo.url, key=key["key"]), "401")


def test_keys_create_with_scopes_and_a_budget(cumulo: CumuloServer) -> None:
    admin = {"url": cumulo.url, "key": cumulo.admin_key}
    made = cumulo_cli(
        "keys",
        "create",
        "scoped",
        "--model",
        "chat-echo",
        "--rpm",
        "7",
        "--concurrency",
        "2",
        "--budget-usd",
        "1.5",
        "--budget-period",
        "day",
        "--budget-soft-pct",
        "0.5",
        **admin,
    )
    assert made.returncode == 0, made.stderr
    key_id = fields_of(made.stdout)["id"]
    listed = json.loads(cumulo_cli("keys", "list", "--json", **admin).stdout)
    [mine] = [k for k in listed["data"] if k["id"] == key_id]
    assert mine["models"] == ["chat-echo"]
    assert mine["limits"] == {"rpm": 7, "tpm": None, "concurrency": 2}
    assert mine["budget"] == {"usd": 1.5, "period": "day", "soft_pct": 0.5}
    alone = cumulo_cli("keys", "create", "x", "--budget-period", "day", **admin)
    assert alone.returncode == 2 and "--budget-usd" in alone.stderr


def test_the_admin_views(cumulo: CumuloServer, caller_key: ApiKey) -> None:
    admin = {"url": cumulo.url, "key": cumulo.admin_key}
    guardrails = cumulo_cli("guardrails", **admin)
    assert guardrails.returncode == 0, guardrails.stderr
    assert guardrails.stdout.split()[:3] == ["ID", "APPLIES_TO", "POLICIES"]
    assert any(line.startswith("pii-anonymize ") for line in guardrails.stdout.splitlines())

    assert (
        cumulo_cli("chat", "chat-echo", "hi", url=cumulo.url, key=caller_key.token).returncode == 0
    )
    deployments = cumulo_cli("deployments", **admin)
    assert deployments.returncode == 0, deployments.stderr
    [row] = [
        line.split() for line in deployments.stdout.splitlines() if line.startswith("chat-echo ")
    ]
    assert row[2:4] == ["ready", "closed"] and int(row[5]) >= 1
    assert json.loads(cumulo_cli("deployments", "--json", **admin).stdout)["object"] == "list"

    engine = cumulo_cli("engine", **admin)  # no local chat model here: the header only
    assert engine.returncode == 0 and engine.stdout.split()[:2] == ["MODEL", "STATE"]
    alerts = cumulo_cli("alerts", "--since", "1d", "--limit", "5", **admin)
    assert alerts.returncode == 0 and alerts.stdout.split()[:4] == [
        "ID",
        "TIME",
        "SEVERITY",
        "KIND",
    ]
    for args in (("guardrails",), ("deployments",), ("engine",), ("alerts",)):
        assert_one_line_error(cumulo_cli(*args, url=cumulo.url, key=caller_key.token), "403")


def test_invocations_of_a_logged_tenant(cumulo: CumuloServer, marker: str) -> None:
    admin = {"url": cumulo.url, "key": cumulo.admin_key}
    tenant = fields_of(
        cumulo_cli("tenants", "create", f"logged-{marker}", "--log-invocations", **admin).stdout
    )["id"]
    key = fields_of(cumulo_cli("keys", "create", "app", "--tenant", tenant, **admin).stdout)
    assert (
        cumulo_cli(
            "chat", "chat-echo", f"remember {marker}", url=cumulo.url, key=key["key"]
        ).returncode
        == 0
    )

    def logged() -> list[dict[str, object]]:
        out = cumulo_cli("invocations", "--tenant", tenant, "--model", "chat-echo", **admin)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    assert wait_until(lambda: logged(), timeout=10)
    [entry] = logged()
    assert entry["key_id"] == key["id"] and marker in json.dumps(entry["request"])


def test_keys_create_list_revoke(cumulo: CumuloServer) -> None:
    created = cumulo_cli("keys", "create", "cli-app", url=cumulo.url, key=cumulo.admin_key)
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["name"] == "cli-app" and fields["role"] == "caller"
    token, key_id = fields["key"], fields["id"]
    assert token.startswith(f"ck-{key_id}.")
    assert "shown once" in created.stderr

    listed = cumulo_cli("keys", "list", url=cumulo.url, key=cumulo.admin_key)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["ID", "NAME", "ROLE", "TENANT", "STATE"]
    [row] = [line.split() for line in listed.stdout.splitlines() if line.startswith(key_id)]
    assert row == [key_id, "cli-app", "caller", "-", "active"]
    assert token.split(".", 1)[1] not in listed.stdout

    # The new key works as CUMULO_API_KEY ...
    assert cumulo_cli("models", "list", url=cumulo.url, key=token).returncode == 0
    revoked = cumulo_cli("keys", "revoke", key_id, url=cumulo.url, key=cumulo.admin_key)
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"revoked {key_id}"
    # ... and not once revoked.
    assert_one_line_error(cumulo_cli("models", "list", url=cumulo.url, key=token), "401")

    listed = cumulo_cli("keys", "list", url=cumulo.url, key=cumulo.admin_key)
    assert key_id not in listed.stdout
    listed_all = cumulo_cli("keys", "list", "--all", url=cumulo.url, key=cumulo.admin_key)
    [row] = [line.split() for line in listed_all.stdout.splitlines() if line.startswith(key_id)]
    assert row[-1] == "revoked"

    again = cumulo_cli("keys", "revoke", key_id, url=cumulo.url, key=cumulo.admin_key)
    assert_one_line_error(again, "404")


def test_admin_role_and_key_option(cumulo: CumuloServer) -> None:
    # --key wins over CUMULO_API_KEY.
    created = cumulo_cli(
        "--key",
        cumulo.admin_key,
        "keys",
        "create",
        "ops",
        "--role",
        "admin",
        url=cumulo.url,
        key="ck-wrong.wrong",
    )
    assert created.returncode == 0, created.stderr
    assert fields_of(created.stdout)["role"] == "admin"


def test_caller_key_cannot_manage_keys(cumulo: CumuloServer, caller_key: ApiKey) -> None:
    result = cumulo_cli("keys", "list", url=cumulo.url, key=caller_key.token)
    assert_one_line_error(result, "403")


# -- models, chat, embed, usage -------------------------------------------------------


def test_models_list(cumulo: CumuloServer, caller_key: ApiKey) -> None:
    result = cumulo_cli("models", "list", url=cumulo.url, key=caller_key.token)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "KIND", "PROVIDERS", "NOTES"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["chat-echo"] == ["chat", "openai"]
    assert rows["embed"] == ["embedding", "openai"]
    assert "team/chat-echo" in rows


def test_chat_streams_the_reply(
    cumulo: CumuloServer, caller_key: ApiKey, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    result = cumulo_cli(
        "chat",
        "chat-echo",
        f"hello {marker}",
        "--system",
        "be terse",
        "--max-tokens",
        "20",
        "--temperature",
        "0.3",
        url=cumulo.url,
        key=caller_key.token,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"echo: hello {marker}\n"
    body = upstream.one(marker).body
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": f"hello {marker}"},
    ]
    assert (body["max_tokens"], body["temperature"]) == (20, 0.3)
    [row] = cumulo.usage_rows(caller_key.id)
    assert (row["stream"], row["status"]) == (1, 200)


def test_chat_asks_for_a_bounded_reply_by_default(
    cumulo: CumuloServer, caller_key: ApiKey, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    result = cumulo_cli(
        "chat", "chat-echo", f"hello {marker}", url=cumulo.url, key=caller_key.token
    )
    assert result.returncode == 0, result.stderr
    assert upstream.one(marker).body["max_tokens"] == 1024


def test_chat_leaves_the_length_to_a_model_that_has_a_default(
    upstream: FakeOpenAIUpstream, cumulo_factory: Callable[..., CumuloServer], marker: str
) -> None:
    server = cumulo_factory(
        {
            "models": [
                {
                    "name": "short",
                    "default_max_tokens": 5,
                    "deployments": [openai_deployment(upstream, "echo")],
                }
            ]
        }
    )
    result = cumulo_cli("chat", "short", f"hello {marker}", url=server.url, key=server.admin_key)
    assert result.returncode == 0, result.stderr
    assert upstream.one(marker).body["max_tokens"] == 5


def test_chat_reads_the_prompt_from_stdin(
    cumulo: CumuloServer, caller_key: ApiKey, marker: str
) -> None:
    result = cumulo_cli(
        "chat", "chat-echo", url=cumulo.url, key=caller_key.token, stdin=f"piped {marker}"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"echo: piped {marker}\n"


def test_chat_with_an_empty_prompt_is_a_usage_error(
    cumulo: CumuloServer, caller_key: ApiKey
) -> None:
    result = cumulo_cli("chat", "chat-echo", url=cumulo.url, key=caller_key.token, stdin="  \n")
    assert result.returncode == 2
    assert "empty prompt" in result.stderr and "Traceback" not in result.stderr


def test_chat_failing_mid_stream_keeps_the_text_and_reports_one_line(
    cumulo: CumuloServer, caller_key: ApiKey
) -> None:
    result = cumulo_cli(
        "chat", "chat-disconnect", "one two three four", url=cumulo.url, key=caller_key.token
    )
    assert result.stdout == "echo: one "
    assert_one_line_error(result, "mid-stream")


@pytest.mark.parametrize(
    ("model", "fragment"),
    [("no-such-model", "404"), ("chat-500", "502"), ("chat-timeout", "504"), ("embed", "400")],
)
def test_chat_errors_are_one_line(
    cumulo: CumuloServer, caller_key: ApiKey, model: str, fragment: str
) -> None:
    result = cumulo_cli("chat", model, "hi", url=cumulo.url, key=caller_key.token)
    assert result.stdout == ""
    assert_one_line_error(result, fragment)


def test_embed_prints_one_json_vector_per_text(cumulo: CumuloServer, caller_key: ApiKey) -> None:
    result = cumulo_cli(
        "embed", "embed", "first text", "second", url=cumulo.url, key=caller_key.token
    )
    assert result.returncode == 0, result.stderr
    vectors = [json.loads(line) for line in result.stdout.splitlines()]
    assert vectors == [embedding_of("first text"), embedding_of("second")]


def test_usage_prints_totals_per_key_model_and_tenant(
    cumulo: CumuloServer, caller_key: ApiKey
) -> None:
    assert (
        cumulo_cli("chat", "chat-echo", "count me", url=cumulo.url, key=caller_key.token).returncode
        == 0
    )
    result = cumulo_cli("usage", url=cumulo.url, key=cumulo.admin_key)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "usage, all time"
    assert lines[2].split() == [
        "KEY",
        "REQUESTS",
        "ERRORS",
        "PROMPT_TOKENS",
        "COMPLETION_TOKENS",
        "COST_USD",
        "AVG_MS",
    ]
    assert any(line.startswith("MODEL ") for line in lines)
    assert any(line.startswith("TENANT ") for line in lines)
    [mine] = [line.split() for line in lines if line.startswith(caller_key.id)]
    assert mine[1:6] == ["1", "0", "2", "3", "0.000000"]


def test_usage_by_tenant_and_time_window_with_costs(
    upstream: FakeOpenAIUpstream, cumulo_factory: Callable[..., CumuloServer]
) -> None:
    # USD 1 a prompt token and 2 a completion token: costs are easy to check.
    price = {"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000}
    server = cumulo_factory(
        {
            "usage": {"flush_interval_s": 0.1},
            "models": [
                {
                    "name": "priced",
                    "deployments": [openai_deployment(upstream, "echo", price=price)],
                }
            ],
        }
    )
    admin = {"url": server.url, "key": server.admin_key}
    tenant = fields_of(cumulo_cli("tenants", "create", "paying", **admin).stdout)["id"]
    inside = fields_of(cumulo_cli("keys", "create", "in", "--tenant", tenant, **admin).stdout)
    outside = fields_of(cumulo_cli("keys", "create", "out", **admin).stdout)
    for key in (inside, outside):
        chat = cumulo_cli("chat", "priced", "count me", url=server.url, key=key["key"])
        assert chat.returncode == 0, chat.stderr

    by_tenant = cumulo_cli("usage", "--tenant", tenant, **admin)
    assert by_tenant.returncode == 0, by_tenant.stderr
    assert by_tenant.stdout.splitlines()[0] == f"usage, all time, tenant {tenant}"
    rows = {
        line.split()[0]: line.split()[1:]
        for line in by_tenant.stdout.splitlines()[1:]
        if line.strip()
    }
    assert inside["id"] in rows and outside["id"] not in rows
    requests, errors, prompt, completion, cost = rows[inside["id"]][:5]
    assert (requests, errors) == ("1", "0")
    assert float(cost) == pytest.approx(int(prompt) * 1 + int(completion) * 2)
    assert rows[tenant][:2] == ["1", "0"]

    recent = cumulo_cli("usage", "--since", "1h", **admin)
    assert recent.stdout.startswith("usage, since 20")
    assert inside["id"] in recent.stdout and outside["id"] in recent.stdout
    later = cumulo_cli("usage", "--since", str(time.time() + 3600), "--json", **admin)
    assert json.loads(later.stdout)["by_key"] == []
    bad = cumulo_cli("usage", "--since", "last tuesday", **admin)
    assert bad.returncode == 2 and "is not a time" in bad.stderr


def test_bad_key_is_one_line_and_nonzero(cumulo: CumuloServer) -> None:
    result = cumulo_cli("models", "list", url=cumulo.url, key="ck-0000.bad")
    assert result.stdout == ""
    assert_one_line_error(result, "401", "Incorrect API key")


@pytest.mark.parametrize("args", [("usage",), ("models", "list"), ("chat", "chat-echo", "hi")])
def test_missing_key_says_how_to_give_one(cumulo: CumuloServer, args: tuple[str, ...]) -> None:
    line = assert_one_line_error(cumulo_cli(*args, url=cumulo.url), "--key", "CUMULO_API_KEY")
    assert "Authorization" not in line and "Bearer" not in line


def test_server_down_is_one_line_and_nonzero() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("models", "list"), ("chat", "m", "hi"), ("embed", "m", "x")):
        result = cumulo_cli(*args, url=url, key="ck-0000.any")
        assert_one_line_error(result, "cannot reach cumulo", url)


@pytest.fixture
def not_cumulo(tmp_path: Path) -> Iterator[str]:
    """A plain web server (HTML for GET /v1/models, HTML errors elsewhere) at a URL."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text("<html><body>\n<h1>Welcome</h1>\n</body></html>\n")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    "args",
    [("models", "list"), ("usage",), ("chat", "m", "hi"), ("embed", "m", "x")],
    ids=["html-200", "html-404", "html-501-stream", "html-501"],
)
def test_a_url_that_is_not_cumulo_is_one_line(not_cumulo: str, args: tuple[str, ...]) -> None:
    result = cumulo_cli(*args, url=not_cumulo, key="ck-0000.any")
    assert_one_line_error(result, "did not answer like cumulo")


# -- serve with a bad config --------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        (
            {"models": [{"name": "m", "deployments": [{"provider": "openai", "model": "x"}]}]},
            ["models.0.deployments.0", "base_url"],
        ),
        (
            {"models": [{"name": "m", "deployments": [{"provider": "nosuch"}]}]},
            ["models.0.deployments.0.provider", "nosuch"],
        ),
        (
            {
                "models": [
                    {
                        "name": "m",
                        "deployments": [
                            {"provider": "openai", "model": "x", "base_url": "not-a-url"}
                        ],
                    }
                ]
            },
            ["models.0.deployments.0.base_url", "not a valid http:// or https:// URL"],
        ),
        ({"redis_url": "not-a-url"}, ["redis_url", "not a valid redis://"]),
    ],
    ids=["missing-base-url", "unknown-provider", "bad-base-url", "bad-redis-url"],
)
def test_serve_with_a_bad_config_says_why_in_one_line(
    tmp_path: Path, config: dict[str, object], fragments: list[str]
) -> None:
    path = write_config(tmp_path / "bad.yaml", config)
    result = subprocess.run(
        [str(CUMULO_BIN), "serve", "--config", str(path), "--port", str(free_port())],
        env=clean_env(CUMULO_HOME=str(tmp_path / "home"), CUMULO_ADMIN_KEY="x"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_one_line_error(result, str(path), *fragments)


def test_serve_with_a_missing_config_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CUMULO_BIN), "serve", "--config", str(tmp_path / "nope.yaml")],
        env=clean_env(CUMULO_HOME=str(tmp_path / "home")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_one_line_error(result, "nope.yaml", "cannot read")
