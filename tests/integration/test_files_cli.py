"""`cumulo files upload|list|get|download|rm`, run as a subprocess against a server."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support import CUMULO_BIN, ApiKey, CumuloServer, clean_env


def files_cli(*args: str, url: str, key: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(CUMULO_URL=url, CUMULO_API_KEY=key)
    return subprocess.run(
        [str(CUMULO_BIN), "files", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )


def fields_of(stdout: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in stdout.splitlines())}


def test_files_from_the_cli(cumulo: CumuloServer, caller_key: ApiKey, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return files_cli(*args, url=cumulo.url, key=caller_key.token)

    src = tmp_path / "requests.jsonl"
    src.write_bytes(b'{"custom_id": "a"}\n' * 5000)
    up = run("upload", str(src), "--purpose", "fine-tune")
    assert up.returncode == 0, up.stderr
    shown = fields_of(up.stdout)
    file_id = shown["id"]
    assert shown["filename"] == "requests.jsonl" and shown["purpose"] == "fine-tune"
    assert shown["bytes"] == str(src.stat().st_size) and shown["status"] == "processed"

    listed = run("list")
    assert listed.returncode == 0 and file_id in listed.stdout and "requests.jsonl" in listed.stdout
    assert file_id not in run("list", "--purpose", "batch").stdout

    got = run("get", file_id)
    assert got.returncode == 0 and fields_of(got.stdout)["id"] == file_id

    out = tmp_path / "copy.jsonl"
    down = run("download", file_id, "-o", str(out))
    assert down.returncode == 0, down.stderr
    assert out.read_bytes() == src.read_bytes()
    assert run("download", file_id).stdout == src.read_text()

    rm = run("rm", file_id)
    assert rm.returncode == 0 and f"deleted {file_id}" in rm.stdout
    gone = run("get", file_id)
    assert gone.returncode != 0
    assert gone.stderr.strip().startswith("cumulo: error: 404") and "Traceback" not in gone.stderr
    missing = run("download", file_id, "-o", str(tmp_path / "none"))
    assert missing.returncode != 0 and not (tmp_path / "none").exists()
    assert not (tmp_path / "none.part").exists()
