"""The usage journal: every usage record on local disk before its response is complete.

Each process appends every usage record it queues to a journal file of its own, under
`CUMULO_HOME/journal`: one line of JSON, `[seq, value, ...]`, with `seq` counting 1, 2,
3 ... within the file. The file is a segment of `segment_bytes`, its disk space reserved
when it is made (`posix_fallocate`) and mapped shared into memory, so appending a record is
a copy into the OS's page cache for that file: no system call, no waiting on a disk, and
nothing that can fail for want of space. There is no fsync: what the page cache holds
survives the process being killed (SIGKILL, the OOM killer, a crash); only a power cut or a
kernel crash can lose the last few seconds of records. The rest of a segment reads as NUL
bytes: reading stops there (a line a crash cut short before it is skipped).

The usage writer stores a batch's rows and, in the same transaction, the `seq` of the
batch's last record of each journal (its checkpoint, `cumulo.store.checkpoints`). So the
records of a journal past its checkpoint are exactly those the database lacks, and storing
them later adds each record once, however often a process died on the way.

Files are `usage-<id>.journal`, `id` unique per file (time, process id, random), and start
with a header line naming their columns and the database they are for (a fingerprint of
its URL: a journal is only ever written to its own database). The process writing a file
holds an exclusive `flock` on it; a file no process holds was left by one that died, and the
next process to start writes what it lacks (`orphans`). A file is deleted once all its
records are stored: the writing process starts a new segment once the current one is three
quarters full (`rotate`, off the request path) or full, and deletes the old one once its
records are stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

FORMAT = "cumulo-usage-journal/1"
SEGMENT_BYTES = 16 * 1024 * 1024  # about 90,000 records
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_LINE = orjson.OPT_APPEND_NEWLINE


def fingerprint(database_url: str) -> str:
    """A short, secret-free name of a database (its URL without the password)."""
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]


@dataclass(eq=False, slots=True)
class JournalFile:
    """One journal file, held (locked) by this process while the object is open."""

    id: str
    path: Path
    fd: int
    columns: tuple[str, ...]
    seq: int = 0  # the last record appended
    size: int = 0  # bytes used
    stored: int = 0  # the last record this process stored (its checkpoint, as far as it knows)
    map: mmap.mmap | None = None  # the segment, while this process appends to it
    capacity: int = 0  # the segment's bytes

    @property
    def done(self) -> bool:
        """Every record appended is stored."""
        return self.stored >= self.seq


class UsageJournal:
    """The journal files of one process in `directory`, for records of `columns`."""

    def __init__(
        self,
        directory: Path,
        columns: tuple[str, ...],
        database: str = "",
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.directory = directory
        self.columns = columns
        self.database = database  # `fingerprint` of the database's URL
        self.segment_bytes = segment_bytes
        self.current: JournalFile | None = None  # None: not open, or writing failed
        self.sealed: list[JournalFile] = []  # written no more, deleted once their records are
        self._failed_at = 0.0

    def open(self) -> None:
        """Start this process's first file (OSError if the directory is not writable)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.current = self._create()

    def _create(self) -> JournalFile:
        # Made under a temporary name and locked before it gets its real one, so a process
        # looking for files left by dead ones never takes a new file for one.
        id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}"
        path = self.directory / f"usage-{id}.journal"
        temporary = path.with_suffix(".new")
        fd = os.open(temporary, _OPEN_FLAGS, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = {"format": FORMAT, "id": id, "database": self.database}
            line = orjson.dumps({**header, "columns": self.columns}, option=_LINE)
            size = max(self.segment_bytes, len(line))
            os.posix_fallocate(fd, 0, size)  # no space: OSError now, never SIGBUS later
            os.pwrite(fd, line, 0)
            segment = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            os.rename(temporary, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return JournalFile(id, path, fd, self.columns, size=len(line), map=segment, capacity=size)

    def append(self, values: tuple[Any, ...]) -> tuple[JournalFile, int] | None:
        """Put one record in the OS's page cache; its (file, seq), or None if there is no
        journal to put it in (logged; the record is then only in memory, as without one)."""
        file = self.current
        if file is None:
            return None
        seq = file.seq + 1
        line = orjson.dumps((seq, *values), option=_LINE)
        end = file.size + len(line)
        if end > file.capacity:  # full: `rotate` was not called in time (or a huge record)
            try:
                self.rotate()
            except OSError as exc:
                self._failed(exc)
                return None
            return self.append(values)
        assert file.map is not None
        file.map[file.size : end] = line
        file.size = end
        file.seq = seq
        return file, seq

    @property
    def filling(self) -> bool:
        """The current segment is three quarters full: time to `rotate`."""
        file = self.current
        return file is not None and file.size * 4 >= file.capacity * 3

    def _failed(self, exc: OSError) -> None:
        """No new segment could be made: records stay in memory until `reopen`."""
        log.error(
            "cannot make a usage journal file in %s (%s): usage records are kept in memory "
            "only until the journal works again",
            self.directory,
            exc,
        )
        if self.current is not None:
            self._seal(self.current)
            self.sealed.append(self.current)
        self.current = None
        self._failed_at = time.monotonic()

    def _seal(self, file: JournalFile) -> None:
        """No more appends: unmap it and give back the space it did not use."""
        if file.map is not None:
            file.map.close()
            file.map = None
            with contextlib.suppress(OSError):
                os.ftruncate(file.fd, file.size)

    def reopen(self, retry_s: float = 10.0) -> bool:
        """After a failure, try a new file (at most every `retry_s`); True if one is open."""
        if self.current is not None:
            return True
        if time.monotonic() - self._failed_at < retry_s:
            return False
        try:
            self.open()
        except OSError as exc:
            self._failed_at = time.monotonic()
            log.error("cannot open a usage journal in %s: %s", self.directory, exc)
            return False
        log.warning("usage journal writing again, to %s", self.current and self.current.path)
        return True

    def rotate(self) -> None:
        """Seal the current file (kept until its records are stored) and start a new one.
        OSError if no new one could be made (the current one stays)."""
        new = self._create()
        if self.current is not None:
            self._seal(self.current)
            self.sealed.append(self.current)
        self.current = new

    def orphans(self) -> list[JournalFile]:
        """Files no live process holds (left by processes that died), oldest first, each
        now held by this process; `read` gives their records."""
        found: list[JournalFile] = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.directory.glob("usage-*.new")):
                self._remove_abandoned(path)  # a crash between creating and naming a file
            for path in sorted(self.directory.glob("usage-*.journal")):
                file = self._take(path)
                if file is not None:
                    found.append(file)
        return found

    def _lock(self, path: Path) -> int | None:
        """An fd of `path` holding its lock, or None if a live process holds it (or it is
        gone: another process took it, wrote its records and deleted it meanwhile)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(fd)
        return None

    def _remove_abandoned(self, path: Path) -> None:
        fd = self._lock(path)
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)

    def _take(self, path: Path) -> JournalFile | None:
        fd = self._lock(path)
        if fd is None:
            return None
        try:
            with path.open("rb") as f:
                header = orjson.loads(f.readline())
            if header.get("format") != FORMAT:
                raise ValueError(f"unknown format {header.get('format')!r}")
            if header.get("database") != self.database:
                raise ValueError("it was written for another database")
            id, columns = str(header["id"]), tuple(str(c) for c in header["columns"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            os.close(fd)
            log.error("usage journal %s left as it is: %s", path, exc)
            return None
        return JournalFile(id, path, fd, columns)

    def read(
        self, file: JournalFile, columns: tuple[str, ...]
    ) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """The records of `file` in order, as (seq, values of `columns`, a subset of the
        file's), up to the segment's unused rest (NUL bytes). A line a crash cut short or
        garbled is skipped, and logged."""
        index = [file.columns.index(c) + 1 for c in columns]
        width = len(file.columns) + 1
        with file.path.open("rb") as f:
            f.readline()  # the header
            for number, line in enumerate(f, start=2):
                if line.startswith(b"\0"):
                    return  # the segment's unused rest
                try:
                    line = line.rstrip(b"\0")  # a line cut short, then the unused rest
                    if not line.endswith(b"\n"):
                        raise ValueError("cut short")
                    record = orjson.loads(line)
                    if not (isinstance(record, list) and len(record) == width):
                        raise ValueError(f"{len(record)} fields, not {width}")
                    seq = record[0]
                    if type(seq) is not int:
                        raise ValueError("no sequence number")
                except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                    log.warning("usage journal %s, line %d skipped: %s", file.path, number, exc)
                    continue
                yield seq, tuple(record[i] for i in index)

    def retire(self, file: JournalFile) -> None:
        """Delete a file whose records are all stored (then let go of its lock)."""
        with contextlib.suppress(FileNotFoundError):
            file.path.unlink()
        self.release(file)

    def release(self, file: JournalFile) -> None:
        """Let go of a file, keeping it (what it holds is written at the next start)."""
        self._seal(file)
        if file.fd >= 0:
            os.close(file.fd)
            file.fd = -1
        if file is self.current:
            self.current = None
        if file in self.sealed:
            self.sealed.remove(file)
