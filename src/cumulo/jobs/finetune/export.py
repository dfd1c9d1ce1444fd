"""What `cumulo models export` downloads: a tuned model's adapter, or the base with it
merged in, as a Hugging Face directory, streamed as a tar archive.

- `adapter_dir` is the PEFT directory (`adapter_config.json`, `adapter_model.safetensors`)
  of the job's final adapter, or of one checkpoint's;
- `merged_dir` is the base with that adapter merged in, a directory transformers and vLLM
  load as they load any model: `config.json`, the weights as safetensors, the tokenizer
  (with its chat template) and `generation_config.json`. The trainer writes the final
  one (`model/`); another (a checkpoint's, or the final one when absent) is merged here
  once and kept in the job's directory (`export-<name>/`, written beside and renamed);
- `tar_stream` yields a directory as an uncompressed tar archive in bounded pieces (the
  files are read as they are sent, never whole in memory).
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

from cumulo.jobs.finetune.train import CKPT_PREFIX, METRICS, STATE

CHUNK = 1 << 20
_NOT_EXPORTED = {STATE, METRICS}  # a checkpoint's optimizer state and metrics


def adapter_dir(job_dir: Path, checkpoint: int | None) -> Path | None:
    """The adapter of the run (or of checkpoint step `checkpoint`), None when absent."""
    path = job_dir / (f"{CKPT_PREFIX}{checkpoint}" if checkpoint is not None else "adapter")
    return path if (path / "adapter_config.json").is_file() else None


def files_of(path: Path) -> list[Path]:
    """The files an export of `path` holds, in name order."""
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name not in _NOT_EXPORTED)


def merged_dir(job_dir: Path, base_path: Path, checkpoint: int | None) -> Path:
    """The merged model of the run (or of a checkpoint), merged now if not there yet."""
    final = job_dir / "model"
    if checkpoint is None and (final / "config.json").is_file():
        return final
    name = f"export-{CKPT_PREFIX}{checkpoint}" if checkpoint is not None else "export-model"
    target = job_dir / name
    if (target / "config.json").is_file():
        return target
    adapter = adapter_dir(job_dir, checkpoint)
    if adapter is None:
        raise FileNotFoundError(f"no adapter in {job_dir}")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(
        str(base_path), dtype=torch.float32, local_files_only=True
    )
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tmp = job_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(base_path), local_files_only=True).save_pretrained(str(tmp))
    tmp.rename(target)
    return target


def tar_stream(path: Path, files: list[Path]) -> Iterator[bytes]:
    """`files` (under `path`, named relative to it) as an uncompressed tar archive."""
    for p in files:
        info = tarfile.TarInfo(str(p.relative_to(path)))
        info.size = p.stat().st_size
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with p.open("rb") as f:
            yield from iter(lambda: f.read(CHUNK), b"")
        if pad := -info.size % tarfile.BLOCKSIZE:
            yield b"\0" * pad
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


__all__ = ["adapter_dir", "files_of", "merged_dir", "tar_stream"]
