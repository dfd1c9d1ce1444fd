"""Admin API wire models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="A label for the key.")
    role: str = Field("caller", pattern="^(caller|admin)$", description="`caller` or `admin`.")
