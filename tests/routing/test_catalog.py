"""The catalog: what a model that failed to load tells callers, health checks and `serve`."""

from __future__ import annotations

import pytest

from cumulo.errors import ConfigError, Unavailable
from cumulo.routing.catalog import public_reason
from cumulo.routing.router import Router
from support.routing import chat_request, provider, run_with_router, scripted


@pytest.mark.parametrize(
    ("message", "public"),
    [
        (
            "local model directory /srv/home/models/demo-tiny does not exist; build it with "
            "`cumulo models build-demo`",
            "local model directory <path> does not exist; build it with `cumulo models build-demo`",
        ),
        (
            "cannot read the safetensors header of /m/x/model.safetensors: bad",
            "cannot read the safetensors header of <path>: bad",
        ),
        (
            "Error no file named model.bin found in directory '/opt/x y'.",
            "Error no file named model.bin found in directory '<path> y'.",
        ),
        (
            "package 'pkg' points to ~/models/x, which is not a directory",
            "package 'pkg' points to <path>, which is not a directory",
        ),
        (
            "cannot reach https://api.example.com/v1/models (status 503), 2/3 tried",
            "cannot reach https://api.example.com/v1/models (status 503), 2/3 tried",
        ),
        ("no such directory: /a/b.", "no such directory: <path>."),
        (
            "needs 1.5 GiB, but only 0.2 GiB of memory is available; not loaded",
            "needs 1.5 GiB, but only 0.2 GiB of memory is available; not loaded",
        ),
    ],
)
def test_public_reasons_hold_no_server_paths(message: str, public: str) -> None:
    assert public_reason(message) == public


def models(*, optional: bool) -> list[dict[str, object]]:
    return [
        {
            "name": "m",
            "optional": optional,
            "deployments": [scripted("a", name="a"), scripted("b", name="b")],
        },
        {"name": "other", "deployments": [scripted("c")]},
    ]


def test_a_deployment_that_fails_to_start_is_skipped_and_reported() -> None:
    async def main(router: Router) -> None:
        provider(router, "m", 0).start_error = ConfigError(
            "local model directory /srv/secret/models/x does not exist"
        )
        await router.catalog.start()
        assert (await router.run("m", "chat", attempt, 0)).deployment.label == "b"
        assert router.catalog.failures() == {"m": "local model directory <path> does not exist"}
        assert router.catalog.failures(required=True) == router.catalog.failures()
        assert router.catalog.ready and router.catalog.loading() == []

    run_with_router(models(optional=False), main)


def test_a_model_whose_deployments_all_failed_says_why() -> None:
    async def main(router: Router) -> None:
        provider(router, "m", 0).start_error = ConfigError("weights at /srv/a are corrupt")
        provider(router, "m", 1).start_error = RuntimeError("out of memory")
        await router.catalog.start()
        with pytest.raises(Unavailable) as info:
            await router.run("m", "chat", attempt, 0)
        assert info.value.code == "model_load_failed"
        assert info.value.message == (
            "The model 'm' failed to load: weights at <path> are corrupt; out of memory"
        )
        # An optional model that failed does not hold readiness back; a required one does.
        assert not router.catalog.ready
        assert router.catalog.failures(required=True) == {
            "m": "weights at <path> are corrupt; out of memory"
        }

    run_with_router(models(optional=False), main)


def test_an_optional_model_that_failed_leaves_the_platform_ready() -> None:
    async def main(router: Router) -> None:
        for i in (0, 1):
            provider(router, "m", i).start_error = ConfigError("missing")
        await router.catalog.start()
        assert router.catalog.ready
        assert router.catalog.failures() == {"m": "missing"}
        assert router.catalog.failures(required=True) == {}

    run_with_router(models(optional=True), main)


def test_a_model_still_loading_is_not_called_failed() -> None:
    async def main(router: Router) -> None:
        provider(router, "m", 0).is_ready = False
        provider(router, "m", 1).start_error = ConfigError("missing")
        await router.catalog.start()
        with pytest.raises(Unavailable) as info:
            await router.run("m", "chat", attempt, 0)
        assert info.value.code == "model_loading"
        assert router.catalog.loading() == ["m"]

    run_with_router(models(optional=False), main)


async def attempt(model: str, p: object) -> object:
    from cumulo.providers.base import Provider

    assert isinstance(p, Provider)
    return await p.chat(chat_request(model=model))
