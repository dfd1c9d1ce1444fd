"""The console's sessions and forms against a client that does not play by the rules:
no CSRF token, a cookie copied before sign-out, a forged cookie, a caller's key on a
manager's page."""

from __future__ import annotations

import contextlib
import csv
import io
import re
import subprocess
from collections.abc import Callable, Iterator

import httpx
import pytest

from fakes import FakeOpenAIUpstream
from support import CUMULO_BIN, CumuloServer, clean_env, openai_deployment


@contextlib.contextmanager
def sign_in(server: CumuloServer, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        form = http.get("/console/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        resp = http.post("/console/signin", data={"csrf": token.group(1), "key": key})
        assert resp.status_code == 303, resp.text
        assert http.cookies.get("cumulo_session")
        yield http


def csrf_of(http: httpx.Client) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', http.get("/console/keys").text)
    assert found is not None
    return found.group(1)


def test_the_session_cookie_is_httponly_and_strict(server: CumuloServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        token = re.search(r'name="csrf" value="([^"]+)"', http.get("/console/signin").text)
        assert token is not None
        resp = http.post("/console/signin", data={"csrf": token.group(1), "key": server.admin_key})
    cookie = next(
        v
        for k, v in resp.headers.multi_items()
        if k == "set-cookie" and v.startswith("cumulo_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie
    assert server.admin_key not in cookie


def test_a_form_without_its_csrf_token_is_refused(server: CumuloServer) -> None:
    with sign_in(server, server.admin_key) as http:
        token = csrf_of(http)
        for data in ({"name": "no-token"}, {"name": "bad-token", "csrf": "0" * 64}):
            resp = http.post("/console/keys", data=data)
            assert resp.status_code == 403
            assert "CSRF" in resp.text
        with server.admin() as admin:
            names = {k["name"] for k in admin.get("/admin/keys").json()["data"]}
        assert not names & {"no-token", "bad-token"}
        # The token of another session does not do either.
        with sign_in(server, server.admin_key) as other:
            resp = other.post("/console/keys", data={"name": "other-token", "csrf": token})
            assert resp.status_code == 403
        # With its own token, the same form works.
        resp = http.post("/console/keys", data={"name": "with-token", "csrf": token})
        assert resp.status_code == 200 and "only time the key is shown" in resp.text


def test_the_sign_in_form_needs_its_own_token(server: CumuloServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        resp = http.post("/console/signin", data={"key": server.admin_key})
        assert resp.status_code == 403
        assert "cumulo_session" not in http.cookies


def test_a_copied_cookie_dies_with_sign_out(server: CumuloServer) -> None:
    with sign_in(server, server.admin_key) as http, httpx.Client(base_url=server.url) as thief:
        stolen = http.cookies["cumulo_session"]
        token = csrf_of(http)
        thief.cookies.set("cumulo_session", stolen)
        assert thief.get("/console/keys").status_code == 200
        resp = http.post("/console/signout", data={"csrf": token})
        assert resp.status_code == 303
        resp = thief.get("/console/keys")
        assert resp.status_code == 303 and resp.headers["location"].startswith("/console/signin")
        resp = thief.post("/console/keys", data={"name": "after-signout", "csrf": token})
        assert resp.status_code == 401


def test_a_revoked_key_ends_its_sessions(server: CumuloServer) -> None:
    with server.admin() as admin:
        key = admin.post("/admin/keys", json={"name": "short-lived", "role": "admin"}).json()
    with sign_in(server, key["key"]) as http:
        assert http.get("/console/keys").status_code == 200
        with server.admin() as admin:
            assert admin.delete(f"/admin/keys/{key['id']}").status_code == 200
        assert http.get("/console/keys").status_code == 303


@pytest.mark.parametrize("cookie", ["", "forged", "x" * 2000, "InNvbWUtaWQi.aaaa.bbbb"])
def test_a_forged_cookie_is_no_session(server: CumuloServer, cookie: str) -> None:
    with httpx.Client(base_url=server.url, cookies={"cumulo_session": cookie}) as http:
        resp = http.get("/console/usage")
    assert resp.status_code == 303


def test_a_caller_gets_no_manager_page(server: CumuloServer) -> None:
    with server.admin() as admin:
        key = admin.post("/admin/keys", json={"name": "plain-caller"}).json()
    with sign_in(server, key["key"]) as http:
        page = http.get("/console/models").text
        assert 'href="/console/keys"' not in page and 'href="/console/usage"' not in page
        for path in (
            "/console/keys",
            "/console/usage",
            "/console/usage.csv",
            "/console/overview",
            "/console/audit",
            "/console/models/engine",
        ):
            assert http.get(path).status_code == 403, path
        resp = http.post("/console/keys", data={"name": "x", "csrf": csrf_from(http)})
        assert resp.status_code == 403


def csrf_from(http: httpx.Client) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', http.get("/console/playground").text)
    assert found is not None
    return found.group(1)


def test_usage_exports_as_csv_with_the_page_filters(server: CumuloServer) -> None:
    with server.admin() as admin:
        key = admin.post("/admin/keys", json={"name": "csv-export"}).json()
    resp = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key['key']}"},
        json={"model": "chat-echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200
    server.usage_rows(key["id"])
    with sign_in(server, server.admin_key) as http:
        resp = http.get(f"/console/usage.csv?range=1h&key_id={key['id']}")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(resp.text)))
    assert [(r["key_id"], r["model"], r["status"]) for r in lines] == [
        (key["id"], "chat-echo", "200")
    ]


def test_over_https_the_session_cookie_is_secure(
    upstream: FakeOpenAIUpstream,
    cumulo_factory: Callable[..., CumuloServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("console-tls")
    home = workdir / "home"
    run = subprocess.run(
        [str(CUMULO_BIN), "tls", "self-signed"],
        env=clean_env(CUMULO_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    tls = cumulo_factory(
        {
            "server": {"tls": {"certfile": "tls/cert.pem", "keyfile": "tls/key.pem"}},
            "models": [{"name": "chat-echo", "deployments": [openai_deployment(upstream, "echo")]}],
        },
        workdir=workdir,
        cafile=home / "tls" / "cert.pem",
    )
    with httpx.Client(base_url=tls.url, verify=tls.verify or True) as http:
        form = http.get("/console/signin")
        assert "Secure" in form.headers["set-cookie"]
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        resp = http.post("/console/signin", data={"csrf": token.group(1), "key": tls.admin_key})
    cookie = next(
        v
        for k, v in resp.headers.multi_items()
        if k == "set-cookie" and v.startswith("cumulo_session=")
    )
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_without_javascript_the_playground_answers_in_the_page_escaped(
    server: CumuloServer,
) -> None:
    payload = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    with sign_in(server, server.admin_key) as http:
        resp = http.post(
            "/console/playground",
            data={
                "csrf": csrf_from(http),
                "model": ["chat-echo", "chat-slow"],
                "prompt": payload,
                "system": "",
                "max_tokens": "64",
            },
        )
    assert resp.status_code == 200
    html = resp.text
    assert payload not in html and "<img src=x" not in html
    escaped = (
        "echo: &lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&#34;alert(2)&#34;&gt;"
    )
    assert html.count(escaped) == 2  # one panel per model
    assert len(re.findall(r'<dd class="latency">[\d,]+ ms</dd>', html)) == 2  # with figures
    assert len(re.findall(r'<dd class="ttft">[\d,]+ ms</dd>', html)) == 2
