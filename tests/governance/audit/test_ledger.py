"""The audit ledger on a real SQLite file and a real PostgreSQL database.

Tampering is done as an attacker with write access to the database would: plain SQL on
the tables, never through cumulo. Each kind (edit, delete, reorder, truncate, checkpoint)
must be caught and the first bad entry named; an untouched ledger verifies.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text

from cumulo.governance.audit.ledger import Entry, Ledger, NotAcknowledgeable, Reason, Verification
from cumulo.governance.audit.ledger_export import HeadExport
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store.db import Store
from cumulo.store.ledger import Head
from support.pg import postgres_database

T = TypeVar("T")
MASTER = MasterKey(bytes(range(32)))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}"
    else:
        with postgres_database() as pg_url:
            yield pg_url


def run(url: str, scenario: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = Store(url)
        try:
            await store.migrate()
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def tamper(store: Store, *statements: str, **params: Any) -> None:
    """Change the tables directly, as someone with only database access would."""
    async with store.engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement), params)


async def fill(store: Store, n: int = 6) -> list[Entry]:
    ledger = Ledger(store, MASTER)
    return [
        await ledger.append("k-admin", "key.create", f"key{i}", "t1", {"name": f"app{i}", "i": i})
        for i in range(1, n + 1)
    ]


async def verify_fresh(store: Store) -> Verification:
    """Verify as a process that never saw the ledger before (the CLI, another replica)."""
    return await Ledger(store, MASTER).verify()


def assert_bad(result: Verification, seq: int, reason: Reason) -> None:
    assert not result.ok
    assert result.first_bad is not None, result
    assert (result.first_bad.seq, result.first_bad.reason) == (seq, reason), result.first_bad
    assert result.checked == seq - 1 or reason in (
        Reason.TRUNCATED,
        Reason.CHECKPOINT,
        Reason.REPAIRED,
    )


# -- an untouched ledger -----------------------------------------------------------


def test_untouched_ledger_verifies_and_hashes_are_the_documented_chain(url: str) -> None:
    async def scenario(store: Store) -> tuple[list[Entry], Verification, list[Entry]]:
        entries = await fill(store)
        return entries, await verify_fresh(store), await Ledger(store, MASTER).entries(limit=3)

    entries, result, newest = run(url, scenario)
    assert result.ok and result.first_bad is None and result.warnings == ()
    assert result.checked == 6
    assert result.head is not None and (result.head.seq, result.head.hash) == (6, entries[-1].hash)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [e.seq for e in newest] == [6, 5, 4]
    assert newest[0] == entries[-1]
    # SHA-256(prev_hash + canonical JSON), recomputed here from the module's docstring.
    prev = "0" * 64
    for e in entries:
        body = {
            "seq": e.seq,
            "ts": e.ts,
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "tenant_id": e.tenant_id,
            "data": e.data,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert e.prev_hash == prev
        assert e.hash == hashlib.sha256((prev + canonical).encode()).hexdigest()
        prev = e.hash


def test_empty_ledger_verifies(url: str) -> None:
    result = run(url, verify_fresh)
    assert result.ok and result.checked == 0 and result.head is None


# -- tampering ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger SET target = 'someone-else' WHERE seq = 3",
        "UPDATE ledger SET data = replace(data, 'app3', 'renamed') WHERE seq = 3",
        "UPDATE ledger SET ts = ts - 3600 WHERE seq = 3",
        "UPDATE ledger SET actor = NULL WHERE seq = 3",
    ],
    ids=["target", "data", "ts", "actor"],
)
def test_an_edited_entry_is_named(url: str, statement: str) -> None:
    async def scenario(store: Store) -> Verification:
        await fill(store)
        await tamper(store, statement)
        return await verify_fresh(store)

    result = run(url, scenario)
    assert_bad(result, 3, Reason.EDITED)
    assert result.first_bad is not None and "entry 3" in result.first_bad.detail


def test_an_edit_with_every_hash_recomputed_is_caught_by_the_mac(url: str) -> None:
    """Rewriting the chain after an edit needs the master key: the MAC gives it away."""

    async def scenario(store: Store) -> Verification:
        entries = await fill(store)
        prev = entries[1].hash
        for e in entries[2:]:
            target = "someone-else" if e.seq == 3 else e.target
            body = {
                "seq": e.seq,
                "ts": e.ts,
                "actor": e.actor,
                "action": e.action,
                "target": target,
                "tenant_id": e.tenant_id,
                "data": e.data,
            }
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256((prev + canonical).encode()).hexdigest()
            await tamper(
                store,
                "UPDATE ledger SET target = :t, prev_hash = :p, hash = :h WHERE seq = :s",
                t=target,
                p=prev,
                h=digest,
                s=e.seq,
            )
            prev = digest
        await tamper(store, "UPDATE ledger_head SET hash = :h", h=prev)
        return await verify_fresh(store)

    result = run(url, scenario)
    assert_bad(result, 3, Reason.EDITED)
    assert result.first_bad is not None and "MAC" in result.first_bad.detail


def test_a_deleted_entry_is_named_missing(url: str) -> None:
    async def scenario(store: Store) -> Verification:
        await fill(store)
        await tamper(store, "DELETE FROM ledger WHERE seq = 3")
        return await verify_fresh(store)

    assert_bad(run(url, scenario), 3, Reason.MISSING)


def test_swapped_entries_are_named_out_of_order(url: str) -> None:
    async def scenario(store: Store) -> Verification:
        await fill(store)
        await tamper(
            store,
            "UPDATE ledger SET seq = -1 WHERE seq = 3",
            "UPDATE ledger SET seq = 3 WHERE seq = 4",
            "UPDATE ledger SET seq = 4 WHERE seq = -1",
        )
        return await verify_fresh(store)

    assert_bad(run(url, scenario), 3, Reason.OUT_OF_ORDER)


def test_deleting_the_newest_entries_is_named_truncated(url: str) -> None:
    async def scenario(store: Store) -> Verification:
        await fill(store)
        await tamper(store, "DELETE FROM ledger WHERE seq >= 5")
        return await verify_fresh(store)

    result = run(url, scenario)
    assert_bad(result, 5, Reason.TRUNCATED)
    assert result.checked == 4


def test_deleting_the_newest_entries_and_the_checkpoint_is_caught(url: str) -> None:
    async def scenario(store: Store) -> Verification:
        await fill(store)
        await tamper(store, "DELETE FROM ledger WHERE seq >= 5", "DELETE FROM ledger_head")
        return await verify_fresh(store)

    assert_bad(run(url, scenario), 4, Reason.CHECKPOINT)


def test_a_forged_checkpoint_is_caught(url: str) -> None:
    """Truncating and pointing the checkpoint at the new last entry needs the key."""

    async def scenario(store: Store) -> Verification:
        entries = await fill(store)
        await tamper(
            store,
            "DELETE FROM ledger WHERE seq >= 5",
            "UPDATE ledger_head SET seq = 4, hash = :h",
            h=entries[3].hash,
        )
        return await verify_fresh(store)

    assert_bad(run(url, scenario), 4, Reason.CHECKPOINT)


def test_an_entry_mac_cannot_stand_in_for_the_checkpoint(url: str) -> None:
    async def scenario(store: Store) -> Verification:
        entries = await fill(store)
        await tamper(
            store,
            "DELETE FROM ledger WHERE seq >= 5",
            "UPDATE ledger_head SET seq = 4, hash = :h, "
            "mac = (SELECT mac FROM ledger WHERE seq = 4)",
            h=entries[3].hash,
        )
        return await verify_fresh(store)

    assert_bad(run(url, scenario), 4, Reason.CHECKPOINT)


def test_a_rolled_back_checkpoint_is_caught(url: str) -> None:
    async def scenario(store: Store) -> Verification:
        await fill(store, 3)
        async with store.engine.connect() as conn:
            old = (await conn.execute(text("SELECT seq, hash, mac FROM ledger_head"))).one()
        await fill(store, 3)
        await tamper(
            store,
            "UPDATE ledger_head SET seq = :s, hash = :h, mac = :m",
            s=old.seq,
            h=old.hash,
            m=old.mac,
        )
        return await verify_fresh(store)

    assert_bad(run(url, scenario), 4, Reason.CHECKPOINT)


def test_a_full_rollback_is_seen_by_a_process_that_saw_the_newer_entries(url: str) -> None:
    """Entries and checkpoint restored together as they were earlier form a valid, shorter
    chain: a fresh process cannot tell (see the module docstring), one that wrote or
    verified the newer entries can."""

    async def scenario(store: Store) -> tuple[Verification, Verification]:
        await fill(store, 3)
        async with store.engine.connect() as conn:
            old = (await conn.execute(text("SELECT seq, hash, mac FROM ledger_head"))).one()
        writer = Ledger(store, MASTER)
        for i in range(3):
            await writer.append("k-admin", "tenant.update", f"t{i}")
        await tamper(
            store,
            "DELETE FROM ledger WHERE seq > 3",
            "UPDATE ledger_head SET seq = :s, hash = :h, mac = :m",
            s=old.seq,
            h=old.hash,
            m=old.mac,
        )
        return await verify_fresh(store), await writer.verify()

    fresh, writer = run(url, scenario)
    assert fresh.ok and fresh.checked == 3
    assert_bad(writer, 4, Reason.TRUNCATED)


def test_another_master_key_does_not_verify(url: str) -> None:
    async def scenario(store: Store) -> Verification:
        await fill(store)
        return await Ledger(store, MasterKey(bytes(32))).verify()

    assert_bad(run(url, scenario), 1, Reason.EDITED)


def test_a_missing_checkpoint_is_recorded_when_the_chain_resumes(url: str) -> None:
    async def scenario(store: Store) -> tuple[Verification, list[Entry]]:
        await fill(store, 4)
        await tamper(store, "DELETE FROM ledger_head")
        await Ledger(store, MASTER).append("k-admin", "key.revoke", "key1")
        return await verify_fresh(store), await Ledger(store, MASTER).entries(after_seq=4)

    result, tail = run(url, scenario)
    assert [(e.seq, e.action) for e in tail] == [(5, "ledger.head_repaired"), (6, "key.revoke")]
    assert tail[0].data == {"checkpoint": "missing", "head_seq": None, "last_seq": 4}
    assert_bad(result, 5, Reason.REPAIRED)
    assert result.unacknowledged == (5,) and result.checked == 6
    assert len(result.warnings) == 1 and "entry 5" in result.warnings[0]


def test_a_truncated_ledger_stays_failed_after_the_next_write_until_acknowledged(
    url: str,
) -> None:
    """The newest entries and the checkpoint deleted: verification fails, and a write
    that resumes the chain (recording the repair) must not make it pass."""

    async def scenario(store: Store) -> tuple[Verification, ...]:
        await fill(store, 6)
        await tamper(store, "DELETE FROM ledger WHERE seq >= 5", "DELETE FROM ledger_head")
        before = await verify_fresh(store)
        writer = Ledger(store, MASTER)
        await writer.append(None, "config.changed", "cumulo.yaml")  # 5 repair, 6 this
        ledger_ = Ledger(store, MASTER)
        writer.record("k-caller", "guardrail.intervened", "m", "t1", {"n": 1})
        await writer.flush()
        after = await verify_fresh(store), await writer.verify()
        with pytest.raises(NotAcknowledgeable, match="acknowledge entry 5"):
            await ledger_.acknowledge("k-admin", 6, "wrong entry")
        with pytest.raises(NotAcknowledgeable, match="reason"):
            await ledger_.acknowledge("k-admin", 5, " ")
        ack = await ledger_.acknowledge("k-admin", 5, "restored from the nightly backup")
        assert (ack.seq, ack.action, ack.actor, ack.target) == (
            8,
            "ledger.acknowledged",
            "k-admin",
            "seq:5",
        )
        assert ack.data == {"seq": 5, "reason": "restored from the nightly backup"}
        await writer.append("k-admin", "key.create", "key9")
        return before, *after, await verify_fresh(store), await writer.verify()

    before, fresh, writer, acked, writer_acked = run(url, scenario)
    assert_bad(before, 4, Reason.CHECKPOINT)
    for result in (fresh, writer):
        assert_bad(result, 5, Reason.REPAIRED)
        assert "entries after entry 4 may have been deleted" in result.first_bad.detail  # type: ignore[union-attr]
        assert "cumulo ledger acknowledge --seq 5" in result.first_bad.detail  # type: ignore[union-attr]
    for result in (acked, writer_acked):
        assert result.ok and result.first_bad is None and result.checked == 9
        assert result.unacknowledged == ()
        assert any("entry 5: the head checkpoint was missing" in w for w in result.warnings)
        assert any(
            "k-admin acknowledged entry 5: restored from the nightly backup" in w
            for w in result.warnings
        )


def test_a_checkpoint_problem_can_be_acknowledged_before_anything_is_appended(url: str) -> None:
    async def scenario(store: Store) -> tuple[Entry, Verification, list[Entry]]:
        await fill(store, 4)
        await tamper(store, "DELETE FROM ledger_head")
        ack = await Ledger(store, MASTER).acknowledge(None, 4, "checkpoint row lost in a restore")
        return ack, await verify_fresh(store), await Ledger(store, MASTER).entries(after_seq=4)

    ack, result, tail = run(url, scenario)
    assert [(e.seq, e.action) for e in tail] == [
        (5, "ledger.head_repaired"),
        (6, "ledger.acknowledged"),
    ]
    assert ack.data["seq"] == 5 and ack.data["problem"].startswith("checkpoint: ")
    assert result.ok and result.checked == 6


def test_truncation_under_an_intact_checkpoint_is_repaired_and_needs_acknowledging(
    url: str,
) -> None:
    async def scenario(store: Store) -> tuple[Verification, Verification]:
        await fill(store, 6)
        await tamper(store, "DELETE FROM ledger WHERE seq >= 5")
        await Ledger(store, MASTER).append("k-admin", "key.revoke", "key1")
        failed = await verify_fresh(store)
        await Ledger(store, MASTER).acknowledge("k-admin", 5, "understood")
        return failed, await verify_fresh(store)

    failed, acked = run(url, scenario)
    assert_bad(failed, 5, Reason.REPAIRED)
    assert "ahead of the newest entry" in failed.first_bad.detail  # type: ignore[union-attr]
    assert acked.ok


def test_a_broken_chain_cannot_be_acknowledged(url: str) -> None:
    async def scenario(store: Store) -> None:
        await fill(store, 4)
        await tamper(store, "UPDATE ledger SET target = 'x' WHERE seq = 2")
        with pytest.raises(NotAcknowledgeable, match="cannot be acknowledged"):
            await Ledger(store, MASTER).acknowledge("k-admin", 2, "oops")
        await tamper(store, "UPDATE ledger SET target = 'key2' WHERE seq = 2")
        with pytest.raises(NotAcknowledgeable, match="nothing to acknowledge"):
            await Ledger(store, MASTER).acknowledge("k-admin", 4, "all good")

    run(url, scenario)


# -- the exported checkpoint ---------------------------------------------------------


def test_the_head_is_exported_and_a_full_rollback_is_caught_by_any_process(
    url: str, tmp_path: Path
) -> None:
    """Entries and checkpoint rolled back together look like a valid, shorter chain in the
    database; the exported checkpoint names it, and the next write records a repair."""
    exported = tmp_path / "export" / "ledger-head.json"

    async def scenario(store: Store) -> tuple[Verification, ...]:
        writer = Ledger(store, MASTER, checkpoint_file=exported)
        for i in range(3):
            await writer.append("k-admin", "key.create", f"key{i}")
        async with store.engine.connect() as conn:
            old = (await conn.execute(text("SELECT seq, hash, mac FROM ledger_head"))).one()
        for i in range(3):
            await writer.append("k-admin", "tenant.update", f"t{i}")
        assert json.loads(exported.read_text())["seq"] == 6
        await tamper(
            store,
            "DELETE FROM ledger WHERE seq > 3",
            "UPDATE ledger_head SET seq = :s, hash = :h, mac = :m",
            s=old.seq,
            h=old.hash,
            m=old.mac,
        )
        unaware = await verify_fresh(store)
        caught = await Ledger(store, MASTER, checkpoint_file=exported).verify()
        await Ledger(store, MASTER, checkpoint_file=exported).append("k-admin", "key.revoke", "k")
        repaired = await Ledger(store, MASTER, checkpoint_file=exported).verify()
        ledger_ = Ledger(store, MASTER, checkpoint_file=exported)
        await ledger_.acknowledge("k-admin", 4, "rolled back on purpose")
        assert json.loads(exported.read_text())["seq"] == 6  # the acknowledgement's own
        return unaware, caught, repaired, await ledger_.verify()

    unaware, caught, repaired, acked = run(url, scenario)
    assert unaware.ok
    assert_bad(caught, 4, Reason.TRUNCATED)
    assert str(exported) in caught.first_bad.detail  # type: ignore[union-attr]
    assert "entries 4-6 deleted" in caught.first_bad.detail  # type: ignore[union-attr]
    assert_bad(repaired, 4, Reason.REPAIRED)
    assert "entries 4-6 were deleted" in repaired.first_bad.detail  # type: ignore[union-attr]
    assert acked.ok, acked


def test_deleting_entries_and_the_checkpoint_is_named_by_the_export(
    url: str, tmp_path: Path
) -> None:
    exported = tmp_path / "head.json"

    async def scenario(store: Store) -> Verification:
        ledger_ = Ledger(store, MASTER, checkpoint_file=exported)
        for i in range(6):
            await ledger_.append("k-admin", "key.create", f"key{i}")
        await tamper(store, "DELETE FROM ledger WHERE seq >= 5", "DELETE FROM ledger_head")
        return await Ledger(store, MASTER, checkpoint_file=exported).verify()

    result = run(url, scenario)
    assert_bad(result, 5, Reason.TRUNCATED)
    assert "entries 5-6 deleted" in result.first_bad.detail  # type: ignore[union-attr]


@pytest.mark.parametrize("damage", ["forged", "garbage"])
def test_an_edited_export_is_reported_not_trusted(url: str, tmp_path: Path, damage: str) -> None:
    exported = tmp_path / "head.json"

    async def scenario(store: Store) -> tuple[Verification, Verification]:
        ledger_ = Ledger(store, MASTER, checkpoint_file=exported)
        entries = [await ledger_.append("k-admin", "key.create", f"key{i}") for i in range(4)]
        if damage == "forged":  # pointed at an earlier entry, without the key for its MAC
            exported.write_text(json.dumps({"seq": 2, "hash": entries[1].hash, "mac": "0" * 64}))
        else:
            exported.write_text("{not json")
        result = await Ledger(store, MASTER, checkpoint_file=exported).verify()
        await Ledger(store, MASTER, checkpoint_file=exported).acknowledge(
            "k-admin", result.first_bad.seq, "rewrote the file by hand"
        )  # type: ignore[union-attr]
        return result, await Ledger(store, MASTER, checkpoint_file=exported).verify()

    result, acked = run(url, scenario)
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.reason == Reason.CHECKPOINT
    assert "exported" in result.first_bad.detail
    assert acked.ok


def test_the_export_only_moves_forward(tmp_path: Path) -> None:
    export = HeadExport(tmp_path / "head.json")
    assert export.read() is None
    assert export.write(Head(5, "a" * 64, "m" * 64))
    assert not export.write(Head(3, "b" * 64, "n" * 64))
    assert export.read() == Head(5, "a" * 64, "m" * 64)
    assert export.write(Head(3, "b" * 64, "n" * 64), force=True)
    assert export.read() == Head(3, "b" * 64, "n" * 64)


# -- queued entries, several writers ---------------------------------------------------


def test_recorded_entries_wait_in_memory_until_flushed_or_closed(url: str) -> None:
    async def scenario(store: Store) -> tuple[int, list[Entry], Verification]:
        ledger = Ledger(store, MASTER)
        await ledger.append("k-admin", "key.create", "key1")
        for i in range(3):
            ledger.record("k-caller", "guardrail.block", "pii", "t1", {"guardrail": "pii", "n": i})
        written_before = len(await ledger.entries())
        assert ledger.queued == 3
        await ledger.close()
        return written_before, await ledger.entries(after_seq=0), await verify_fresh(store)

    before, entries, result = run(url, scenario)
    assert before == 1
    assert [(e.seq, e.action, e.data.get("n")) for e in entries] == [
        (1, "key.create", None), (2, "guardrail.block", 0), (3, "guardrail.block", 1),
        (4, "guardrail.block", 2)]  # fmt: skip
    assert result.ok and result.checked == 4


def test_entries_that_cannot_be_written_are_refused_by_the_caller() -> None:
    ledger = Ledger(Store("sqlite+aiosqlite:///:memory:"), MASTER)
    refused: list[tuple[str, dict[str, Any]]] = [
        ("key.create", {"secret": "ck-abc"}),
        ("key.create", {"nested": [{"api_key": "sk-1"}]}),
        ("key.create", {"x": math.nan}),
        ("key.create", {"x": object()}),
        ("a" * 65, {}),
        ("", {}),
    ]
    for action, data in refused:
        with pytest.raises(ValueError, match="ledger") as err:
            ledger.record("k1", action, data=data)
        assert "ck-abc" not in str(err.value) and "sk-1" not in str(err.value)
    assert ledger.queued == 0


def test_two_replicas_appending_at_once_do_not_fork_the_chain(url: str) -> None:
    async def scenario(store: Store) -> tuple[list[Entry], Verification]:
        other = Store(url)  # a second replica: its own engine and connections
        try:
            a, b = Ledger(store, MASTER), Ledger(other, MASTER)

            async def admin(ledger: Ledger, name: str) -> None:
                for i in range(15):
                    await ledger.append(name, "key.create", f"{name}-{i}")
                    ledger.record(name, "guardrail.block", f"{name}-g{i}")
                await ledger.flush()

            await asyncio.gather(admin(a, "a"), admin(b, "b"), admin(a, "c"), admin(b, "d"))
            return await a.entries(after_seq=0, limit=1000), await verify_fresh(other)
        finally:
            await other.close()

    entries, result = run(url, scenario)
    assert result.ok and result.checked == 120
    assert [e.seq for e in entries] == list(range(1, 121))
    assert {e.target for e in entries} == {
        f"{n}-{g}{i}" for n in "abcd" for g in ("", "g") for i in range(15)}  # fmt: skip
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(entries))
