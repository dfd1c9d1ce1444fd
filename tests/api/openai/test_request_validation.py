"""Bad requests to the OpenAI front door: a 4xx naming the field, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fakes import FakeOpenAIUpstream
from support import (
    TEST_MAX_BODY,
    TEST_MAX_EMBEDDING_INPUTS,
    TEST_MAX_MESSAGES,
    ApiKey,
    CumuloServer,
)

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def key(cumulo: CumuloServer) -> ApiKey:
    return cumulo.create_key("validation")


@pytest.fixture(scope="module")
def http(cumulo: CumuloServer, key: ApiKey) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=cumulo.url, timeout=30, headers={"Authorization": f"Bearer {key.token}"}
    ) as c:
        yield c


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "chat-echo", "messages": USER, **fields}


def error_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return dict(error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(temperature="hot"), "temperature"),
        (chat(temperature=2.5), "temperature"),
        (chat(max_tokens=-1), "max_tokens"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_tokens="many"), "max_tokens"),
        (chat(max_completion_tokens=0), "max_completion_tokens"),
        (chat(top_p=1.5), "top_p"),
        (chat(presence_penalty=3), "presence_penalty"),
        (chat(seed=10**30), "seed"),
        (chat(max_tokens=10**30), "max_tokens"),
        (chat(stream="maybe"), "stream"),
        (chat(stream="yes"), "stream"),
        (chat(stream="true"), "stream"),
        (chat(stream=1), "stream"),
        (
            chat(stream=True, stream_options={"include_usage": "yes"}),
            "stream_options.include_usage",
        ),
        (
            chat(stream=True, stream_options={"include_usage": "perhaps"}),
            "stream_options.include_usage",
        ),
        (chat(user=5), "user"),
        (chat(tool_choice="sometimes"), "tool_choice"),
        (chat(tools=[{"type": "function"}]), "tools.0.function"),
        (chat(tools=[{"type": "function", "function": {"name": ""}}]), "tools.0.function.name"),
        (chat(n=2), "n"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(stop=[1]), "stop"),
        ({"messages": USER}, "model"),
        ({"model": "", "messages": USER}, "model"),
        ({"model": 3, "messages": USER}, "model"),
        ({"model": "chat-echo"}, "messages"),
        ({"model": "chat-echo", "messages": []}, "messages"),
        ({"model": "chat-echo", "messages": "hi"}, "messages"),
        ({"model": "chat-echo", "messages": ["hi"]}, "messages.0"),
        ({"model": "chat-echo", "messages": [{"content": "hi"}]}, "messages.0.role"),
        (
            {"model": "chat-echo", "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role",
        ),
        ({"model": "chat-echo", "messages": [{"role": "user"}]}, "messages.0.content"),
        (
            {"model": "chat-echo", "messages": [{"role": "user", "content": 5}]},
            "messages.0.content",
        ),
        (
            {"model": "chat-echo", "messages": [*USER, {"role": "tool", "content": "42"}]},
            "messages.1.tool_call_id",
        ),
        (
            {
                "model": "chat-echo",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://example.com/cat.png"},
                            },
                        ],
                    }
                ],
            },
            "messages.0.content.1.type",
        ),
        (
            {
                "model": "chat-echo",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c1", "type": "function", "function": {}}],
                    }
                ],
            },
            "messages.0.tool_calls.0.function.name",
        ),
    ],
)
def test_invalid_chat_request_names_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = error_of(http.post("/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_unknown_role_message_lists_the_valid_roles(http: httpx.Client) -> None:
    body = {"model": "chat-echo", "messages": [{"role": "robot", "content": "hi"}]}
    message = error_of(http.post("/v1/chat/completions", json=body), 400)["message"]
    assert "robot" in message and "assistant" in message


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"[]", b"null", b'"a string"', b'{"model": "chat-echo",', b"\xff\xfe"],
    ids=["broken", "empty", "array", "null", "string", "truncated", "not-utf8"],
)
def test_body_that_is_not_a_json_object_is_400(http: httpx.Client, raw: bytes) -> None:
    resp = http.post(
        "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert error_of(resp, 400)["type"] == "invalid_request_error"


def test_body_over_the_limit_is_413(http: httpx.Client, upstream: FakeOpenAIUpstream) -> None:
    before = len(upstream.received())
    big = "x" * (TEST_MAX_BODY + 1)
    resp = http.post("/v1/chat/completions", json=chat(messages=[{"role": "user", "content": big}]))
    error_of(resp, 413)
    resp = http.post("/v1/embeddings", json={"model": "embed", "input": big})
    error_of(resp, 413)
    assert len(upstream.received()) == before  # nothing was forwarded


def test_body_over_the_limit_without_content_length_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "chat-echo", "messages": [{"role": "user", "content": "'
        for _ in range(TEST_MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}]}'

    resp = http.post(
        "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in resp.request.headers
    error_of(resp, 413)


def test_body_just_under_the_limit_is_served(http: httpx.Client) -> None:
    text = "y" * (TEST_MAX_BODY - 200)
    resp = http.post(
        "/v1/chat/completions", json=chat(messages=[{"role": "user", "content": text}])
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == f"echo: {text}"


def test_message_and_input_counts_are_limited(http: httpx.Client) -> None:
    at_limit = [{"role": "user", "content": "hi"}] * TEST_MAX_MESSAGES
    assert http.post("/v1/chat/completions", json=chat(messages=at_limit)).status_code == 200
    over = http.post("/v1/chat/completions", json=chat(messages=[*at_limit, *USER]))
    assert error_of(over, 400)["param"] == "messages"

    texts = ["x"] * TEST_MAX_EMBEDDING_INPUTS
    assert http.post("/v1/embeddings", json={"model": "embed", "input": texts}).status_code == 200
    over = http.post("/v1/embeddings", json={"model": "embed", "input": [*texts, "y"]})
    assert error_of(over, 400)["param"] == "input"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "embed", "input": [[1, 2, 3]]}, "input"),
        ({"model": "embed", "input": [1, 2, 3]}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": ""}, "input"),
        ({"model": "embed", "input": ["ok", ""]}, "input"),
        ({"model": "embed", "input": {"text": "x"}}, "input"),
        ({"model": "embed"}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "embed", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "embed", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_invalid_embedding_request_names_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = error_of(http.post("/v1/embeddings", json=body), 400)
    assert error["param"] == param


def test_unknown_fields_are_ignored_like_openai_sdks_expect(http: httpx.Client) -> None:
    resp = http.post(
        "/v1/chat/completions",
        json=chat(logprobs=False, parallel_tool_calls=True, metadata={"a": "b"}),
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer ck-nope.nope"},
    ],
    ids=["missing", "basic", "empty-bearer", "unknown"],
)
def test_without_a_valid_key_is_401_before_anything_else(
    cumulo: CumuloServer, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=cumulo.url, headers=headers) as anon:
        for path, body in (
            ("/v1/chat/completions", {"model": "chat-echo"}),
            ("/v1/embeddings", {}),
            ("/v1/models", None),
        ):
            resp = anon.post(path, json=body) if body is not None else anon.get(path)
            assert error_of(resp, 401)["type"] == "authentication_error"


def test_unknown_route_and_wrong_method_use_the_error_shape(http: httpx.Client) -> None:
    assert error_of(http.get("/v1/nothing-here"), 404)["type"] == "not_found_error"
    error_of(http.get("/v1/chat/completions"), 405)


def test_no_garbage_request_causes_a_500(
    http: httpx.Client, cumulo: CumuloServer, key: ApiKey
) -> None:
    odd: list[Any] = [
        chat(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        chat(messages=[{"role": "user", "content": None}]),
        chat(messages=[{"role": "assistant", "content": None}]),
        chat(messages=[{"role": "system", "content": []}]),
        chat(response_format={"type": "json_schema", "huge": 10**40}),
        chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"x": 10**40}}}]),
        chat(tool_choice={"type": "function"}),
        chat(stop=""),
        chat(temperature=None, top_p=None, max_tokens=None, stop=None, tools=None),
        b'{"model": "chat-echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}',
        b'{"model": "chat-echo", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        chat(model="x" * 5000),
        chat(messages=[{"role": "user", "content": "\u0000\ud7ff"}]),
        {"model": "embed", "input": ["a"] * 3, "dimensions": 10**30},
    ]
    for body in odd:
        if isinstance(body, bytes):
            resp = http.post("/v1/chat/completions", content=body)
            assert resp.status_code < 500, (body, resp.text)
            continue
        path = "/v1/embeddings" if body.get("model") == "embed" else "/v1/chat/completions"
        resp = http.post(path, json=body)
        assert resp.status_code < 500, (body, resp.text)
    statuses = [
        row[0] for row in cumulo.sql("SELECT status FROM usage WHERE key_id = ?", (key.id,))
    ]
    assert all(s < 500 for s in statuses)
