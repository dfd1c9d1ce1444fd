"""cumulo.yaml: validated once, errors name the file and the key path, secrets only by env name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cumulo.config import (
    DEMO_MODEL,
    EMBED_MODEL,
    database_url,
    default_config,
    load_config,
)
from cumulo.errors import ConfigError, CumuloError
from cumulo.routing.catalog import deployment_label


def openai_dep(**extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "base_url": "https://api.example/v1",
        **extra,
    }


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "cumulo.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_for(tmp_path: Path, data: Any) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert str(path) in message  # every error names the file
    return message


def test_a_valid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_KEY_FOR_TEST", "sk-secret-value")
    path = write(
        tmp_path,
        {
            "server": {"port": 9000, "max_body_bytes": 1024},
            "usage": {"flush_interval_s": 2},
            "models": [
                {
                    "name": "gpt-4o-mini",
                    "context_window": 128000,
                    "deployments": [
                        openai_dep(
                            api_key_env="UPSTREAM_KEY_FOR_TEST", headers={"X-A": "b"}, timeout_s=30
                        )
                    ],
                },
                {
                    "name": "embed",
                    "kind": "embedding",
                    "deployments": [openai_dep(model="text-embedding-3-small")],
                },
            ],
        },
    )
    config = load_config(path)
    assert config.server.port == 9000 and config.server.max_body_bytes == 1024
    assert config.usage.flush_interval_s == 2
    model = config.model("gpt-4o-mini")
    assert model is not None and model.kind == "chat"
    dep = model.deployments[0]
    assert dep.api_key() == "sk-secret-value"
    assert dep.timeout_s == 30 and dep.headers == {"X-A": "b"}
    assert "sk-secret-value" not in deployment_label(dep, "gpt-4o-mini")
    assert config.model("embed").kind == "embedding"  # type: ignore[union-attr]
    assert config.model("nope") is None


def test_the_key_is_read_from_the_environment_when_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATING_KEY", "first")
    config = load_config(
        write(
            tmp_path,
            {"models": [{"name": "m", "deployments": [openai_dep(api_key_env="ROTATING_KEY")]}]},
        )
    )
    monkeypatch.setenv("ROTATING_KEY", "second")
    assert config.models[0].deployments[0].api_key() == "second"


def test_missing_required_deployment_field(tmp_path: Path) -> None:
    message = error_for(
        tmp_path, {"models": [{"name": "m", "deployments": [{"provider": "openai", "model": "x"}]}]}
    )
    assert "models.0.deployments.0" in message and "base_url" in message


def test_error_path_points_into_nested_lists(tmp_path: Path) -> None:
    message = error_for(
        tmp_path,
        {
            "models": [
                {"name": "ok", "deployments": [openai_dep()]},
                {"name": "bad", "deployments": [openai_dep(), openai_dep(timeout_s=-1)]},
            ]
        },
    )
    assert "models.1.deployments.1.timeout_s" in message


@pytest.mark.parametrize("value", ["sk-proj-abcdef0123456789", "Bearer abc", "has space", "1ABC"])
def test_a_key_written_where_an_env_var_name_belongs_is_rejected(
    tmp_path: Path, value: str
) -> None:
    message = error_for(
        tmp_path, {"models": [{"name": "m", "deployments": [openai_dep(api_key_env=value)]}]}
    )
    assert "models.0.deployments.0.api_key_env" in message
    assert "environment variable name" in message
    assert value not in message  # a pasted secret is not echoed into logs


def test_an_unset_env_var_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_FOR_CUMULO_TEST", raising=False)
    message = error_for(
        tmp_path,
        {
            "models": [
                {"name": "a", "deployments": [openai_dep()]},
                {"name": "b", "deployments": [openai_dep(api_key_env="NOT_SET_FOR_CUMULO_TEST")]},
            ]
        },
    )
    assert "models.1.deployments.0.api_key_env" in message
    assert "NOT_SET_FOR_CUMULO_TEST" in message and "not set" in message


def test_duplicate_model_names(tmp_path: Path) -> None:
    message = error_for(
        tmp_path,
        {
            "models": [
                {"name": "twin", "deployments": [openai_dep()]},
                {"name": "other", "deployments": [openai_dep()]},
                {"name": "twin", "deployments": [openai_dep()]},
            ]
        },
    )
    assert "models.2.name" in message and "duplicate" in message and "twin" in message


def test_duplicate_deployment_names_within_a_model(tmp_path: Path) -> None:
    message = error_for(
        tmp_path,
        {
            "models": [
                {"name": "m", "deployments": [openai_dep(name="east"), openai_dep(name="east")]}
            ]
        },
    )
    assert "models.0.deployments.1.name: duplicate" in message and "east" in message


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"modles": []}, "modles"),
        ({"server": {"port": "eighty"}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"max_body_bytes": 0}}, "server.max_body_bytes"),
        ({"usage": {"batch_size": 0}}, "usage.batch_size"),
        ({"models": [{"name": "m", "deployments": []}]}, "models.0.deployments"),
        ({"models": [{"name": "has space", "deployments": [openai_dep()]}]}, "models.0.name"),
        (
            {"models": [{"name": "m", "kind": "image", "deployments": [openai_dep()]}]},
            "models.0.kind",
        ),
        (
            {"models": [{"name": "m", "deployments": [{"provider": "local"}]}]},
            "models.0.deployments.0",
        ),
        (
            {"models": [{"name": "m", "deployments": [openai_dep(auth_header="basic")]}]},
            "models.0.deployments.0.auth_header",
        ),
        (
            {"models": [{"name": "m", "deployments": [openai_dep(api_key="sk-x")]}]},
            "models.0.deployments.0.api_key",
        ),
        (
            {"models": [{"name": "m", "deployments": [openai_dep(name="a\nb")]}]},
            "models.0.deployments.0.name",
        ),
        (
            {
                "models": [
                    {"name": "m", "routing": {"strategy": "fastest"}, "deployments": [openai_dep()]}
                ]
            },
            "models.0.routing.strategy",
        ),
    ],
)
def test_errors_name_the_key_path(tmp_path: Path, data: dict[str, Any], path: str) -> None:
    assert f": {path}: " in error_for(tmp_path, data)


def test_every_error_is_reported_each_on_its_line(tmp_path: Path) -> None:
    message = error_for(tmp_path, {"server": {"port": -1}, "usage": {"batch_size": 0}})
    lines = message.splitlines()
    assert len(lines) == 2
    assert any("server.port" in line for line in lines)
    assert any("usage.batch_size" in line for line in lines)


def test_invalid_yaml(tmp_path: Path) -> None:
    assert "not valid YAML" in error_for(tmp_path, "models: [\n")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "mapping" in error_for(tmp_path, "- a\n- b\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "absent.yaml" in info.value.message and "cannot read" in info.value.message


def test_config_errors_are_cumulo_errors() -> None:
    # The CLI turns CumuloError into one line; a ConfigError must be one.
    assert issubclass(ConfigError, CumuloError)


def test_cumulo_config_env_var_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"models": [{"name": "from-env", "deployments": [openai_dep()]}]})
    monkeypatch.setenv("CUMULO_CONFIG", str(path))
    assert [m.name for m in load_config().models] == ["from-env"]


def test_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUMULO_CONFIG", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("CUMULO_HOME", str(tmp_path))
    config = load_config()
    assert [m.name for m in config.models] == [EMBED_MODEL, DEMO_MODEL]
    demo = config.model(DEMO_MODEL)
    assert demo is not None and demo.untrained
    assert database_url(config) == f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}"

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    names = [m.name for m in default_config().models]
    assert "gpt-4o-mini" in names and "text-embedding-3-small" in names


def test_forwarded_headers_are_trusted_only_from_named_proxies() -> None:
    from cumulo.config import parse_config

    assert parse_config({}, "t").server.forwarded_allow_ips == []
    cfg = parse_config({"server": {"forwarded_allow_ips": ["10.0.0.0/8"]}}, "t")
    assert cfg.server.forwarded_allow_ips == ["10.0.0.0/8"]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (
            {"models": [{"name": "m", "deployments": [openai_dep(base_url="not-a-url")]}]},
            "models.0.deployments.0.base_url",
        ),
        (
            {"models": [{"name": "m", "deployments": [openai_dep(base_url="ftp://host/v1")]}]},
            "models.0.deployments.0.base_url",
        ),
        (
            {"models": [{"name": "m", "deployments": [openai_dep(base_url="https:///v1")]}]},
            "models.0.deployments.0.base_url",
        ),
        (
            {"models": [{"name": "m", "deployments": [openai_dep(base_url="http://h:99999/v1")]}]},
            "models.0.deployments.0.base_url",
        ),
        (
            {"models": [{"name": "m", "deployments": [openai_dep(base_url="http://a b/v1")]}]},
            "models.0.deployments.0.base_url",
        ),
        (
            {
                "models": [
                    {
                        "name": "m",
                        "deployments": [
                            {"provider": "anthropic", "model": "c", "base_url": "api.anthropic.com"}
                        ],
                    }
                ]
            },
            "models.0.deployments.0.base_url",
        ),
        ({"redis_url": "not-a-url"}, "redis_url"),
        ({"redis_url": "http://127.0.0.1:6379"}, "redis_url"),
        ({"database_url": "not-a-url"}, "database_url"),
    ],
)
def test_urls_are_validated_at_load(tmp_path: Path, data: dict[str, Any], path: str) -> None:
    message = error_for(tmp_path, data)
    assert f": {path}: " in message
    assert "URL" in message


def test_a_bad_database_url_never_echoes_its_password(tmp_path: Path) -> None:
    message = error_for(tmp_path, {"database_url": "postgresql://u:hunter2@host:notaport/db"})
    assert ": database_url: " in message and "hunter2" not in message


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "http://127.0.0.1:8000/v1",
        "http://[::1]:8000/v1",
        "https://my-resource.openai.azure.com/openai/deployments/x",
    ],
)
def test_good_base_urls_pass(tmp_path: Path, url: str) -> None:
    config = load_config(
        write(tmp_path, {"models": [{"name": "m", "deployments": [openai_dep(base_url=url)]}]})
    )
    assert config.models[0].deployments[0].base_url == url


def test_good_store_urls_pass(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            {
                "redis_url": "rediss://:pw@cache:6380/1",
                "database_url": "postgres://cumulo@db:5432/cumulo",
            },
        )
    )
    assert config.redis_url == "rediss://:pw@cache:6380/1"


def test_a_config_file_replaces_the_embedded_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUMULO_HOME", str(tmp_path))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = write(tmp_path, {"models": [{"name": "mine", "deployments": [openai_dep()]}]})
    assert [m.name for m in load_config(path).models] == ["mine"]


def test_include_defaults_keeps_the_embedded_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUMULO_HOME", str(tmp_path))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = write(
        tmp_path,
        {"include_defaults": True, "models": [{"name": "mine", "deployments": [openai_dep()]}]},
    )
    config = load_config(path)
    assert [m.name for m in config.models] == ["mine", EMBED_MODEL, DEMO_MODEL]
    demo = config.model(DEMO_MODEL)
    assert demo is not None and demo.untrained
    assert demo.deployments[0].path == str(tmp_path / "models" / DEMO_MODEL)


def test_a_model_of_the_file_wins_over_a_default_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUMULO_HOME", str(tmp_path))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = write(
        tmp_path,
        {
            "include_defaults": True,
            "models": [
                {"name": DEMO_MODEL, "deployments": [openai_dep()]},
                # A fallback may name a default model: it exists once the defaults are in.
                {"name": "chat", "fallbacks": [DEMO_MODEL], "deployments": [openai_dep()]},
            ],
        },
    )
    config = load_config(path)
    assert [m.name for m in config.models] == [DEMO_MODEL, "chat", EMBED_MODEL]
    demo = config.model(DEMO_MODEL)
    assert demo is not None and demo.deployments[0].provider == "openai"


def test_a_fallback_to_a_default_model_needs_include_defaults(tmp_path: Path) -> None:
    message = error_for(
        tmp_path,
        {"models": [{"name": "chat", "fallbacks": [EMBED_MODEL], "deployments": [openai_dep()]}]},
    )
    assert "models.0.fallbacks.0" in message


def test_the_demo_model_has_a_short_default_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUMULO_HOME", str(tmp_path))
    demo = default_config().model(DEMO_MODEL)
    assert demo is not None and demo.default_max_tokens is not None
    assert 1 <= demo.default_max_tokens <= 100
    assert error_for(
        tmp_path,
        {"models": [{"name": "m", "default_max_tokens": 0, "deployments": [openai_dep()]}]},
    )


def test_models_are_required_unless_marked_optional(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            {
                "models": [
                    {"name": "a", "deployments": [openai_dep()]},
                    {"name": "b", "optional": True, "deployments": [openai_dep()]},
                ]
            },
        )
    )
    assert [m.optional for m in config.models] == [False, True]


def test_server_tls_files_are_checked_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cumulo import tls

    home = tmp_path / "home"
    monkeypatch.setenv("CUMULO_HOME", str(home))
    tls.write_pair(tls.self_signed(), home / "tls" / "cert.pem", home / "tls" / "key.pem")
    relative = {"certfile": "tls/cert.pem", "keyfile": "tls/key.pem"}  # under CUMULO_HOME
    config = load_config(write(tmp_path, {"server": {"tls": relative}}))
    assert config.server.tls is not None
    assert config.server.tls.paths(home) == (home / "tls" / "cert.pem", home / "tls" / "key.pem")
    absolute = {
        "certfile": str(home / "tls" / "cert.pem"),
        "keyfile": str(home / "tls" / "key.pem"),
    }
    assert load_config(write(tmp_path, {"server": {"tls": absolute}})).server.tls is not None

    message = error_for(tmp_path, {"server": {"tls": {**relative, "keyfile": "tls/nope.pem"}}})
    assert f"server.tls.keyfile: cannot read {home / 'tls' / 'nope.pem'}: No such file" in message
    message = error_for(tmp_path, {"server": {"tls": {**relative, "certfile": "tls"}}})
    assert "server.tls.certfile: " in message and "is a directory" in message
    message = error_for(
        tmp_path, {"server": {"tls": {"certfile": "tls/key.pem", "keyfile": "tls/cert.pem"}}}
    )
    assert "server.tls: " in message and "not a PEM certificate and its private key" in message
    assert "server.tls.keyfile" in error_for(tmp_path, {"server": {"tls": {"certfile": "x"}}})
    assert "server.tls.certfile" in error_for(
        tmp_path, {"server": {"tls": {"certfile": "", "keyfile": "x"}}}
    )
