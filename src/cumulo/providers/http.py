"""What every HTTP upstream shares: its error statuses and failures as cumulo errors.

One mapping for all remote providers, so a 429 is `RateLimited` (with the
upstream's Retry-After) and a 5xx is `UpstreamError` whatever the wire format.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from cumulo.errors import CumuloError, InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout


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
    status: int, detail: str, *, retry_after: float | None = None, code: str | None = None
) -> CumuloError:
    """The cumulo error for an upstream's HTTP error status; `detail` is its message."""
    if status in (400, 413, 422):
        return InvalidRequest(f"Upstream rejected the request: {detail}", code=code)
    if status == 429:
        return RateLimited(f"Upstream rate limit: {detail}", retry_after=retry_after)
    if status in (408, 504):
        return UpstreamTimeout(f"Upstream timed out ({status}).")
    if status in (401, 403):
        return UpstreamError(f"Upstream refused cumulo's credentials ({status}).")
    return UpstreamError(f"Upstream returned {status}: {detail}")
