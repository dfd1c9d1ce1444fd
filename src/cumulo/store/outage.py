"""Database connection failures, translated at the store boundary into `Unavailable`.

Every statement the store's engine runs, from the store, the ledger's SQL or the
records' SQL, passes two hooks: one around opening a connection (a refused or timed-out
connection, or a server that is starting up or full) and one on errors of a statement
whose connection was lost. Both raise `Unavailable` (503 with Retry-After, also to the
admin API) with a message that names neither the driver's text nor the URL; the reason
is logged at INFO (without the password), at most once every `LOG_EVERY_S` (what failed
logs its own error: a writer its retries, readiness its failed ping, start its one line).

Errors of a statement on a working connection (a constraint violated, a bad query) are
left as they are: they are bugs or conflicts, not an outage. So are a cancelled task and
the pool's pre-ping, which replaces a dead pooled connection with a new one by itself.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine, ExceptionContext

from cumulo.errors import Unavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5.0
LOG_EVERY_S = 10.0
MESSAGE = "The database is unavailable; try again shortly."


def unavailable() -> Unavailable:
    return Unavailable(MESSAGE, code="database_unavailable", retry_after=RETRY_AFTER_S)


class OutageHooks:
    """Installed on one engine (`install`); `where` names the database in log lines."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._logged = 0.0

    def install(self, engine: Engine) -> None:
        event.listen(engine, "do_connect", self._connect)
        event.listen(engine, "handle_error", self._statement_failed)

    def _log(self, reason: BaseException) -> None:
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            log.info("database %s unavailable: %s: %s", self.where, type(reason).__name__, reason)

    def _connect(self, dialect: Dialect, record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:  # whatever stops a connection being made: the database is out
            self._log(exc)
            raise unavailable() from exc

    def _statement_failed(self, context: ExceptionContext) -> None:
        # A cancelled task also "disconnects" (SQLAlchemy cannot trust the connection after
        # it): that stays a cancellation.
        cancelled = not isinstance(context.original_exception, Exception)
        if context.is_disconnect and not context.is_pre_ping and not cancelled:
            self._log(context.original_exception)
            raise unavailable() from context.original_exception
