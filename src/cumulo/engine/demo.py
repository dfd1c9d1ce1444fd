"""The offline demo chat model: a tiny Llama with random weights.

`build_demo_model` writes a complete Hugging Face model directory without any
download: a byte-level BPE tokenizer trained on the bundled `demo_corpus.txt`,
a chat template, and a small `LlamaForCausalLM` whose weights are random
(seeded). The model is *untrained*: its output is gibberish, but it exercises
the whole local serving path (tokenizer, chat template, KV cache, sampling,
streaming) at the speed of a real model's control flow. A `cumulo.json` marker
records that the weights are untrained.

The build is deterministic for a given seed and atomic: everything is written
into a temporary directory beside the target, which is then renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from cumulo.engine.hf import quiet_progress

MARKER = "cumulo.json"
VOCAB_SIZE = 2048
BOS, EOS, PAD, END = "<|bos|>", "<|eos|>", "<|pad|>", "<|end|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS, END]

# Each turn is `<|role|>\ncontent<|end|>\n`; the generation prompt opens an
# assistant turn, which the model closes with `<|end|>` (a stop token).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] or '' }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def demo_corpus() -> str:
    """The bundled English text the demo tokenizer is trained on."""
    return files("cumulo").joinpath("data/demo_corpus.txt").read_text(encoding="utf-8")


def is_demo_built(target: Path) -> bool:
    """True when `target` holds a complete demo model built by `build_demo_model`."""
    marker = target / MARKER
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    required = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return bool(data.get("untrained")) and all((target / name).is_file() for name in required)


def build_demo_model(
    target: Path, *, seed: int = 0, shape: Mapping[str, int] | None = None
) -> Path:
    """Build the demo model into `target` (replacing it) and return `target`.

    Deterministic for a given `seed`; takes a few seconds on a CPU. `shape` overrides the
    Llama sizes (`hidden_size`, `num_attention_heads`, ...): servers whose kernels need a
    larger head (vLLM's CPU backend serves head sizes of 32 and up) get a wider variant.
    """
    target = Path(target).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with quiet_progress():
            _write_tokenizer(tmp)
            _write_model(tmp, seed, dict(shape or {}))
        marker: dict[str, object] = {
            "untrained": True,
            "built_by": "cumulo models build-demo",
            "seed": seed,
        }
        if shape:
            marker["shape"] = dict(shape)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        # mkdtemp makes a private directory; the model is ordinary readable data.
        tmp.chmod(0o755)
        for item in tmp.iterdir():
            item.chmod(0o644)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move `tmp` to `target`; an existing `target` is swapped out, then removed."""
    if not target.exists():
        tmp.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    old.rmdir()
    target.rename(old)
    try:
        tmp.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in demo_corpus().splitlines(keepends=True) if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer)

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[*ROLE_TOKENS, END],
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def _write_model(out: Path, seed: int, shape: dict[str, int]) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out), local_files_only=True)
    ids = tokenizer.convert_tokens_to_ids([BOS, EOS, PAD, END])
    bos_id, eos_id, pad_id, end_id = (int(i) for i in ids)
    sizes: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        **shape,
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **sizes,
        # Untied: with tied random embeddings greedy decoding just repeats the last token.
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=[eos_id, end_id],
        pad_token_id=pad_id,
    )
    # Seed the weights without disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call,unused-ignore]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=bos_id, eos_token_id=[eos_id, end_id], pad_token_id=pad_id
    )
    model.save_pretrained(str(out), safe_serialization=True)
