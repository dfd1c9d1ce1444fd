"""The benchmark model: shaped like Qwen2-0.5B, random weights, built offline.

Hidden size 896, 24 layers, 14 attention heads and 2 KV heads, MLP 4864, vocabulary 151,936,
tied embeddings, bfloat16 (about 494 M parameters, 0.99 GB). The tokenizer is a byte-level BPE
trained on cumulo's demo corpus, its vocabulary padded with plain ASCII tokens up to the
model's 151,936, so that every token id the model can produce decodes to text (a streamed
token is then a streamed text chunk, and time to first token is measurable over HTTP). The
chat template is ChatML, like Qwen's.

Built once into `~/.cache/cumulo-bench/qwen05b` (atomically: a temporary directory beside
it, renamed into place) and reused while its `cumulo.json` marker matches this shape.

    python bench/bench_model.py [--dir DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import string
import tempfile
from pathlib import Path

DEFAULT_DIR = Path("~/.cache/cumulo-bench/qwen05b").expanduser()
SHAPE = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
}
EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] or '' }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MARKER = "cumulo.json"


def is_built(target: Path) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return marker.get("shape") == SHAPE and all((target / f).is_file() for f in files)


def ensure_model(target: Path = DEFAULT_DIR, *, rebuild: bool = False) -> Path:
    """The model directory, built first when missing, stale or `rebuild`."""
    target = target.expanduser().resolve()
    if rebuild or not is_built(target):
        print(f"building the benchmark model into {target} (once; about a minute) ...", flush=True)
        build(target)
    return target


def build(target: Path, seed: int = 0) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_tokenizer(tmp)
        _write_model(tmp, seed)
        marker = {"untrained": True, "built_by": "bench/bench_model.py", "shape": SHAPE}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from cumulo.engine.demo import demo_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=[EOT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([ln for ln in demo_corpus().splitlines(True) if ln.strip()], trainer)

    # Pad the vocabulary with 3-letter ASCII tokens (never produced by encoding: no merges
    # lead to them; decoded as themselves) up to the model's vocabulary size.
    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    letters = string.ascii_letters + string.digits
    fillers = ("".join(t) for t in itertools.product(letters, repeat=3))
    for token in fillers:
        if len(vocab) >= SHAPE["vocab_size"]:
            break
        if token not in vocab:
            vocab[token] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(data))

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token=EOT,
        pad_token=EOT,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=SHAPE["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def _write_model(out: Path, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out), local_files_only=True)
    eot, im_end = (int(i) for i in tokenizer.convert_tokens_to_ids([EOT, IM_END]))
    config = Qwen2Config(**SHAPE, bos_token_id=eot, eos_token_id=[eot, im_end], pad_token_id=eot)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=eot, eos_token_id=[eot, im_end], pad_token_id=eot
    )
    model.save_pretrained(str(out), safe_serialization=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    print(ensure_model(args.dir, rebuild=args.rebuild))
