"""The `cumulo` command: one module per command group.

`serve`, `models build-demo` and `ledger` work locally (`ledger` reads the database
directly, and exits 1 when the ledger does not verify); every other command is a client
of a running platform (`--url`, default http://127.0.0.1:8080) authenticated
with `--key` or `CUMULO_API_KEY`. Errors become one line on stderr and exit
code 1, in `main()` only.

    main.py            the group, its global options, main()
    common.py          the client context, shared options, times, table output
    reference.py       the CLI reference in the README, generated from the commands
    serve.py           serve
    keys.py            keys create|list|rotate|revoke
    tenants.py         tenants create|list|show|update|delete
    models.py          models list|build-demo
    ledger.py          ledger verify|list
    calls.py           chat, embed
    usage.py           usage
    alerts.py          alerts, invocations
    platform_state.py  guardrails, deployments, engine
"""

from cumulo.cli.main import cli, main

__all__ = ["cli", "main"]
