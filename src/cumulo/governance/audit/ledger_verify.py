"""Verifying the audit ledger: walk the chain from entry 1, then check its end against the
head checkpoint. The format and what it protects against: `cumulo.governance.audit.ledger`.

The walk reads the checkpoint before and after reading the entries, so that entries other
replicas append meanwhile are not taken for tampering: the chain must reach the first
checkpoint and hold the hash it names, and no entry may lie beyond the second. An exported
checkpoint (`ledger_export`), read before the walk, must be reached and matched too.

A `ledger.head_repaired` entry fails verification (reason `repaired`) until a later
`ledger.acknowledged` entry names its seq: a repair records that entries may have been
deleted, and only an admin may accept that.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cumulo.governance.audit.ledger_export import ExportUnreadable, HeadExport
from cumulo.store import ledger as sql
from cumulo.store.db import Store
from cumulo.store.ledger import Head, Link

GENESIS = "0" * 64  # the previous hash of entry 1
REPAIR_ACTION = "ledger.head_repaired"
ACK_ACTION = "ledger.acknowledged"


class Reason(StrEnum):
    """Why an entry is bad."""

    EDITED = "edited"  # its contents, hash or MAC were changed
    MISSING = "missing"  # deleted: the seq after the previous entry is absent
    OUT_OF_ORDER = "out_of_order"  # an intact entry in another entry's place
    TRUNCATED = "truncated"  # the newest entries were deleted
    CHECKPOINT = "checkpoint"  # the head checkpoint was deleted, edited or rolled back
    REPAIRED = "repaired"  # the chain resumed after a checkpoint problem; not acknowledged


@dataclass(frozen=True, slots=True)
class Problem:
    """The first bad entry: its seq, why, and a sentence for people."""

    seq: int
    reason: Reason
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "reason": str(self.reason), "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of `Ledger.verify()`."""

    ok: bool
    checked: int  # entries found good, from entry 1 on
    head: Link | None  # the last good entry: keep (seq, hash) elsewhere to detect rollbacks
    first_bad: Problem | None = None
    warnings: tuple[str, ...] = field(default=())
    unacknowledged: tuple[int, ...] = ()  # seqs of the repairs no admin acknowledged yet

    def as_dict(self) -> dict[str, Any]:
        head = None if self.head is None else {"seq": self.head.seq, "hash": self.head.hash}
        return {
            "ok": self.ok,
            "entries_checked": self.checked,
            "head": head,
            "first_bad": None if self.first_bad is None else self.first_bad.as_dict(),
            "warnings": list(self.warnings),
            "unacknowledged_repairs": list(self.unacknowledged),
        }


class Checker(Protocol):
    """What verification needs from the ledger: its store and its keyed checks."""

    @property
    def store(self) -> Store: ...

    @property
    def high_water(self) -> int: ...

    @property
    def export(self) -> HeadExport | None: ...

    def authentic(self, row: dict[str, Any]) -> str | None: ...

    def head_ok(self, head: Head) -> bool: ...


async def verify_chain(checker: Checker, page_size: int = 1000) -> Verification:
    """Check every entry's hash, MAC and link, then the end of the chain."""
    exported, unreadable = await _exported(checker)
    first = await sql.head(checker.store)
    expected, prev = 1, GENESIS
    at_first: str | None = None  # the hash of the entry at the first checkpoint's seq
    at_exported: str | None = None  # ... and at the exported checkpoint's
    notes = _Notes()
    while rows := await sql.page(checker.store, expected - 1, page_size):
        for row in rows:
            problem = await _check(checker, row, expected, prev)
            if problem is not None:
                return notes.result(expected - 1, prev, problem)
            notes.see(row)
            if first is not None and row["seq"] == first.seq:
                at_first = row["hash"]
            if exported is not None and row["seq"] == exported.seq:
                at_exported = row["hash"]
            prev = row["hash"]
            expected += 1
    last = expected - 1
    problem = (
        Problem(last, Reason.CHECKPOINT, unreadable)
        if unreadable is not None
        else _check_exported(checker, exported, last, at_exported)
    )
    if problem is None:
        problem = _check_end(checker, first, await sql.head(checker.store), last, at_first)
    return notes.result(last, prev, problem)


