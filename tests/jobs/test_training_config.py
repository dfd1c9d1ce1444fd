"""`training:` in cumulo.yaml (where fine-tuning jobs train): each field checked, errors
naming the key path; the Ray backend needs an address and the ray extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from cumulo.config import TrainingConfig, load_config, parse_config
from cumulo.errors import ConfigError


def error(training: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"training": training}, "cumulo.yaml")
    return str(info.value)


def test_local_is_the_default_and_ray_takes_its_fields() -> None:
    assert parse_config({}, "x").training.backend == "local"
    t = parse_config(
        {
            "training": {
                "backend": "ray",
                "address": "127.0.0.1:6380",
                "num_workers": 4,
                "cpus_per_worker": 2,
                "storage_path": "/mnt/shared/ray",
            }
        },
        "x",
    ).training
    assert (t.backend, t.address, t.num_workers, t.cpus_per_worker) == (
        "ray",
        "127.0.0.1:6380",
        4,
        2,
    )
    assert t.storage(Path("/home/c")) == "/mnt/shared/ray"
    assert TrainingConfig().storage(Path("/home/c")) == "/home/c/finetune"  # the jobs' dirs
    for address in ("auto", "local", "ray://head.example:10001", "head-1:6379"):
        assert TrainingConfig(backend="ray", address=address).address == address
    assert TrainingConfig(storage_path="s3://bucket/ray").storage(Path("/h")) == "s3://bucket/ray"


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"backend": "ray"}, "training: Value error, address: required with backend `ray`"),
        ({"backend": "spark"}, "training.backend: Input should be 'local' or 'ray'"),
        ({"backend": "ray", "address": "http://head:8265"}, "training.address: not a Ray address"),
        ({"backend": "ray", "address": "head:70000"}, "training.address: the port is not between"),
        (
            {"backend": "ray", "address": "auto", "num_workers": 0},
            "training.num_workers: Input should be greater than or equal to 1",
        ),
        ({"num_workers": 5000}, "training.num_workers: Input should be less than or equal to 1024"),
        ({"cpus_per_worker": 0}, "training.cpus_per_worker: Input should be greater than or equal"),
        ({"storage_path": "shared/ray"}, "training.storage_path: must be an absolute path"),
        ({"storage_path": "ftp://host/x"}, "training.storage_path: ftp:// is not a storage"),
        ({"storage_path": "/a b"}, "training.storage_path: must not contain whitespace"),
        ({"storage_path": ""}, "training.storage_path: String should have at least 1 character"),
        ({"workers": 2}, "training.workers: Extra inputs are not permitted"),
    ],
)
def test_each_field_is_checked_and_named(training: dict[str, Any], message: str) -> None:
    assert message.replace("Value error, ", "") in error(training)


def test_ray_without_the_extra_is_refused_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cumulo.yaml"
    path.write_text(yaml.safe_dump({"training": {"backend": "ray", "address": "auto"}}))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"training.backend: `ray` needs the ray extra"):
        load_config(path)
