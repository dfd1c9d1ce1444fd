"""Wire models of OpenAI's Batch API (https://platform.openai.com/docs/api-reference/batch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_METADATA = 16


class BatchCreate(BaseModel):
    """`POST /v1/batches`."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None
    concurrency: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="cumulo: the most lines of this batch in flight at once in one process "
        "(at most the platform's `jobs.batch_concurrency`). Not in OpenAI's API.",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} key-value pairs")
        for key, value in v.items():
            if len(key) > 64:
                raise ValueError(f"key {key[:64]!r}... is longer than 64 characters")
            if len(value) > 512:
                raise ValueError(f"the value of {key!r} is longer than 512 characters")
        return v
