"""Authentication from the in-memory key cache, with keys changed by another process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cumulo.errors import AuthenticationFailed, PermissionDenied
from cumulo.governance.identity import keys
from cumulo.governance.identity.auth import ADMIN_ENV_ID, Authenticator
from cumulo.store.db import Store
from support import eventually


def run(tmp_path: Path, fn: Callable[[Store, Store], Awaitable[None]]) -> None:
    """`fn(ours, theirs)`: two stores on one database, as two workers or replicas have."""

    async def main() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}"
        ours, theirs = Store(url), Store(url)
        try:
            await ours.migrate()
            await fn(ours, theirs)
        finally:
            await ours.close()
            await theirs.close()

    asyncio.run(main())


async def add_key(store: Store, role: str = "caller") -> keys.NewKey:
    new = keys.generate()
    await store.add_key(new.id, f"{role}-key", role, keys.hash_secret(new.secret))
    return new


async def refused(auth: Authenticator, token: str) -> bool:
    try:
        await auth.check_token(token)
    except AuthenticationFailed:
        return True
    return False


def test_a_stored_key_authenticates_with_its_role(tmp_path: Path) -> None:
    async def scenario(ours: Store, theirs: Store) -> None:
        admin, caller = await add_key(ours, "admin"), await add_key(ours)
        auth = Authenticator(ours)
        await auth.start()
        try:
            who = await auth.authenticate(f"Bearer {caller.token}")
            assert (who.key_id, who.role, who.is_admin) == (caller.id, "caller", False)
            assert (await auth.authenticate(f"bearer {admin.token}")).is_admin
            with pytest.raises(PermissionDenied):
                auth.require_admin(who)
            assert await refused(auth, f"ck-{caller.id}.wrong-secret")
        finally:
            await auth.close()

    run(tmp_path, scenario)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "Token ck-a.b"])
def test_missing_or_malformed_authorization(tmp_path: Path, header: str | None) -> None:
    async def scenario(ours: Store, theirs: Store) -> None:
        auth = Authenticator(ours)
        await auth.reload()
        with pytest.raises(AuthenticationFailed) as info:
            await auth.authenticate(header)
        assert info.value.status == 401 and info.value.code in (
            "missing_api_key",
            "invalid_api_key",
        )

    run(tmp_path, scenario)


def test_the_env_admin_key(tmp_path: Path) -> None:
    async def scenario(ours: Store, theirs: Store) -> None:
        auth = Authenticator(ours, env_admin_key="my-admin-secret")
        await auth.reload()
        who = await auth.check_token("my-admin-secret")
        assert (who.key_id, who.is_admin) == (ADMIN_ENV_ID, True)
        assert await refused(auth, "my-admin-secret2")

    run(tmp_path, scenario)


def test_keys_created_by_another_process_work_on_their_first_request(tmp_path: Path) -> None:
    async def scenario(ours: Store, theirs: Store) -> None:
        auth = Authenticator(ours, poll_s=0.3)
        await auth.reload()  # no background poll: only the reload on an unknown key can help
        # One after another, faster than poll_s: as a script creating and using keys would.
        for _ in range(3):
            new = await add_key(theirs)
            assert (await auth.check_token(new.token)).key_id == new.id

    run(tmp_path, scenario)


class _CountingStore(Store):
    """A real store that counts how often the key table is read (one read per reload)."""

    reads = 0

    async def list_keys(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await super().list_keys(*args, **kwargs)


def test_concurrent_unknown_keys_share_one_reload(tmp_path: Path) -> None:
    async def main() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}"
        ours, theirs = _CountingStore(url), Store(url)
        try:
            await ours.migrate()
            auth = Authenticator(ours, poll_s=0.3)
            await auth.reload()
            await auth.check_token((await add_key(theirs)).token)  # a reload just happened
            new = await add_key(theirs)
            reads = ours.reads
            bad = [f"ck-{i:016x}.not-a-key" for i in range(50)]
            results = await asyncio.gather(
                *(auth.check_token(t) for t in [*bad, new.token]), return_exceptions=True
            )
            assert all(isinstance(r, AuthenticationFailed) for r in results[:-1])
            assert not isinstance(results[-1], BaseException) and results[-1].key_id == new.id
            # All waited for the same next reload, not one each.
            assert ours.reads - reads == 1
        finally:
            await ours.close()
            await theirs.close()

    asyncio.run(main())


def test_a_key_revoked_by_another_process_stops_working(tmp_path: Path) -> None:
    async def scenario(ours: Store, theirs: Store) -> None:
        new = await add_key(ours)
        auth = Authenticator(ours, poll_s=0.05)
        await auth.start()
        try:
            await auth.check_token(new.token)
            assert await theirs.revoke_key(new.id)
            assert await eventually(lambda: refused(auth, new.token), within=3)
        finally:
            await auth.close()

    run(tmp_path, scenario)


def test_last_used_is_written_in_the_background_and_at_close(tmp_path: Path) -> None:
    async def scenario(ours: Store, theirs: Store) -> None:
        new = await add_key(ours)
        auth = Authenticator(ours, poll_s=3600)
        await auth.start()
        before = time.time()
        await auth.check_token(new.token)
        [row] = await ours.list_keys()
        assert row.last_used_at is None  # nothing written on the request path
        await auth.close()
        [row] = await ours.list_keys()
        assert row.last_used_at is not None and row.last_used_at >= before

    run(tmp_path, scenario)


class _PausingStore(Store):
    """A real store whose next tenant read waits until the test lets it go on."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reading = asyncio.Event()
        self.go_on = asyncio.Event()
        self.pause = False

    async def list_tenants(self):  # type: ignore[no-untyped-def]
        rows = await super().list_tenants()
        if self.pause:
            self.pause = False
            self.reading.set()
            await self.go_on.wait()
        return rows


def test_a_tenant_deleted_while_the_cache_reloads_stays_deleted(tmp_path: Path) -> None:
    """A reload that read the tables before a local change must not bring it back."""

    async def main() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}"
        store = _PausingStore(url)
        try:
            await store.migrate()
            tenant = await store.add_tenant("t1", "team")
            new = keys.generate()
            await store.add_key(
                new.id, "k", "caller", keys.hash_secret(new.secret), tenant_id=tenant.id
            )
            auth = Authenticator(store)
            await auth.reload()
            assert (await auth.check_token(new.token)).tenant_id == tenant.id
            store.pause = True
            reload = asyncio.create_task(auth.reload(force=True))
            await store.reading.wait()  # the reload has read the tenant, still there
            assert await store.delete_tenant(tenant.id)
            auth.drop_tenant(tenant.id)
            store.go_on.set()
            await reload
            assert await refused(auth, new.token)
        finally:
            await store.close()

    asyncio.run(main())
