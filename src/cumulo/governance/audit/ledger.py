"""The audit ledger: every admin action, appended to a hash chain that can be verified.

Each entry has a `seq` (1, 2, 3 ... with no gaps), a time, the actor (key id), an action
(`key.create`, `tenant.update`, `guardrail.block` ...), a target, a tenant and a JSON
object of details (never secrets). Its hash is

    SHA-256(prev_hash + canonical JSON of {seq, ts, actor, action, target, tenant_id, data})

with `prev_hash` the previous entry's hash ("0" * 64 for the first) as hex, and canonical
JSON meaning sorted keys, no whitespace, UTF-8, no NaN. Each entry also carries a MAC of
(seq, hash), and the `ledger_head` row a MAC of the newest (seq, hash): HMAC-SHA256 under a
key derived from the platform's master key (`MasterKey.derive`), which every replica shares
and the database does not hold.

Two ways in:
- `await append(...)`: admin actions. Written (committed) before it returns.
- `record(...)`: events seen on the request path (guardrail interventions). No I/O: queued
  in memory, written in batches by a background task, and on `close()`.

`verify()` walks the chain and names the first bad entry and why:
- edited:       an entry's contents, hash or MAC were changed
- missing:      an entry was deleted (seq has a gap)
- out_of_order: an entry sits at another entry's place (entries swapped or moved)
- truncated:    the newest entries were deleted (the chain ends before the checkpoint)
- checkpoint:   the head checkpoint was deleted, edited or rolled back
- repaired:     the chain was resumed after such a problem and no admin acknowledged it

What it protects against: anyone who can write to the database but does not hold the
master key cannot edit, delete, reorder, insert or truncate entries without `verify()`
noticing, even by recomputing the hashes (the MACs cannot be recomputed). It names the
first place the chain breaks; later entries are not checked past it.

Repairs (`ledger_repair`): if, when appending, the checkpoint is missing, bad, ahead of or
behind the newest entry (or the newest entry is behind the exported checkpoint), the chain
is resumed after the newest entry behind a `ledger.head_repaired` entry recording what was
found. A repair never makes a failed verification pass: `verify()` fails on it until an
admin acknowledges it (`acknowledge()`: a `ledger.acknowledged` entry, MAC'd like any
other, naming the repair and the admin's reason); acknowledged repairs stay listed among
the warnings.

What it does not protect against:
- Someone holding the master key (it can re-MAC anything).
- A rollback: restoring the ledger and its checkpoint together as they were at an
  earlier time (from a backup, or from rows copied earlier) leaves a valid, shorter
  chain; so does wiping every entry and the checkpoint. A process notices a rollback
  below an entry it wrote or verified itself. With `checkpoint_file` (`ledger_export`),
  every write also exports the head to a file the database's users cannot rewrite, and
  `verify()` (any process's, the CLI's) names both.
- Entries still queued by `record()` when a process dies are lost (as usage records).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cumulo.governance.audit.ledger_export import ExportUnreadable, HeadExport
from cumulo.governance.audit.ledger_repair import (
    MAX_REASON,
    Ack,
    NotAcknowledgeable,
    choose_ack,
    resume,
)
from cumulo.governance.audit.ledger_verify import (
    ACK_ACTION,
    REPAIR_ACTION,
    Problem,
    Reason,
    Verification,
    verify_chain,
)
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store import ledger as sql
from cumulo.store.batches import BatchWriter
from cumulo.store.db import Store
from cumulo.store.ledger import Head, Tail

log = logging.getLogger(__name__)
__all__ = [
    "MAX_REASON",
    "Entry",
    "Ledger",
    "NotAcknowledgeable",
    "Problem",
    "Reason",
    "Verification",
    "canonical",
    "entry_hash",
]

# Field names that would hold a secret: refused in `data` at any depth.
SECRET_FIELDS = frozenset(
    {"secret", "secret_key", "token", "password", "api_key", "authorization", "master_key"}
)
_LIMITS = {"actor": 64, "action": 64, "target": 256, "tenant_id": 32}  # the column sizes
_ENTRY_MAC = b"cumulo-ledger-entry\x00"
_HEAD_MAC = b"cumulo-ledger-head\x00"


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger entry, as stored (`data` parsed)."""

    seq: int
    ts: float
    actor: str | None
    action: str
    target: str | None
    tenant_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class _Pending:
    ts: float
    actor: str | None
    action: str
    target: str | None
    tenant_id: str | None
    data: str  # canonical JSON


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8; ValueError for NaN or infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def entry_hash(prev_hash: str, seq: int, fields: Mapping[str, Any]) -> str:
    """The hash of the entry at `seq` with `fields` (ts, actor, action, target, tenant_id
    and data as JSON text), chained to `prev_hash`."""
    body = {name: fields[name] for name in ("actor", "action", "target", "tenant_id")}
    body |= {"seq": seq, "ts": float(fields["ts"]), "data": json.loads(fields["data"])}
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(body)).hexdigest()


