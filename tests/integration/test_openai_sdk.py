"""The official openai SDK, unchanged, against `cumulo serve` in front of a fake upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from fakes import FakeOpenAIUpstream, embedding_of
from support import UPSTREAM_KEY, ApiKey, CumuloServer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
    {"type": "function", "function": {"name": "weather"}},
]


@pytest.fixture
def client(cumulo: CumuloServer, caller_key: ApiKey) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=cumulo.url + "/v1", api_key=caller_key.token, max_retries=0, timeout=30
    ) as c:
        yield c


def test_chat(
    client: openai.OpenAI,
    upstream: FakeOpenAIUpstream,
    cumulo: CumuloServer,
    caller_key: ApiKey,
    marker: str,
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat-echo",
        messages=[{"role": "user", "content": f"hello {marker}"}],
        temperature=0.5,
        max_tokens=50,
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == f"echo: hello {marker}"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "chat-echo"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        2,
        3,
        5,
    )
    assert raw.headers["x-cumulo-deployment"] == "openai:echo"

    got = upstream.one(marker)
    assert got.model == "echo"
    assert got.body["temperature"] == 0.5 and got.body["max_tokens"] == 50
    # The upstream sees the deployment's key and headers, never the caller's cumulo key.
    assert got.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert got.headers["x-team"] == "search"
    assert caller_key.token not in json.dumps(got.headers)

    [row] = cumulo.usage_rows(caller_key.id)
    assert row["model"] == "chat-echo" and row["deployment"] == "openai:echo"
    assert (row["status"], row["error_type"], row["stream"]) == (200, None, 0)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 3)


def test_cookies_an_upstream_sets_are_not_sent_for_other_callers(
    client: openai.OpenAI, upstream: FakeOpenAIUpstream, cumulo: CumuloServer, marker: str
) -> None:
    """One upstream session serves every caller: a cookie it was given on one caller's
    request must not ride along on the next caller's."""
    other = cumulo.create_key("cookie-other")
    with openai.OpenAI(
        base_url=cumulo.url + "/v1", api_key=other.token, max_retries=0, timeout=30
    ) as second:
        for i, c in enumerate((client, second)):
            c.chat.completions.create(
                model="chat-cookie", messages=[{"role": "user", "content": f"{marker} {i}"}]
            )
    assert all("cookie" not in r.headers for r in upstream.received(marker))
    assert len(upstream.received(marker)) == 2


