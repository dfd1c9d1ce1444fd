"""An eval's data rows: `{"item": {...}, "sample": {...}}` (a bare object is the item).

`check_row` checks one row against the eval's `item_schema` (JSON Schema) and, for a
`jsonl` run, that it carries a sample; its error names the row's index and the field.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson

MAX_ROW_BYTES = 1 << 20
MAX_ITEMS = 50_000


def row_of(obj: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(item, sample) of a row."""
    if isinstance(obj, dict) and isinstance(obj.get("item"), dict):
        sample = obj.get("sample")
        return obj["item"], sample if isinstance(sample, dict) else None
    return obj, None


def check_schema(schema: Any) -> str | None:
    """Why `schema` is not a JSON Schema, else None."""
    if not isinstance(schema, dict):
        return "item_schema must be a JSON Schema object"
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"item_schema is not a valid JSON Schema: {exc.message}"
    return None


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """The checker of an item schema, to build once for many rows."""
    return jsonschema.Draft202012Validator(schema)


def parse_row(raw: bytes) -> dict[str, Any]:
    """A row already checked (`check_row`) as {"item", "sample"}."""
    item, sample = row_of(orjson.loads(raw))
    return {"item": item, "sample": sample}


def check_row(
    index: int,
    raw: bytes | Any,
    schema: dict[str, Any],
    need_sample: bool,
    checker: jsonschema.Draft202012Validator | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the row as {"item", "sample"}, None) or (None, an error naming index and field).
    `checker`: `validator(schema)`, when many rows are checked."""

    def error(field: str | None, message: str) -> dict[str, Any]:
        return {
            "code": "invalid_item",
            "message": f"item {index}: {message}",
            "param": field,
            "line": index + 1,
        }

    obj = raw
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_ROW_BYTES:
            return None, error(None, f"longer than {MAX_ROW_BYTES} bytes")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return None, error(None, f"not JSON ({exc})")
    if not isinstance(obj, dict):
        return None, error(None, "must be a JSON object")
    item, sample = row_of(obj)
    found = next(iter((checker or validator(schema)).iter_errors(item)), None)
    if found is not None:
        where = ".".join(str(p) for p in found.absolute_path)
        field = f"item.{where}" if where else "item"
        return None, error(field, f"{field}: {found.message}")
    if need_sample and sample is None:
        return None, error("sample", "a jsonl run needs a sample with each item")
    return {"item": item, "sample": sample}, None


def sample_text(sample: dict[str, Any]) -> str:
    """The answer text of a pre-produced sample: `output_text`, OpenAI's `output` list or a
    chat completion's `choices`."""
    if isinstance(sample.get("output_text"), str):
        return str(sample["output_text"])
    out = sample.get("output")
    if isinstance(out, list) and out and isinstance(out[0], dict):
        content = out[0].get("content")
        if isinstance(content, str):
            return content
    choices = sample.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        content = (choices[0].get("message") or {}).get("content")
        if isinstance(content, str):
            return content
    return ""