def _secret_field(value: Any) -> str | None:
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).lower() in SECRET_FIELDS:
                return str(k)
            if (found := _secret_field(v)) is not None:
                return found
    elif isinstance(value, list | tuple):
        for v in value:
            if (found := _secret_field(v)) is not None:
                return found
    return None


def _pending(
    actor: str | None,
    action: str,
    target: str | None,
    tenant_id: str | None,
    data: dict[str, Any] | None,
) -> _Pending:
    """An entry to write, checked now so that a bad one fails its caller, not a batch."""
    values = {"actor": actor, "action": action, "target": target, "tenant_id": tenant_id}
    for name, value in values.items():
        if value is not None and (len(value) > _LIMITS[name] or "\x00" in value):
            raise ValueError(f"ledger {name} must be at most {_LIMITS[name]} characters")
    if not action:
        raise ValueError("a ledger entry needs an action")
    if data is not None and not isinstance(data, dict):
        raise ValueError("ledger data must be a JSON object")
    if (secret := _secret_field(data)) is not None:
        raise ValueError(f"ledger data must not hold secrets (field '{secret}')")
    try:
        text = canonical(data or {}).decode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ledger data must be JSON: {exc}") from exc
    return _Pending(time.time(), actor, action, target, tenant_id, text)


class Ledger(BatchWriter[_Pending]):
    """The audit ledger of the database in `store`, MAC'd under a key from `master_key`.

    `start()` runs the writer of `record()`ed entries; `close()` writes what is queued.
    `append`, `entries` and `verify` work without `start()` (as the CLI uses them).
    """

    what = "audit ledger entries"
    task_name = "cumulo-ledger-writer"

    def __init__(
        self,
        store: Store,
        master_key: MasterKey,
        *,
        checkpoint_file: Path | None = None,
        flush_interval_s: float = 1.0,
        batch_size: int = 500,
        max_queue: int = 100_000,
    ) -> None:
        super().__init__(
            flush_interval_s=flush_interval_s, batch_size=batch_size, max_queue=max_queue
        )
        self.store = store
        self.export = HeadExport(checkpoint_file) if checkpoint_file is not None else None
        self._key = master_key.derive("audit-ledger")
        self._closed = False
        self._high = 0  # the highest seq this process wrote or verified

    # -- writing ----------------------------------------------------------------------

    async def append(
        self,
        actor: str | None,
        action: str,
        target: str | None = None,
        tenant_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Entry:
        """Append one entry; it is committed when this returns.

        Raises ValueError for an entry that cannot be written (a field too long, data that
        is not a JSON object or names a secret field), Unavailable if the database fails.
        """
        rows = await self._write([_pending(actor, action, target, tenant_id, data)])
        return _entry(rows[-1])

    def record(
        self,
        actor: str | None,
        action: str,
        target: str | None = None,
        tenant_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Queue one entry (no I/O; for the request path). ValueError as `append`."""
        item = _pending(actor, action, target, tenant_id, data)
        if self._closed:
            log.error("ledger closed: entry %s not recorded", action)
            return
        self._queue(item)

    async def close(self) -> None:
        """Stop the writer and write every queued entry."""
        await super().close()
        self._closed = True

    async def acknowledge(self, actor: str | None, seq: int, reason: str) -> Entry:
        """Acknowledge, as `actor` and for `reason`, what verification reports at `seq`: a
        repair (`ledger.head_repaired` entry `seq`), or a problem at the end of the chain
        (checkpoint or truncation) that this write then repairs. Appends a
        `ledger.acknowledged` entry (returned) and exports the new head even over a later
        one. NotAcknowledgeable if `seq` names neither (a broken chain cannot be
        acknowledged: its entries stay edited or missing)."""
        ack = choose_ack(actor, seq, reason, await self.verify())
        rows = await self._write([], ack=ack, force_export=True)
        self._high = rows[-1]["seq"]  # the chain as it now stands is the reference
        return _entry(rows[-1])

    async def _write(
        self, items: list[_Pending], *, ack: Ack | None = None, force_export: bool = False
    ) -> list[dict[str, Any]]:
        """Append `items` (and `ack`), committed; then export the new head. Every row
        written is returned (a repair entry may precede the items).

        After a repair the head is exported even over a later one: the repair entry now
        holds what the export showed, and fails verification until it is acknowledged."""
        exported = await self._exported()
        rows = await sql.append(self.store, lambda tail: self._seal(tail, items, exported, ack))
        last = rows[-1]
        self._high = max(self._high, last["seq"])
        if self.export is not None:
            head = Head(last["seq"], last["hash"], self._mac(_HEAD_MAC, last["seq"], last["hash"]))
            force = force_export or any(r["action"] == REPAIR_ACTION for r in rows)
            try:
                await asyncio.to_thread(self.export.write, head, force=force)
            except OSError as exc:  # the entries are committed; verify() will tell
                log.error("cannot export the audit ledger checkpoint to %s: %s", self.export, exc)
        return rows

    async def _exported(self) -> Head | None:
        """The exported head, if there is one and its MAC is right (else None: verify()
        reports a bad one; appending does not trust it)."""
        if self.export is None:
            return None
        try:
            head = await asyncio.to_thread(self.export.read)
        except ExportUnreadable as exc:
            log.error("audit ledger: %s", exc)
            return None
        return head if head is not None and self._head_ok(head) else None

    def _seal(
        self, tail: Tail, items: list[_Pending], exported: Head | None, ack: Ack | None
    ) -> tuple[list[dict[str, Any]], Head]:
        """The rows for `items` chained after `tail` (under the append lock), and the head."""
        seq, prev, repair = resume(tail, exported, self._head_ok)
        pending = list(items)
        if repair is not None:
            text = canonical(repair).decode()
            pending.insert(0, _Pending(time.time(), None, REPAIR_ACTION, None, None, text))
        if ack is not None:
            data = ack.data(seq + 1 if repair is not None else None)
            text, target = canonical(data).decode(), f"seq:{data['seq']}"
            pending.append(_Pending(time.time(), ack.actor, ACK_ACTION, target, None, text))
        rows = []
        for item in pending:
            seq += 1
            row: dict[str, Any] = {"seq": seq, "ts": item.ts, "actor": item.actor}
            row |= {"action": item.action, "target": item.target, "tenant_id": item.tenant_id}
            row["data"] = item.data
            digest = entry_hash(prev, seq, row)
            row |= {"prev_hash": prev, "hash": digest, "mac": self._mac(_ENTRY_MAC, seq, digest)}
            rows.append(row)
            prev = digest
        return rows, Head(seq, prev, self._mac(_HEAD_MAC, seq, prev))

    def _mac(self, label: bytes, seq: int, digest: str) -> str:
        return hmac.new(self._key, label + f"{seq}:{digest}".encode(), hashlib.sha256).hexdigest()

    def _head_ok(self, head: Head) -> bool:
        return hmac.compare_digest(head.mac, self._mac(_HEAD_MAC, head.seq, head.hash))

    # -- reading ----------------------------------------------------------------------

    async def entries(
        self,
        after_seq: int | None = None,
        limit: int = 100,
        tenant_id: str | None = None,
        *,
        before_seq: int | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> list[Entry]:
        """Entries oldest first after `after_seq` if given, else newest first (below
        `before_seq` if given); optionally of one tenant, action or target (a key id, a
        model: its lineage). Not verified."""
        rows = await sql.entries(
            self.store,
            after_seq=after_seq,
            before_seq=before_seq,
            tenant_id=tenant_id,
            action=action,
            about=target,
            limit=limit,
        )
        return [_entry(r) for r in rows]

    async def verify(self, page_size: int = 1000) -> Verification:
        """Check every entry and the checkpoint (after writing what is queued)."""
        await self.flush()
        result = await verify_chain(self, page_size)
        if result.ok and result.head is not None:
            self._high = max(self._high, result.head.seq)
        return result

    def authentic(self, row: dict[str, Any]) -> str | None:
        """None if the row's hash matches its contents and its MAC matches, else why not."""
        try:
            data = json.loads(row["data"])
            if not isinstance(data, dict) or canonical(data).decode() != row["data"]:
                return "its data is not a canonical JSON object"
            digest = entry_hash(row["prev_hash"], int(row["seq"]), row)
        except (ValueError, TypeError):
            return "its fields cannot be read"
        if not hmac.compare_digest(digest, row["hash"]):
            return "its hash does not match its contents"
        if not hmac.compare_digest(row["mac"], self._mac(_ENTRY_MAC, int(row["seq"]), digest)):
            return "its MAC does not match (the hash was recomputed without the key)"
        return None

    def head_ok(self, head: Head) -> bool:
        """Is the checkpoint's MAC right?"""
        return self._head_ok(head)

    @property
    def high_water(self) -> int:
        """The highest seq this process wrote or verified."""
        return self._high


def _entry(row: dict[str, Any]) -> Entry:
    return Entry(
        seq=int(row["seq"]),
        ts=float(row["ts"]),
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        tenant_id=row["tenant_id"],
        data=json.loads(row["data"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )
