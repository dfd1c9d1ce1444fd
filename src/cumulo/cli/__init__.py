"""The `cumulo` command: one module per command group.

`serve`, `models build-demo` and `ledger` work locally (`ledger` reads the database
directly, and exits 1 when the ledger does not verify); every other command is a client
of a running platform (`--url`, default http://127.0.0.1:8080) authenticated
with `--key` or `CUMULO_API_KEY`. Errors become one line on stderr and exit
code 1, in `main()` only.

    main.py      the group, its global options, main()
    common.py    the client context, shared options, table output
    serve.py     serve
    keys.py      keys create|list|revoke|rotate
    tenants.py   tenants create|list
    models.py    models list|build-demo
    ledger.py    ledger verify|list
    calls.py     chat, embed
    usage.py     usage
"""

from cumulo.cli.main import cli, main

__all__ = ["cli", "main"]
