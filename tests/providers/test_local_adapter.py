"""A LoRA adapter served on a local base's engine (`LocalAdapter`), with the demo model:
chat, streaming and completions with the adapter, the base unchanged beside it, and the
adapter registered with the base's engine while it serves (no engine of its own)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from cumulo.config import DeploymentConfig
from cumulo.engine.demo import build_demo_model
from cumulo.errors import ConfigError, Unavailable
from cumulo.providers.base import ProviderContext
from cumulo.providers.local import LocalProvider
from cumulo.providers.local_adapter import LocalAdapter
from cumulo.types import ChatRequest, CompletionRequest, Message, SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("adapter-base") / "demo-tiny", seed=0)


def make_adapter(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        init_lora_weights=False,
        target_modules=["q_proj", "v_proj", "o_proj"],
    )
    peft = get_peft_model(model, config)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(5)
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    peft.save_pretrained(str(out))
    return out


def greedy(text: str) -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=[Message(role="user", content=text)],
        params=SamplingParams(max_tokens=12, temperature=0.0),
    )


def test_adapter_on_the_base_engine(demo: Path, tmp_path: Path) -> None:
    adapter_dir = make_adapter(demo, tmp_path / "adapter")
    deployment = DeploymentConfig(
        provider="local", path=str(demo), dtype="float32", lora_cache_size=2
    )
    ctx = ProviderContext(http=None, home=tmp_path)
    base = LocalProvider(deployment, "chat", ctx)

    async def scenario() -> None:
        tuned = LocalAdapter(base, "ft:demo:x:1", adapter_dir, deployment)
        with pytest.raises(Unavailable):  # the base does not serve yet
            await tuned.start()
        await base.start()
        await tuned.start()
        assert tuned.ready and tuned.stats() is None
        worker = base.worker
        assert worker is not None and worker.adapters.names() == ["ft:demo:x:1"]
        # Both at once, in the same engine: the adapter changes the reply, the base is as alone.
        alone = (await base.chat(greedy("clouds over the sea"))).message.content
        a, b = await asyncio.gather(
            tuned.chat(greedy("clouds over the sea")), base.chat(greedy("clouds over the sea"))
        )
        assert b.message.content == alone
        assert a.message.content != alone
        streamed = [e async for e in tuned.stream(greedy("clouds over the sea"))]
        assert "".join(getattr(e, "text", "") for e in streamed) == a.message.content
        done = await tuned.complete(
            CompletionRequest(
                model="m",
                prompts=["rain and wind"],
                params=SamplingParams(max_tokens=6, temperature=0.0),
            )
        )
        plain = await base.complete(
            CompletionRequest(
                model="m",
                prompts=["rain and wind"],
                params=SamplingParams(max_tokens=6, temperature=0.0),
            )
        )
        assert done.choices[0].text != plain.choices[0].text
        await tuned.close()
        assert worker.adapters.names() == []
        bad = LocalAdapter(base, "ft:demo:bad:1", tmp_path / "missing", deployment)
        with pytest.raises(ConfigError):
            await bad.start()
        await base.close()

    asyncio.run(scenario())