class _Notes:
    """Repairs and acknowledgements seen along the walk, and the warnings they make."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.repairs: dict[int, str] = {}  # unacknowledged: seq → what it says

    def see(self, row: dict[str, Any]) -> None:
        if row["action"] == REPAIR_ACTION:
            warning = _repair_warning(row)
            self.warnings.append(warning)
            self.repairs[int(row["seq"])] = (
                f"{warning}; not acknowledged: once understood, acknowledge it with "
                f"`cumulo ledger acknowledge --seq {row['seq']} --reason ...`"
            )
        elif row["action"] == ACK_ACTION:
            data = _data(row)
            seq, reason = data.get("seq"), str(data.get("reason") or "")
            if isinstance(seq, int):
                self.repairs.pop(seq, None)
            self.warnings.append(
                f"entry {row['seq']}: {row['actor'] or 'an admin'} acknowledged entry {seq}: {reason}"
            )

    def result(self, checked: int, prev: str, problem: Problem | None) -> Verification:
        """The verification of a walk that found `checked` entries good, ending at `prev`:
        `problem`, or the first unacknowledged repair if that comes before it."""
        unacknowledged = tuple(sorted(self.repairs))
        if unacknowledged and (problem is None or unacknowledged[0] <= problem.seq):
            first = unacknowledged[0]
            problem = Problem(first, Reason.REPAIRED, self.repairs[first])
        return Verification(
            problem is None,
            checked,
            _link(checked, prev),
            problem,
            tuple(self.warnings),
            unacknowledged,
        )


async def _exported(checker: Checker) -> tuple[Head | None, str | None]:
    """The exported head (None if there is none yet), or why it cannot be read."""
    if checker.export is None:
        return None, None
    try:
        return await asyncio.to_thread(checker.export.read), None
    except ExportUnreadable as exc:
        return None, f"the exported checkpoint: {exc}"


def _check_exported(
    checker: Checker, exported: Head | None, last: int, at_exported: str | None
) -> Problem | None:
    """Does the chain, ending at entry `last`, reach and hold the exported checkpoint?"""
    if exported is None or checker.export is None:
        return None
    where = f"the checkpoint exported to {checker.export.path}"
    if not checker.head_ok(exported):
        return Problem(
            exported.seq, Reason.CHECKPOINT, f"{where} was edited (its MAC does not match)"
        )
    if last < exported.seq:
        gone = (
            f"entry {exported.seq}"
            if last + 1 == exported.seq
            else f"entries {last + 1}-{exported.seq}"
        )
        detail = f"the ledger ends at entry {last}, {where} is at entry {exported.seq}"
        return Problem(last + 1, Reason.TRUNCATED, f"{detail}: {gone} deleted or rolled back")
    if at_exported != exported.hash:
        detail = f"entry {exported.seq} is not the entry {where} names: the ledger was rewritten"
        return Problem(exported.seq, Reason.CHECKPOINT, detail)
    return None


def _link(seq: int, digest: str) -> Link | None:
    return Link(seq, digest) if seq > 0 else None


async def _check(checker: Checker, row: dict[str, Any], expected: int, prev: str) -> Problem | None:
    """None if `row` is the intact entry `expected`, chained to `prev`; else what is wrong."""
    seq = int(row["seq"])
    if seq > expected:
        gone = (
            f"entry {expected} is" if seq == expected + 1 else f"entries {expected}-{seq - 1} are"
        )
        return Problem(expected, Reason.MISSING, f"{gone} missing (deleted)")
    if seq < expected:
        return Problem(seq, Reason.EDITED, f"entry {seq} precedes entry 1 (inserted)")
    why = checker.authentic(row)
    if why is None and row["prev_hash"] == prev:
        return None
    if why is None:
        detail = f"entry {seq} is intact but does not follow entry {seq - 1}"
        return Problem(seq, Reason.OUT_OF_ORDER, detail)
    if row["prev_hash"] != prev:
        # Intact contents that chain to an entry elsewhere: entries were swapped or moved.
        elsewhere = await sql.seqs_with_hash(checker.store, row["prev_hash"])
        if elsewhere and elsewhere != [seq - 1]:
            detail = f"entry {seq} holds the entry that followed entry {elsewhere[0]}"
            return Problem(seq, Reason.OUT_OF_ORDER, f"{detail}: entries were swapped or moved")
    return Problem(seq, Reason.EDITED, f"entry {seq} was edited: {why}")


def _check_end(
    checker: Checker, first: Head | None, second: Head | None, last: int, at_first: str | None
) -> Problem | None:
    """Does the chain, which ends at entry `last`, agree with the checkpoints read before
    (`first`) and after (`second`) it was walked?"""
    for head in (first, second):
        if head is not None and not checker.head_ok(head):
            detail = "the head checkpoint was edited (its MAC does not match)"
            return Problem(head.seq, Reason.CHECKPOINT, detail)
    if second is None:
        if last == 0 and first is None:
            return None  # nothing was ever written
        detail = f"the head checkpoint is missing: entries after entry {last} may have been deleted"
        return Problem(last, Reason.CHECKPOINT, detail)
    if first is not None:
        if last < first.seq:
            gone = (
                f"entry {first.seq}" if last + 1 == first.seq else f"entries {last + 1}-{first.seq}"
            )
            detail = f"the ledger ends at entry {last}, its checkpoint is at entry {first.seq}"
            return Problem(last + 1, Reason.TRUNCATED, f"{detail}: {gone} deleted")
        if at_first != first.hash:
            detail = f"entry {first.seq}'s hash is not the one its checkpoint holds"
            return Problem(first.seq, Reason.CHECKPOINT, detail)
    if last > second.seq:
        detail = f"entries after entry {second.seq} lie beyond the checkpoint: it was rolled back"
        return Problem(second.seq + 1, Reason.CHECKPOINT, detail)
    if last < checker.high_water:
        detail = f"the ledger ends at entry {last}, this process wrote or verified entry "
        return Problem(last + 1, Reason.TRUNCATED, f"{detail}{checker.high_water}")
    return None


def _data(row: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(row["data"])
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _repair_warning(row: dict[str, Any]) -> str:
    data = _data(row)
    state = data.get("checkpoint", "bad")
    after = data.get("last_seq")
    text = f"entry {row['seq']}: the head checkpoint was {state} when it was appended"
    if isinstance(data.get("exported_seq"), int) and data["exported_seq"] > (after or 0):
        return f"{text}; entries {(after or 0) + 1}-{data['exported_seq']} were deleted"
    if after is not None:
        return f"{text}; entries after entry {after} may have been deleted"
    return f"{text}; entries before it may have been deleted"
