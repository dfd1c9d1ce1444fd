"""The audit ledger's head checkpoint, also kept outside the database.

With `ledger.checkpoint_file` set, every write to the ledger also writes its new head
(seq, hash and MAC, as the `ledger_head` row holds them) to that file: a place the
database's users cannot rewrite. `verify()` then checks the chain against it, which names
what the database alone cannot show: the ledger and its `ledger_head` row rolled back
together, or entries deleted along with the checkpoint. The MAC is checked too, so an
edited file is reported, never trusted.

The file only moves forward: a head older than the one it holds is not written (processes
sharing the file take turns under an exclusive `flock`), except after a repair or its
acknowledgement (`force`): the repair entry, in the chain, then holds what the file showed.
Each write replaces the file atomically (a temporary file renamed over it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from cumulo.store.ledger import Head


class ExportUnreadable(Exception):
    """The exported checkpoint exists but cannot be read (a sentence for people)."""


class HeadExport:
    """The checkpoint file at `path` (created, with its directory, at the first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = path.with_name(path.name + ".lock")

    def __repr__(self) -> str:
        return f"HeadExport({self.path})"

    def read(self) -> Head | None:
        """The exported head; None if nothing was exported yet. ExportUnreadable if the
        file is there but is not a checkpoint."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ExportUnreadable(f"{self.path} cannot be read: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
            return Head(int(data["seq"]), str(data["hash"]), str(data["mac"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportUnreadable(f"{self.path} does not hold a checkpoint") from exc

    def write(self, head: Head, *, force: bool = False) -> bool:
        """Export `head` unless the file holds a later (or unreadable) one; `force`: in any
        case. True if it was written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not force:
                try:
                    current = self.read()
                except ExportUnreadable:
                    return False  # kept for verify() to report; an acknowledgement replaces it
                if current is not None and current.seq >= head.seq:
                    return False
            body = {"seq": head.seq, "hash": head.hash, "mac": head.mac, "exported_at": time.time()}
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(body) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
