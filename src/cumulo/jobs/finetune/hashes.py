"""The SHA-256 of a model's weights, for the lineage of what was trained on it.

`weights_sha256(model_dir, cache)` is one SHA-256 over the model's weight files
(`*.safetensors`, `*.bin`, `*.pt`, `*.pth`, `*.gguf`, under the directory, in name order:
each file's relative name then its bytes). Hashing a base of several GB takes seconds,
so the result is kept in a small JSON cache file (`$CUMULO_HOME/cache/weights-sha256.json`)
under the directory's resolved path with the names, sizes and modification times of its
weight files: a job on the same, unchanged base reads it from there, and any change to a
weight file (its size or time) hashes it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MAX_CACHED = 256  # models remembered in the cache file


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files under `model_dir`, in name order (hidden directories skipped)."""
    found = [
        p
        for p in model_dir.rglob("*")
        if p.is_file()
        and p.name.endswith(WEIGHT_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
    ]
    return sorted(found, key=lambda p: str(p.relative_to(model_dir)))


def sha256_of_dir(path: Path) -> str:
    """One SHA-256 over the files of `path` (names and contents, in name order)."""
    return sha256_of_files(path, sorted(q for q in path.rglob("*") if q.is_file()))


def sha256_of_files(path: Path, files: Sequence[Path]) -> str:
    """One SHA-256 over `files` under `path` (each name relative to it, then its bytes)."""
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path)).encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _read(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def weights_sha256(model_dir: Path, cache: Path | None = None) -> str:
    """The SHA-256 of `model_dir`'s weights (see the module docstring); ValueError when
    it holds no weight file."""
    model_dir = model_dir.resolve()
    files = weight_files(model_dir)
    if not files:
        raise ValueError(f"no weight files in {model_dir}")
    signature = [
        [str(p.relative_to(model_dir)), st.st_size, st.st_mtime_ns]
        for p, st in ((p, p.stat()) for p in files)
    ]
    key = str(model_dir)
    if cache is not None:
        hit = _read(cache).get(key)
        if isinstance(hit, dict) and hit.get("files") == signature:
            return str(hit["sha256"])
    digest = sha256_of_files(model_dir, files)
    if cache is not None:
        data = _read(cache)
        data.pop(key, None)
        data[key] = {"files": signature, "sha256": digest}
        while len(data) > MAX_CACHED:
            data.pop(next(iter(data)))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(cache)
    return digest


def cache_file(home: Path) -> Path:
    return home / "cache" / "weights-sha256.json"


__all__ = [
    "WEIGHT_SUFFIXES",
    "cache_file",
    "sha256_of_dir",
    "sha256_of_files",
    "weight_files",
    "weights_sha256",
]
