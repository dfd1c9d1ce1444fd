"""What was done: the hash-chained audit ledger (verification, export, repair) and the
invocation logs of tenants that turn them on."""

__all__ = ["invocations", "ledger", "ledger_export", "ledger_repair", "ledger_verify"]
