"""Sentence embeddings with a local sentence-transformers model.

The model is read from a local directory only (`local_files_only`, nothing is
downloaded). Encoding runs on the embedder's own single worker thread so the
event loop never blocks; requests are encoded one batch at a time. Vectors
come out as the model's pipeline makes them (all-MiniLM-L6-v2 normalizes);
`dimensions` truncates them and renormalizes to unit length.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from cumulo.engine.hf import quiet_progress
from cumulo.engine.loader import DTypeName, choose_device, configure_torch_threads
from cumulo.errors import ConfigError, InvalidRequest


class Embedder:
    """A loaded sentence-transformers model with one worker thread."""

    def __init__(self, model: Any, path: Path) -> None:
        self.model = model
        self.path = path
        dimension = model.get_embedding_dimension()
        if not isinstance(dimension, int):
            raise ConfigError(f"the embedding model in {path} does not state its dimension")
        self.dimension: int = dimension
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cumulo-embed")

    @classmethod
    def load(cls, path: Path, dtype: DTypeName = "auto") -> Embedder:
        """Load the model in `path`; `auto` keeps float32 (embeddings are small and precise)."""
        from sentence_transformers import SentenceTransformer

        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a sentence-transformers model directory")
        configure_torch_threads()
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        try:
            with quiet_progress():
                model = SentenceTransformer(
                    str(path),
                    device=choose_device().type,
                    local_files_only=True,
                    model_kwargs={"dtype": torch_dtype},
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot load the embedding model in {path}: {exc}") from exc
        model.eval()
        return cls(model, path)

    def describe(self) -> str:
        return f"{self.path.name} ({self.model.device.type}, {self.dimension} dimensions)"

    async def embed(
        self, texts: list[str], dimensions: int | None = None
    ) -> tuple[list[list[float]], int]:
        """Vectors for `texts` and the number of tokens the model read."""
        if not texts:
            raise InvalidRequest("input must not be empty", param="input")
        if dimensions is not None and not 1 <= dimensions <= self.dimension:
            raise InvalidRequest(
                f"dimensions must be between 1 and {self.dimension} for this model",
                param="dimensions",
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, texts, dimensions)

    def close(self) -> None:
        """Finish the batch in progress and stop the worker thread."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _encode(self, texts: list[str], dimensions: int | None) -> tuple[list[list[float]], int]:
        with torch.inference_mode():
            vectors = self.model.encode(
                texts, convert_to_tensor=True, show_progress_bar=False
            ).float()
        if dimensions is not None and dimensions < self.dimension:
            vectors = torch.nn.functional.normalize(vectors[:, :dimensions], p=2.0, dim=1)
        return vectors.cpu().tolist(), self._count_tokens(texts)

    def _count_tokens(self, texts: list[str]) -> int:
        """Tokens the model read: special tokens included, truncated as the model truncates."""
        encoded = self.model.tokenizer(
            texts, truncation=True, max_length=self.model.max_seq_length, add_special_tokens=True
        )
        return sum(len(ids) for ids in encoded["input_ids"])
