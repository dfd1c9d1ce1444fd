"""`{{item.x}}`, `{{sample.output_text}}`, `{{sample.output_json.y}}` in eval templates.

A reference names a path of keys (list indices as numbers) under `item` or `sample`. A
string value is put in as it is, anything else as JSON. A reference that names nothing is
an error naming it (`TemplateError`), not an empty string: a typo in a template would
otherwise grade every item against "".
"""

from __future__ import annotations

import re
from typing import Any

import orjson

REF = re.compile(r"\{\{\s*([A-Za-z_][\w]*(?:\.[\w\-]+)*)\s*\}\}")
NAMESPACES = ("item", "sample")


class TemplateError(ValueError):
    pass


def lookup(ref: str, scope: dict[str, Any]) -> Any:
    parts = ref.split(".")
    if parts[0] not in scope:
        raise TemplateError(f"{{{{{ref}}}}}: unknown namespace {parts[0]!r}")
    value: Any = scope[parts[0]]
    for part in parts[1:]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{{ref}}}}}: no {part!r} in the {parts[0]}")
    return value


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def render(template: str, scope: dict[str, Any]) -> str:
    """`template` with each `{{ns.path}}` replaced; raises TemplateError."""
    return REF.sub(lambda m: as_text(lookup(m.group(1), scope)), template)


def references(template: str) -> list[str]:
    return [m.group(1) for m in REF.finditer(template)]


def sample_scope(output_text: str | None) -> dict[str, Any]:
    """The `sample` namespace of a generated answer: `output_text` and, when the answer is
    JSON, `output_json` (else an empty object)."""
    text = output_text or ""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = {}
    return {"output_text": text, "output_json": parsed}
