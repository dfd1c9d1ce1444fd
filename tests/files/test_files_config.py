"""`files_url` and the `files` limits in cumulo.yaml: validated at load, errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cumulo.config import load_config
from cumulo.errors import ConfigError
from cumulo.files import LocalBlobs, S3Blobs, blob_store


def load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "cumulo.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"files_url": "http://bucket/prefix"}, "files_url"),
        ({"files_url": "s3://"}, "files_url"),
        ({"files_url": "s3://AKIA:secret@bucket/p"}, "files_url"),
        ({"files": {"max_file_bytes": 0}}, "files.max_file_bytes"),
        ({"files": {"max_files_per_tenant": -1}}, "files.max_files_per_tenant"),
        ({"files": {"max_parts": 3}}, "files.max_parts"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, data)
    assert f": {key}: " in str(err.value)
    assert "secret" not in str(err.value)


def test_defaults_and_backends(tmp_path: Path) -> None:
    config = load(tmp_path, {})
    assert config.files_url is None
    assert config.files.max_file_bytes == 512 * 1024 * 1024
    assert isinstance(blob_store(config.files_url, tmp_path), LocalBlobs)
    config = load(
        tmp_path, {"files_url": "s3://my-bucket/cumulo/files", "files": {"max_file_bytes": 1024}}
    )
    s3 = blob_store(config.files_url, tmp_path)
    assert isinstance(s3, S3Blobs) and (s3.bucket, s3.prefix) == ("my-bucket", "cumulo/files")
    assert config.files.max_file_bytes == 1024
