"""SigV4 verification against requests signed by botocore's signer, and the key cache behind it."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cumulo.errors import AuthenticationFailed
from cumulo.governance.identity import keys, sigv4
from cumulo.governance.identity.auth import Authenticator
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store.db import Store

KEY_ID, SECRET = "0123456789abcdef", "the-secret"
BODY = b'{"messages": [{"role": "user", "content": [{"text": "hi"}]}]}'


def signed(
    secret: str = SECRET,
    body: bytes = BODY,
    service: str = "bedrock",
    path: str = "/model/team%2Fecho%3Av1/converse",
    key_id: str = KEY_ID,
    **headers: str,
) -> sigv4.SignedRequest:
    """A request as boto3 would send it, signed now by botocore."""
    req = AWSRequest(
        method="POST",
        url=f"http://127.0.0.1:8080{path}",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    )
    SigV4Auth(Credentials(key_id, secret), service, "us-east-1").add_auth(req)
    sent = [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "Boto3/1.0"),
        *((k.lower(), v) for k, v in req.headers.items()),
    ]
    return sigv4.SignedRequest("POST", path, "", sent, body)


def check(req: sigv4.SignedRequest, secret: str = SECRET, **kw: Any) -> None:
    sigv4.verify(req, sigv4.parse(req.header("authorization") or ""), secret, "bedrock", **kw)


def test_a_botocore_signature_verifies() -> None:
    req = signed()
    assert sigv4.is_sigv4(req.header("authorization"))
    check(req)
    sig = sigv4.parse(req.header("authorization") or "")
    assert (sig.key_id, sig.region, sig.service) == (KEY_ID, "us-east-1", "bedrock")
    check(signed(**{"X-Amz-Security-Token": "session"}))  # extra signed headers are fine
    check(signed(**{"X-Amz-Content-SHA256": hashlib.sha256(BODY).hexdigest()}))


def tampered(req: sigv4.SignedRequest, **change: Any) -> sigv4.SignedRequest:
    fields = {
        "method": req.method,
        "raw_path": req.raw_path,
        "query_string": req.query_string,
        "headers": req.headers,
        "body": req.body,
        **change,
    }
    return sigv4.SignedRequest(**fields)


@pytest.mark.parametrize(
    ("req", "code"),
    [
        (signed(secret="another-secret"), "invalid_signature"),
        (tampered(signed(), body=BODY.replace(b"hi", b"ho")), "invalid_signature"),
        (tampered(signed(), raw_path="/model/other/converse"), "invalid_signature"),
        (tampered(signed(), query_string="a=1"), "invalid_signature"),
        (
            tampered(
                signed(),
                headers=[
                    (k, "text/plain" if k == "content-type" else v) for k, v in signed().headers
                ],
            ),
            "invalid_signature",
        ),
        (
            tampered(signed(), headers=[(k, v) for k, v in signed().headers if k != "x-amz-date"]),
            "incomplete_signature",
        ),
        (signed(service="s3"), "invalid_signature"),
        # SignedHeaders naming a header that was not sent, around a signature that is otherwise
        # right (a signer that skipped the header it lists).
        (
            tampered(
                signed(),
                headers=[
                    (k, v.replace("SignedHeaders=", "SignedHeaders=a-missing;"))
                    for k, v in signed().headers
                ],
            ),
            "invalid_signature",
        ),
        (
            tampered(
                signed(**{"X-Extra": "1"}),
                headers=[(k, v) for k, v in signed(**{"X-Extra": "1"}).headers if k != "x-extra"],
            ),
            "invalid_signature",
        ),
        (signed(**{"X-Amz-Content-SHA256": "0" * 64}), "invalid_signature"),
    ],
)
def test_anything_changed_is_refused(req: sigv4.SignedRequest, code: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        check(req)
    assert info.value.code == code
    assert SECRET not in info.value.message


def test_the_date_must_be_within_15_minutes() -> None:
    req = signed()
    now = dt.datetime.now(dt.UTC)
    check(req, now=now + dt.timedelta(minutes=14))
    for skew in (16, -16):
        with pytest.raises(AuthenticationFailed) as info:
            check(req, now=now + dt.timedelta(minutes=skew))
        assert info.value.code == "signature_expired"


@pytest.mark.parametrize("value", ["AWS4-HMAC-SHA256 garbage", "AWS4-HMAC-SHA256 Credential=a/b"])
def test_malformed_authorization(value: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        sigv4.parse(value)
    assert info.value.code == "incomplete_signature"


def test_the_key_cache_carries_decrypted_secrets(tmp_path: Path) -> None:
    """Keys created with a sealed secret verify; older keys and foreign ciphertexts do not."""
    master = MasterKey.load(tmp_path)

    async def main() -> None:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}")
        await store.migrate()
        new, old = keys.generate(), keys.generate()
        await store.add_key(
            new.id,
            "new",
            "caller",
            keys.hash_secret(new.secret),
            master.encrypt(new.id, new.secret),
        )
        await store.add_key(old.id, "old", "caller", keys.hash_secret(old.secret))
        auth = Authenticator(store, master_key=master)
        try:
            await auth.reload()
            who = await auth.authenticate_sigv4(signed(new.secret, key_id=new.id), "bedrock")
            assert (who.key_id, who.role) == (new.id, "caller")
            with pytest.raises(AuthenticationFailed, match="does not match"):
                await auth.authenticate_sigv4(signed(old.secret, key_id=new.id), "bedrock")
            with pytest.raises(AuthenticationFailed, match="Bearer"):
                await auth.authenticate_sigv4(signed(old.secret, key_id=old.id), "bedrock")
            with pytest.raises(AuthenticationFailed, match="token included in the request"):
                await auth.authenticate_sigv4(signed(key_id="ffffffffffffffff"), "bedrock")
            # Another master key cannot open the secrets: those keys become bearer-only.
            other = Authenticator(store, master_key=MasterKey(b"\x01" * 32))
            await other.reload()
            with pytest.raises(AuthenticationFailed, match="Bearer"):
                await other.authenticate_sigv4(signed(new.secret, key_id=new.id), "bedrock")
            assert (await other.check_token(new.token)).key_id == new.id
        finally:
            await store.close()

    asyncio.run(main())
