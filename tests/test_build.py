"""How cumulo is installed: the Makefile's steps (dry runs, nothing installed) and the
package metadata setuptools builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def venv_steps(*variables: str) -> list[str]:
    """The commands `make venv` would run, from scratch (`-B`), without running them."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), "venv", *variables],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_installing_shows_its_progress() -> None:
    steps = venv_steps()
    installs = [s for s in steps if " install " in s]
    assert len(installs) >= 3
    # pip's own progress is shown (no --quiet), and each step says what it does.
    assert not [s for s in installs if "--quiet" in s or " -q" in s]
    assert sum(s.startswith("echo ") for s in steps) >= len(installs)


def test_torch_comes_from_pips_configured_index_unless_one_is_chosen() -> None:
    [default] = [s for s in venv_steps() if "torch==" in s and "install" in s]
    assert default.endswith("pip install torch==2.13.0")
    cpu = "https://download.pytorch.org/whl/cpu"
    [chosen] = [s for s in venv_steps(f"TORCH_INDEX={cpu}") if "torch==" in s and "install" in s]
    assert chosen.endswith(f"pip install torch==2.13.0 --index-url {cpu}")


def test_the_metadata_builds_without_deprecations(tmp_path: Path) -> None:
    # The project's metadata alone, in a copy (no build files land in the source tree).
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "src" / "cumulo").mkdir(parents=True)
    (tmp_path / "src" / "cumulo" / "__init__.py").touch()
    (tmp_path / "out").mkdir()
    script = (
        "import setuptools.build_meta as b, sys; "
        "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "Deprecat" not in run.stderr + run.stdout, run.stderr
    metadata = (tmp_path / "out" / run.stdout.splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
