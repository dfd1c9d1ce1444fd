"""Verifying AWS Signature Version 4 on requests signed with a cumulo key.

Spec: https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html
(create-signed-request). An AWS SDK pointed at cumulo signs with access key
id = the cumulo key's id and secret access key = the key's secret (the part of
`ck-<id>.<secret>` after the dot). The signature is recomputed with botocore's
own signer over the request exactly as received (method, raw path, query, the
headers named in `SignedHeaders`, the body) and compared in constant time; every
header `SignedHeaders` names must be in the request.
The `X-Amz-Date` must be within 15 minutes of now, as AWS requires.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cumulo.errors import AuthenticationFailed

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = dt.timedelta(minutes=15)
_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request\s*,"
    r"\s*SignedHeaders=([a-z0-9;!#$%&'*+.^_`|~-]+)\s*,\s*Signature=([0-9a-f]{64})\s*$"
)


@dataclass(slots=True, frozen=True)
class SignedRequest:
    """A request as it arrived: the raw (still %-encoded) path and every header."""

    method: str
    raw_path: str
    query_string: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass(slots=True, frozen=True)
class Signature:
    """The parts of an `Authorization: AWS4-HMAC-SHA256 …` header."""

    key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def is_sigv4(authorization: str | None) -> bool:
    return bool(authorization) and str(authorization).startswith(ALGORITHM + " ")


def _refuse(message: str, code: str = "invalid_signature") -> AuthenticationFailed:
    return AuthenticationFailed(message, code=code)


def parse(authorization: str) -> Signature:
    match = _AUTHORIZATION.match(authorization)
    if match is None:
        raise _refuse("Malformed AWS4-HMAC-SHA256 Authorization header.", "incomplete_signature")
    key_id, date, region, service, signed, signature = match.groups()
    return Signature(key_id, date, region, service, tuple(signed.split(";")), signature)


def verify(
    req: SignedRequest, sig: Signature, secret: str, service: str, now: dt.datetime | None = None
) -> None:
    """Raise AuthenticationFailed unless `sig` is a valid signature of `req` under `secret`."""
    if sig.service != service:
        raise _refuse(f"Credential should be scoped to correct service: '{service}'.")
    amz_date = req.header("x-amz-date") or ""
    try:
        when = dt.datetime.strptime(amz_date, _TIMESTAMP).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise _refuse("Missing or malformed X-Amz-Date header.", "incomplete_signature") from exc
    now = now or dt.datetime.now(dt.UTC)
    if abs(now - when) > MAX_SKEW:
        raise _refuse(
            f"Signature expired: {amz_date} is not within 15 minutes of the server time "
            f"{now.strftime(_TIMESTAMP)}.",
            "signature_expired",
        )
    if sig.date != amz_date[:8]:
        raise _refuse("The credential date does not match X-Amz-Date.")
    signed = set(sig.signed_headers)
    if "host" not in signed or "x-amz-date" not in signed:
        raise _refuse("SignedHeaders must include host and x-amz-date.", "incomplete_signature")
    present = {name.lower() for name, _ in req.headers}
    absent = sorted(signed - present)
    if absent:  # AWS refuses these: a signature cannot cover a header that was not sent
        raise _refuse(f"SignedHeaders names headers not in the request: {', '.join(absent)}.")
    declared = req.header("x-amz-content-sha256")
    if declared is not None and declared != hashlib.sha256(req.body).hexdigest():
        raise _refuse("X-Amz-Content-SHA256 does not match the body.")
    host = req.header("host") or ""
    url = f"http://{host}{req.raw_path}" + (f"?{req.query_string}" if req.query_string else "")
    aws = AWSRequest(method=req.method, url=url, data=req.body)
    for name, value in req.headers:
        if name.lower() in signed:
            aws.headers[name.lower()] = value  # appends: a repeated header keeps every value
    aws.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(sig.key_id, secret), sig.service, sig.region)
    expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    if not hmac.compare_digest(str(expected), sig.signature):
        raise _refuse(
            "The request signature we calculated does not match the signature you provided."
        )
