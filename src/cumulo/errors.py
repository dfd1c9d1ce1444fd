"""The error hierarchy and its one mapping to HTTP status.

    CumuloError                      500  anything we did not foresee (never with a traceback)
    ├── ConfigError                   -   cumulo.yaml is invalid (file + key path in the message)
    ├── InvalidRequest               400  the caller's body or parameters are wrong (`param` names the field)
    ├── AuthenticationFailed         401  missing, malformed, unknown or revoked key
    ├── PermissionDenied             403  the key may not do this
    ├── NotFound                     404  unknown model, key or route
    ├── PayloadTooLarge              413  body over the configured limit
    ├── RateLimited                  429  a limit or a full queue; carries Retry-After seconds
    │   └── BudgetExceeded           429  a tenant's or key's spend reached its budget for the period
    ├── Unavailable                  503  not ready (models still loading, shutting down)
    │   └── ShuttingDown             503  a request still in flight when the shutdown timeout ran out
    └── UpstreamError                502  a provider failed: connect error, 5xx, malformed reply
        └── UpstreamTimeout          504  a provider did not answer in time

Providers translate foreign exceptions at their boundary (`raise UpstreamError(...)
from exc`). Each front door renders these into its wire format in one function;
the CLI turns them into one line in one place.
"""

from __future__ import annotations


class CumuloError(Exception):
    status: int = 500
    type: str = "internal_error"
    attempts: int = 0  # upstream attempts made before this error (set by the router)
    # Extra response headers, e.g. OpenAI's x-ratelimit-* of the limit that refused.
    headers: dict[str, str] | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after


class ConfigError(CumuloError):
    type = "config_error"


class InvalidRequest(CumuloError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(CumuloError):
    status = 401
    type = "authentication_error"


class PermissionDenied(CumuloError):
    status = 403
    type = "permission_error"


class NotFound(CumuloError):
    status = 404
    type = "not_found_error"


class PayloadTooLarge(CumuloError):
    status = 413
    type = "invalid_request_error"


class RateLimited(CumuloError):
    status = 429
    type = "rate_limit_error"


class BudgetExceeded(RateLimited):
    type = "insufficient_quota"


class Unavailable(CumuloError):
    status = 503
    type = "service_unavailable"


class ShuttingDown(Unavailable):
    """The server is shutting down and could not finish this request in time."""

    def __init__(self) -> None:
        super().__init__(
            "The server is shutting down and could not finish this request; retry it.",
            retry_after=1,
        )


class UpstreamError(CumuloError):
    status = 502
    type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
