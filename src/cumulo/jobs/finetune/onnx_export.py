"""An ONNX export of a merged model, checked by running it with onnxruntime.

`export_onnx(model_dir, out)` writes `out/model.onnx` (and its external weights when large):
the causal LM as one graph from `input_ids` and `attention_mask` (batch and sequence
dynamic) to the `logits` of every position, no KV cache (a runtime that wants one adds it),
exported with torch's own exporter (`torch.onnx.export(dynamo=True)`, which needs the
`onnxscript` package). `verify_onnx` then decodes greedily with onnxruntime and with
transformers from the same prompt and fails unless both pick the same tokens.

Needs the `onnx` extra (`pip install 'cumulo[onnx]'`: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

EXTRA = "the ONNX export needs the onnx extra: pip install 'cumulo[onnx]'"
FILE = "model.onnx"


def check_installed() -> None:
    """RuntimeError naming the extra when onnx, onnxscript or onnxruntime is missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not importlib.util.find_spec(m)]
    if missing:
        raise RuntimeError(f"{EXTRA} ({', '.join(missing)} missing)")


def _load(model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, local_files_only=True
    )
    return model.eval()


def export_onnx(model_dir: Path, out: Path) -> Path:
    """Write the ONNX graph of the model in `model_dir` into `out`; its path."""
    import torch

    model = _load(model_dir)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits

    out.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notes
        torch.onnx.export(
            Logits().eval(),
            (ids, torch.ones_like(ids)),
            str(out / FILE),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes=shapes,
            dynamo=True,
            verbose=False,
        )
    return out / FILE


def greedy_onnx(onnx_path: Path, prompt: list[int], steps: int) -> list[int]:
    """`steps` tokens chosen greedily by onnxruntime running the graph from `prompt`."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ids = list(prompt)
    for _ in range(steps):
        x = np.array([ids], dtype=np.int64)
        logits = session.run(["logits"], {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def greedy_torch(model_dir: Path, prompt: list[int], steps: int) -> list[int]:
    """The same with transformers on the merged directory."""
    import torch

    model = _load(model_dir)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def verify_onnx(model_dir: Path, onnx_path: Path, steps: int = 8) -> list[int]:
    """Greedy tokens of onnxruntime and transformers from a chat prompt rendered with the
    model's template; ValueError unless they are the same. The tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hello, who are you?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    prompt: list[int] = tok(text, add_special_tokens=False)["input_ids"]
    got = greedy_onnx(onnx_path, prompt, steps)
    want = greedy_torch(model_dir, prompt, steps)
    if got != want:
        raise ValueError(f"onnxruntime chose {got}, transformers {want}")
    return got


__all__ = [
    "EXTRA",
    "FILE",
    "check_installed",
    "export_onnx",
    "greedy_onnx",
    "greedy_torch",
    "verify_onnx",
]
