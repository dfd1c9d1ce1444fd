"""The base model's weights hash for the lineage: over the weight files only, cached while
they keep their sizes and times, computed again when one changes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from cumulo.jobs.finetune.hashes import weights_sha256


def model_dir(root: Path) -> Path:
    d = root / "m"
    (d / "sub").mkdir(parents=True)
    (d / "model-00001.safetensors").write_bytes(b"w1" * 1000)
    (d / "sub" / "extra.bin").write_bytes(b"w2")
    (d / "config.json").write_text("{}")  # not a weight file
    return d


def test_hash_covers_the_weight_files_and_is_cached(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    cache = tmp_path / "cache" / "weights.json"
    expected = hashlib.sha256(
        b"model-00001.safetensors\0" + b"w1" * 1000 + b"sub/extra.bin\0" + b"w2").hexdigest()
    assert weights_sha256(d, cache) == expected
    (d / "config.json").write_text('{"changed": true}')
    assert weights_sha256(d) == expected  # only weights count
    # A second job reads the cache: a planted value there is what comes back.
    data = json.loads(cache.read_text())
    data[str(d.resolve())]["sha256"] = "cached"
    cache.write_text(json.dumps(data))
    assert weights_sha256(d, cache) == "cached"
    # A weight file that changes (here its time) is hashed again.
    st = (d / "sub" / "extra.bin").stat()
    os.utime(d / "sub" / "extra.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert weights_sha256(d, cache) == expected
    (d / "sub" / "extra.bin").write_bytes(b"w3")
    assert weights_sha256(d, cache) != expected


def test_a_directory_without_weights_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weight files"):
        weights_sha256(tmp_path)
