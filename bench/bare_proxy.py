"""A bare pass-through proxy: the floor for any Python gateway built like cumulo.

A raw ASGI app (no framework) on uvicorn with httptools and uvloop, one
worker, access log off. It reads the request body, POSTs it to the upstream
with ONE pooled aiohttp ClientSession (the client library and connector
settings cumulo uses) and returns the upstream's status and JSON body. No
auth, validation, routing, translation or accounting.

    python bench/bare_proxy.py --port 9002 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse

import aiohttp


def make_app(upstream: str):  # type: ignore[no-untyped-def]
    base = upstream.rstrip("/")
    state: dict[str, aiohttp.ClientSession] = {}
    req_headers = {"Content-Type": "application/json"}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    # Same pool settings as cumulo's Platform.start().
                    state["http"] = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(
                            limit=0, limit_per_host=0, ttl_dns_cache=300
                        ),
                        timeout=aiohttp.ClientTimeout(total=None),
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await state["http"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        async with state["http"].post(base + scope["path"], data=body, headers=req_headers) as resp:
            data = await resp.read()
            status = resp.status
            ctype = resp.headers.get("content-type", "application/json").encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    return app


def serve(make, doc: str) -> None:  # type: ignore[no-untyped-def]
    """The command line of a proxy: `make(upstream)` served as this one is (bench/floor_proxy.py
    too, so the two are run alike)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9001")
    args = parser.parse_args()
    uvicorn.run(
        make(args.upstream),
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    serve(make_app, __doc__)
