"""What every HTTP upstream shares: its error statuses and failures as cumulo errors.

One mapping for all remote providers, so a 429 is `RateLimited` (with the
upstream's Retry-After) and a 5xx is `UpstreamError` whatever the wire format.
An upstream's error text is logged (credentials masked), never passed to callers.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

import aiohttp

from cumulo.errors import CumuloError, InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout
from cumulo.governance.guardrails import credentials

if TYPE_CHECKING:
    from cumulo.providers.base import Provider

log = logging.getLogger(__name__)
_MASK = "[masked]"
_MIN_SECRET = 8  # shorter values are not masked by value (they would mask ordinary words)
_LOGGED_CHARS = 2000
_PLAIN_CODE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")


async def read_body(resp: aiohttp.ClientResponse) -> bytes:
    """A response's whole body, its connection then released; a timeout or a broken
    connection as a cumulo error."""
    try:
        return await resp.read()
    except TimeoutError as exc:
        raise UpstreamTimeout("Upstream timed out.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"Upstream connection failed: {type(exc).__name__}.") from exc
    finally:
        resp.release()


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The `Retry-After` header in seconds, when it is a number."""
    value = headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def status_error(
    provider: Provider,
    status: int,
    detail: str,
    *,
    streamed: bool = False,
    retry_after: float | None = None,
    code: str | None = None,
) -> CumuloError:
    """The cumulo error for an upstream's HTTP error `status`, or for an error event in a
    stream (`streamed`, with the status its kind maps to, or 0).

    `detail`, the upstream's own text, never reaches the caller: an upstream that echoes
    what it was sent would hand cumulo's upstream key to whoever made it fail. The caller
    gets the kind of failure, the status, the deployment's label and a request id; the
    text is logged under that id with anything that looks like a credential masked. A
    `code` made of plain words (`context_length_exceeded`) is kept: routing reads it.
    """
    request_id = "upstream-" + secrets.token_hex(8)
    how = "an error event mid-stream" if streamed or not status else f"HTTP {status}"

    def message(what: str) -> str:
        return f"Deployment '{provider.label}' {what} ({how}; request id {request_id})."

    exc: CumuloError
    if status in (400, 413, 422):
        exc = InvalidRequest(message("rejected the request"), code=_plain(code))
    elif status == 429:
        exc = RateLimited(message("is rate limited upstream"), retry_after=retry_after)
    elif status in (408, 504):
        exc = UpstreamTimeout(message("timed out upstream"))
    elif status in (401, 403):
        exc = UpstreamError(message("failed: the upstream refused cumulo's credentials"))
    elif status >= 500:
        exc = UpstreamError(message("failed with an upstream server error"))
    else:
        exc = UpstreamError(message("failed with an upstream error"))
    exc.headers = {"x-cumulo-request-id": request_id}
    log.warning(
        "%s (%s) answered %s, request id %s: %r",
        provider.label,
        provider.describe(),
        how,
        request_id,
        mask(detail[:_LOGGED_CHARS], provider.credentials()),
    )
    return exc


def _plain(code: str | None) -> str | None:
    return code if code is not None and _PLAIN_CODE.match(code) else None


def mask(text: str, known: tuple[str, ...] = ()) -> str:
    """`text` with `known` secrets and anything that looks like a credential (API keys,
    AWS keys, private keys, secrets assigned to key-like names) replaced by `[masked]`."""
    for secret in known:
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, _MASK)
    spans = sorted(
        span
        for find in (
            credentials.find_prefixed_keys,
            credentials.find_aws_access_keys,
            credentials.find_private_keys,
            credentials.find_assigned_secrets,
        )
        for span in find(text)
    )
    out, pos = [], 0
    for start, end, _kind in spans:
        if start >= pos:
            out.append(text[pos:start])
            out.append(_MASK)
            pos = end
        elif end > pos:
            pos = end
    out.append(text[pos:])
    return "".join(out)
