"""The OpenAI Files API over the file store: each method is one endpoint of
https://platform.openai.com/docs/api-reference/files, for the caller's tenant only.

Any key may use it (files are not tied to a model); another tenant's file is 404, as
a file that does not exist. Errors leave in OpenAI's shape (`api.http.error_response`)
with `param` naming the field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cumulo.api.files.multipart import MultipartLimits, MultipartUpload
from cumulo.api.files.protocol import FileDeleted, FileList, ListQuery, file_object
from cumulo.api.http import JSONResponse, header
from cumulo.api.http import openai_validation_error as validation_error
from cumulo.errors import InvalidRequest, PayloadTooLarge
from cumulo.files import PURPOSES, UPLOAD_PURPOSES, FileRecord, FileStore
from cumulo.governance.identity.auth import Authenticator, Principal

# Room for a multipart body's boundaries, part headers and text fields around the file.
MULTIPART_SLACK = 64 * 1024


class FilesService:
    def __init__(
        self, auth: Authenticator, files: FileStore, limits: MultipartLimits | None = None
    ) -> None:
        self.auth = auth
        self.files = files
        self.multipart = limits or MultipartLimits()

    async def _who(self, request: Request) -> Principal:
        return await self.auth.authenticate(header(request, b"authorization"))

    async def _file(self, request: Request) -> tuple[Principal, FileRecord]:
        who = await self._who(request)
        return who, await self.files.get(who.tenant_id, request.path_params["file_id"])

    async def upload(self, request: Request) -> Response:
        """POST /v1/files (multipart: `file`, `purpose`): Upload file."""
        who = await self._who(request)
        limit = self.files.limits.max_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + MULTIPART_SLACK:
            raise PayloadTooLarge(f"file is over the limit of {limit} bytes", param="file")
        await self.files.check_room(who.tenant_id)
        upload = MultipartUpload(request, self.multipart)
        staged = await self.files.stage(upload.file_bytes())
        try:
            if upload.filename is None:
                raise InvalidRequest("Missing required parameter: 'file'.", param="file")
            purpose = upload.fields.pop("purpose", None)
            if purpose is None:
                raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
            if purpose not in UPLOAD_PURPOSES:
                raise InvalidRequest(
                    f"Invalid value for 'purpose': {purpose!r}; expected one of "
                    f"{', '.join(UPLOAD_PURPOSES)}.",
                    param="purpose",
                )
            if upload.fields:
                name = sorted(upload.fields)[0]
                raise InvalidRequest(f"Unrecognized request argument: {name!r}.", param=name)
        except BaseException:
            await self.files.discard(staged)
            raise
        record = await self.files.add(
            staged,
            tenant_id=who.tenant_id,
            key_id=who.key_id,
            purpose=purpose,
            filename=upload.filename,
            actor=who.key_id,
        )
        return JSONResponse(file_object(record).model_dump())

    async def list(self, request: Request) -> Response:
        """GET /v1/files[?purpose=&limit=&after=&order=]: List files."""
        who = await self._who(request)
        try:
            query = ListQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            raise validation_error(exc) from exc
        if query.purpose is not None and query.purpose not in PURPOSES:
            raise InvalidRequest(
                f"Invalid value for 'purpose': {query.purpose!r}.", param="purpose"
            )
        page = await self.files.list(
            who.tenant_id,
            purpose=query.purpose,
            limit=query.limit,
            after=query.after,
            order=query.order,
        )
        data = [file_object(r) for r in page.data]
        body = FileList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=page.has_more,
        )
        return JSONResponse(body.model_dump())

    async def retrieve(self, request: Request) -> Response:
        """GET /v1/files/{file_id}: Retrieve file."""
        _, record = await self._file(request)
        return JSONResponse(file_object(record).model_dump())

    async def content(self, request: Request) -> Response:
        """GET /v1/files/{file_id}/content: Retrieve file content (streamed)."""
        _, record = await self._file(request)
        chunks = self.files.content(record)
        first = await anext(chunks, b"")  # a missing blob is a 404, not a broken stream

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

    async def delete(self, request: Request) -> Response:
        """DELETE /v1/files/{file_id}: Delete file."""
        who = await self._who(request)
        record = await self.files.delete(
            who.tenant_id, request.path_params["file_id"], actor=who.key_id
        )
        return JSONResponse(FileDeleted(id=record.id).model_dump())