def test_chat_stream_with_usage(
    client: openai.OpenAI,
    upstream: FakeOpenAIUpstream,
    cumulo: CumuloServer,
    caller_key: ApiKey,
    marker: str,
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="chat-echo",
            messages=[{"role": "user", "content": f"stream me {marker}"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 3
    assert "".join(texts) == f"echo: stream me {marker}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        3,
        4,
        7,
    )
    assert all(c.model == "chat-echo" for c in chunks)
    assert len({c.id for c in chunks}) == 1

    assert upstream.one(marker).body["stream_options"] == {"include_usage": True}
    [row] = cumulo.usage_rows(caller_key.id)
    assert (row["status"], row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (
        200,
        1,
        3,
        4,
    )
    assert row["ttft_ms"] is not None and 0 <= row["ttft_ms"] <= row["latency_ms"]


def test_chat_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI, marker: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model="chat-echo",
            messages=[{"role": "user", "content": marker}],
            stream=True,
        )
    )
    assert all(c.usage is None for c in chunks)
    assert all(len(c.choices) == 1 for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == f"echo: {marker}"


def test_first_token_arrives_before_the_upstream_finishes(
    client: openai.OpenAI, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    # `hold` sends one word and waits (up to 10 s) for release(): if cumulo buffered the
    # stream, this 5 s read timeout would expire before the first word arrived.
    stream = client.with_options(timeout=5).chat.completions.create(
        model="chat-hold",
        messages=[{"role": "user", "content": f"a b {marker}"}],
        stream=True,
    )
    try:
        first = next(c.choices[0].delta.content for c in stream if c.choices[0].delta.content)
        assert first == "echo: "
        upstream.release()
        rest = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        upstream.release()
        stream.close()
    assert first + rest == f"echo: a b {marker}"


def test_tool_call(client: openai.OpenAI, upstream: FakeOpenAIUpstream, marker: str) -> None:
    reply = client.chat.completions.create(
        model="chat-tools",
        messages=[{"role": "user", "content": marker}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.id == "call_fake0001"
    assert call.function.name == "weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"query": marker}  # type: ignore[union-attr]

    body = upstream.one(marker).body
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}


def test_tool_call_streamed(
    client: openai.OpenAI, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="chat-tools",
            messages=[{"role": "user", "content": marker}],
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
            stream=True,
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert len(deltas) > 2
    assert deltas[0].id == "call_fake0002" and deltas[0].type == "function"
    assert deltas[0].function is not None and deltas[0].function.name == "search"
    assert {d.index for d in deltas} == {0}
    args = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(args) == {"query": marker}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert upstream.one(marker).body["tool_choice"] == "required"


def test_tool_results_reach_the_upstream(
    client: openai.OpenAI, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    reply = client.chat.completions.create(
        model="chat-echo",
        messages=[
            {"role": "user", "content": "what is the weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": f"rain {marker}"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "so? "}, {"type": "text", "text": "umbrella"}],
            },
        ],
    )
    assert reply.choices[0].message.content == "echo: so? umbrella"
    messages = upstream.one(marker).body["messages"]
    assert messages[1]["tool_calls"] == [
        {
            "id": "call_9",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert messages[2] == {"role": "tool", "content": f"rain {marker}", "tool_call_id": "call_9"}
    assert messages[3] == {"role": "user", "content": "so? umbrella"}


def test_embeddings_float_and_base64_agree(
    client: openai.OpenAI, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    texts = [f"alpha {marker}", "beta", "gamma"]
    as_float = client.embeddings.create(model="embed", input=texts, encoding_format="float")
    as_b64 = client.embeddings.create(model="embed", input=texts)  # the SDK asks for base64
    expected = [embedding_of(t) for t in texts]
    assert [d.embedding for d in as_float.data] == expected
    assert [d.embedding for d in as_b64.data] == expected
    assert [d.index for d in as_b64.data] == [0, 1, 2]
    assert as_float.model == "embed"
    assert as_float.usage.prompt_tokens == 4
    for got in upstream.received(marker):
        assert got.path == "/v1/embeddings"
        assert got.body["model"] == "embed-reversed" and got.body["encoding_format"] == "float"


def test_single_string_embedding(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model="embed", input="just one", encoding_format="float")
    assert [d.embedding for d in resp.data] == [embedding_of("just one")]


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"chat-echo", "team/chat-echo", "chat-tools", "embed", "azure-chat"} <= set(ids)
    model = client.models.retrieve("team/chat-echo")
    assert model.id == "team/chat-echo"
    assert model.object == "model"
    assert model.model_extra is not None and model.model_extra["kind"] == "chat"
    assert client.models.retrieve("embed").model_extra["kind"] == "embedding"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_model_name_with_a_slash_is_served(client: openai.OpenAI, marker: str) -> None:
    reply = client.chat.completions.create(
        model="team/chat-echo", messages=[{"role": "user", "content": marker}]
    )
    assert reply.choices[0].message.content == f"echo: {marker}"


def test_azure_deployment(client: openai.OpenAI, upstream: FakeOpenAIUpstream, marker: str) -> None:
    from support import AZURE_KEY

    reply = client.chat.completions.create(
        model="azure-chat", messages=[{"role": "user", "content": marker}]
    )
    assert reply.choices[0].message.content == f"echo: {marker}"
    got = upstream.one(marker)
    assert got.path == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert got.query == {"api-version": "2024-10-21"}
    assert got.headers["api-key"] == AZURE_KEY
    assert "authorization" not in got.headers


def test_bad_key_is_authentication_error(cumulo: CumuloServer) -> None:
    for key in ("sk-not-a-cumulo-key", "ck-0123456789abcdef.wrongsecret"):
        with openai.OpenAI(base_url=cumulo.url + "/v1", api_key=key, max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as info:
                c.chat.completions.create(
                    model="chat-echo", messages=[{"role": "user", "content": "x"}]
                )
            assert info.value.status_code == 401
            with pytest.raises(openai.AuthenticationError):
                c.models.list()


def test_unknown_model_is_not_found(
    client: openai.OpenAI, cumulo: CumuloServer, caller_key: ApiKey
) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gpt-nope", input="x")
    rows = cumulo.usage_rows(caller_key.id, expect=2)
    assert [(r["model"], r["status"]) for r in rows] == [("_unknown", 404), ("_unknown", 404)]


def test_invalid_body_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="chat-echo", messages=[{"role": "user", "content": "x"}], temperature=7
        )
    assert info.value.param == "temperature"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat-echo", messages=[])
    assert info.value.param == "messages"  # type: ignore[attr-defined]


def test_wrong_model_kind_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="chat-echo", input="x")
    assert info.value.param == "model"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "x"}])
