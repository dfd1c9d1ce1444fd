"""Batches and files: the key's tenant's files (upload, download, delete), through the
file store exactly as the Files API (`/v1/files`) uses it: the same tenant scoping,
purposes, size and count limits, and ledger entries; and its batches (`views/batches.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from cumulo.console.core import Console, Ctx
from cumulo.console.pages import EVERYONE, Page
from cumulo.console.views.batches import batch_values
from cumulo.errors import InvalidRequest, PayloadTooLarge
from cumulo.files import PURPOSES, UPLOAD_PURPOSES

PAGE = Page("/files", "Batches and files", EVERYONE)
PER_PAGE = 50
CHUNK = 1 << 20


def routes(console: Console) -> list[Route]:
    files = console.platform.files

    async def listing(request: Request, ctx: Ctx) -> Response:
        purpose = request.query_params.get("purpose") or None
        if purpose is not None and purpose not in PURPOSES:
            raise InvalidRequest(f"Unknown purpose {purpose!r}.", param="purpose")
        after = request.query_params.get("after") or None
        page = await files.list(ctx.who.tenant_id, purpose=purpose, limit=PER_PAGE, after=after)
        return console.render(
            request,
            ctx,
            "files.html",
            {
                **await batch_values(console, ctx),
                "files": page.data,
                "has_more": page.has_more,
                "purpose": purpose,
                "purposes": PURPOSES,
                "upload_purposes": UPLOAD_PURPOSES,
                "max_bytes": files.limits.max_bytes,
                "uploaded": request.query_params.get("uploaded"),
            },
        )

    async def upload(request: Request, ctx: Ctx) -> Response:
        """POST /console/files (multipart: file, purpose); the CSRF token in the query."""
        limit = files.limits.max_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + 64 * 1024:
            raise PayloadTooLarge(f"The file is over the limit of {limit} bytes.", param="file")
        form = await request.form(max_files=1, max_fields=4, max_part_size=limit + 1)
        item = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(item, UploadFile) or not item.filename:
            raise InvalidRequest("Choose a file to upload.", param="file")
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest("Choose the file's purpose.", param="purpose")

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await item.read(CHUNK):
                yield chunk

        record = await files.create(
            tenant_id=ctx.who.tenant_id,
            key_id=ctx.who.key_id,
            purpose=purpose,
            filename=item.filename,
            chunks=chunks(),
            actor=ctx.who.key_id,
        )
        return RedirectResponse(f"/console/files?uploaded={quote(record.id)}", status_code=303)

    async def content(request: Request, ctx: Ctx) -> Response:
        record = await files.get(ctx.who.tenant_id, request.path_params["file_id"])
        chunks = files.content(record)
        first = await anext(chunks, b"")

        async def body() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk

        return StreamingResponse(
            body(),
            media_type="application/octet-stream",
            headers={
                "content-length": str(record.bytes),
                "content-disposition": f"attachment; filename*=UTF-8''{quote(record.filename)}",
            },
        )

    async def delete(request: Request, ctx: Ctx) -> Response:
        await files.delete(ctx.who.tenant_id, request.path_params["file_id"], actor=ctx.who.key_id)
        return RedirectResponse("/console/files", status_code=303)

    return [
        Route("/console/files", console.view(listing, PAGE), methods=["GET"]),
        Route("/console/files", console.view(upload, PAGE), methods=["POST"]),
        Route("/console/files/{file_id}/content", console.view(content, PAGE), methods=["GET"]),
        Route("/console/files/{file_id}/delete", console.view(delete, PAGE), methods=["POST"]),
    ]
