"""The demo model, built once per test session into a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from cumulo.engine.demo import build_demo_model


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("engine-models") / "demo-tiny", seed=0)
