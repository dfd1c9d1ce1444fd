"""Wire models of OpenAI's fine-tuning API
(https://platform.openai.com/docs/api-reference/fine-tuning)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | int | None = Field(None, description="1 to 50; `auto`: 3.")
    batch_size: Auto | int | None = Field(None, description="1 to 256; `auto`: 1.")
    learning_rate_multiplier: Auto | float | None = Field(
        None, description="Above 0, at most 100; `auto`: 1.0 (a rate of 1e-3 for the adapter)."
    )


class Supervised(BaseModel):
    model_config = ConfigDict(extra="allow")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    supervised: Supervised | None = None


class Lora(BaseModel):
    """cumulo: the LoRA adapter's shape (not in OpenAI's API)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1, le=1024)
    dropout: float = Field(0.0, ge=0, lt=1)


class FineTuneCreate(BaseModel):
    """`POST /v1/fine_tuning/jobs`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[Any] | None = None
    lora: Lora | None = Field(None, description="cumulo: the adapter's rank, alpha, dropout.")
    flagged: Literal["refuse", "drop"] = Field(
        "refuse",
        description="cumulo: what to do when your guardrails block an example of the training "
        "file: refuse the file (an error naming the line) or drop the example. Examples a "
        "guardrail anonymizes are trained on anonymized.",
    )
    checkpoint_every: int | None = Field(
        None, ge=1, le=100_000, description="cumulo: steps between checkpoints (default 10)."
    )
