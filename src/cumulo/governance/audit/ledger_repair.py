"""Repairs of the audit ledger's chain and their acknowledgement (`governance.audit.ledger`).

When an append finds the chain's end inconsistent (the head checkpoint missing, bad,
ahead of or behind the newest entry, or the newest entry behind the exported checkpoint),
the chain resumes after the newest entry, behind a `ledger.head_repaired` entry saying
what was found (`resume`). Verification fails on that repair until an admin acknowledges
it with a `ledger.acknowledged` entry (`Ack`, chosen by `choose_ack`); a problem at the
end of the chain may also be acknowledged before anything was appended, and the
acknowledging write then records the repair it makes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cumulo.governance.audit.ledger_verify import GENESIS, Reason, Verification
from cumulo.store.ledger import Head, Tail

log = logging.getLogger(__name__)
MAX_REASON = 1000  # characters of an acknowledgement's reason
_END_PROBLEMS = (Reason.CHECKPOINT, Reason.TRUNCATED)


class NotAcknowledgeable(ValueError):
    """What `acknowledge()` was asked to acknowledge is not a repair or a problem at the
    end of the chain that verification reports (a sentence for people)."""


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement to append: of the repair at `seq`, or (`here`) of the problem
    verification reports at `seq`, which the same write repairs if it can."""

    actor: str | None
    seq: int
    reason: str
    problem: str | None = None
    here: bool = False

    def data(self, repair_seq: int | None) -> dict[str, Any]:
        """The entry's data, once the write knows the seq of the repair it makes (if any)."""
        acked = repair_seq if self.here and repair_seq is not None else self.seq
        data: dict[str, Any] = {"seq": acked, "reason": self.reason}
        if self.problem is not None:
            data["problem"] = self.problem[:MAX_REASON]
        return data


def choose_ack(actor: str | None, seq: int, reason: str, result: Verification) -> Ack:
    """What acknowledging `seq` means, given the ledger's verification `result`."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON or "\x00" in reason:
        raise NotAcknowledgeable(f"the reason must be 1 to {MAX_REASON} characters")
    bad = result.first_bad
    if seq in result.unacknowledged:
        return Ack(actor, seq, reason)
    if bad is not None and bad.seq == seq and bad.reason in _END_PROBLEMS:
        return Ack(actor, seq, reason, f"{bad.reason}: {bad.detail}", here=True)
    if bad is None:
        raise NotAcknowledgeable("the ledger verifies: there is nothing to acknowledge")
    if bad.reason not in (*_END_PROBLEMS, Reason.REPAIRED):
        raise NotAcknowledgeable(
            f"entry {bad.seq} is {bad.reason}: the chain itself is broken and cannot be "
            "acknowledged"
        )
    raise NotAcknowledgeable(
        f"entry {seq} is not what verification reports: acknowledge entry {bad.seq} "
        f"({bad.reason}) first"
    )


def resume(
    tail: Tail, exported: Head | None, head_ok: Callable[[Head], bool]
) -> tuple[int, str, dict[str, Any] | None]:
    """Where the chain goes on: (seq, hash) of the entry to follow, and the details of a
    `ledger.head_repaired` entry if the checkpoint is missing, bad, ahead or behind, or
    the chain ends before the `exported` checkpoint (one whose MAC is right)."""
    head, last = tail.head, tail.last
    last_seq = last.seq if last is not None else 0
    problem = None
    if head is not None and head_ok(head):
        if last_seq > head.seq:
            problem = "behind the newest entry"
        elif last_seq < head.seq:
            problem = "ahead of the newest entry (entries were deleted)"
    elif head is not None:
        problem = "invalid (its MAC does not match)"
    elif last is not None:
        problem = "missing"
    if problem is None and exported is not None and exported.seq > last_seq:
        problem = "rolled back with the entries: the exported checkpoint is ahead"
    if problem is None:
        return (head.seq, head.hash, None) if head is not None else (0, GENESIS, None)
    details: dict[str, Any] = {"checkpoint": problem, "head_seq": head.seq if head else None}
    details["last_seq"] = last.seq if last else None
    if exported is not None:
        details["exported_seq"] = exported.seq
    log.error("audit ledger checkpoint %s; resuming after entry %s", problem, last_seq)
    return (last.seq, last.hash, details) if last else (0, GENESIS, details)
