"""Wire models of the OpenAI Files API (https://platform.openai.com/docs/api-reference/files)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cumulo.files import FileRecord


class FileObject(BaseModel):
    """The File object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    """`GET /v1/files`: a page of files."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    """`DELETE /v1/files/{file_id}`."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ListQuery(BaseModel):
    """The query of `GET /v1/files`."""

    model_config = ConfigDict(extra="forbid")

    purpose: str | None = None
    limit: int = Field(10_000, ge=1, le=10_000)
    after: str | None = Field(None, max_length=64)
    order: Literal["asc", "desc"] = "desc"


def file_object(record: FileRecord) -> FileObject:
    status: Literal["processed", "error"] = "processed" if record.status == "processed" else "error"
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=int(record.created_at),
        filename=record.filename,
        purpose=record.purpose,
        status=status,
    )
