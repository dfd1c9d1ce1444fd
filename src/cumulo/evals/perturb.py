"""Robustness: each item of a `completions` run also sent with perturbed inputs.

A run asks for it in its data source (a cumulo extension)::

    "robustness": {"perturbations": ["lowercase", "typos", "whitespace", "reorder_options"],
                   "seed": 0}

Each perturbation makes a copy of the item in which the generation template is rendered;
the graders still see the original item (the reference answer is not perturbed), so a
drop in pass rate is the model's. Every string value of the item (at any depth, keys
left alone) is perturbed:

- `lowercase`: lower case;
- `typos`: about one letter in twenty (at least one per string that has letters)
  replaced by a neighbour on a QWERTY keyboard, case kept; digits, spaces and punctuation
  are never touched;
- `whitespace`: each run of spaces between words grows to one to three spaces more or
  stays, at least one grows; a string with no spaces is left as it is;
- `reorder_options`: the arrays the eval's `item_schema` marks as options
  (`"x-cumulo-options": true` on an array property, at the top level of the item) are
  shuffled, never left in their order (two options are swapped). The reference should
  then name an option by its text, not by its position. Asking for it on an eval whose
  schema marks no options is refused.

The same seed gives the same perturbations (Python's `random.Random`, seeded with the
seed, the item's index, the perturbation and the value's path), so two runs on different
models see the same perturbed inputs and are compared item by item.

On a run, the output item of item `i` under a perturbation is linked to the original's
(`datasource_item_id` `i`, `perturbation.original_id`); the job's item index of
perturbation `p` (0: the original) of item `i` is `i * (1 + len(perturbations)) + p`.
"""

from __future__ import annotations

import random
from typing import Any

PERTURBATIONS = ("lowercase", "typos", "whitespace", "reorder_options")
OPTIONS = "x-cumulo-options"
MAX_SEED = (1 << 63) - 1
TYPO_RATE = 0.05
_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")


class RobustnessInvalid(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _neighbours() -> dict[str, str]:
    where = {ch: (r, c) for r, row in enumerate(_ROWS) for c, ch in enumerate(row)}
    out: dict[str, str] = {}
    for ch, (r, c) in where.items():
        if not ch.isalpha():
            continue
        near = [
            _ROWS[rr][cc]
            for rr in (r - 1, r, r + 1)
            for cc in (c - 1, c, c + 1)
            if 0 <= rr < len(_ROWS) and 0 <= cc < len(_ROWS[rr]) and (rr, cc) != (r, c)
        ]
        out[ch] = "".join(n for n in near if n.isalpha())
    return out


NEIGHBOURS = _neighbours()


def options_fields(schema: dict[str, Any]) -> list[str]:
    """The top-level properties of `schema` marked as options."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return []
    return [k for k, v in props.items() if isinstance(v, dict) and v.get(OPTIONS) is True]


def check_marks(schema: Any) -> str | None:
    """Why the options marks of an item schema are wrong, else None."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return None
    for key, v in props.items():
        if not isinstance(v, dict) or OPTIONS not in v:
            continue
        if not isinstance(v[OPTIONS], bool):
            return f"item_schema.properties.{key}.{OPTIONS} must be true or false"
        if v[OPTIONS] and v.get("type") != "array":
            return f"item_schema.properties.{key}: {OPTIONS} marks an array property only"
    return None


def check(
    raw: Any, schema: dict[str, Any], param: str = "data_source.robustness"
) -> dict[str, Any]:
    """The robustness option as stored; raises RobustnessInvalid naming the field."""
    if not isinstance(raw, dict):
        raise RobustnessInvalid(param, f"{param} must be an object")
    unknown = set(raw) - {"perturbations", "seed"}
    if unknown:
        key = sorted(unknown)[0]
        raise RobustnessInvalid(
            f"{param}.{key}", f"{param}.{key}: unknown field (perturbations, seed)"
        )
    names = raw.get("perturbations")
    if not isinstance(names, list) or not 1 <= len(names) <= len(PERTURBATIONS):
        raise RobustnessInvalid(
            f"{param}.perturbations",
            f"{param}.perturbations must be a list of 1 to {len(PERTURBATIONS)} of "
            f"{', '.join(PERTURBATIONS)}",
        )
    for i, name in enumerate(names):
        p = f"{param}.perturbations[{i}]"
        if name not in PERTURBATIONS:
            raise RobustnessInvalid(p, f"{p} must be one of {', '.join(PERTURBATIONS)}")
        if names.index(name) != i:
            raise RobustnessInvalid(p, f"{p}: {name} is named twice")
        if name == "reorder_options" and not options_fields(schema):
            raise RobustnessInvalid(
                p,
                f"{p}: reorder_options needs the eval's item_schema to mark an array "
                f'property as options ("{OPTIONS}": true)',
            )
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RobustnessInvalid(
            f"{param}.seed", f"{param}.seed must be an integer in [0, {MAX_SEED}]"
        )
    return {"perturbations": list(names), "seed": seed}


def perturbations_of(source: dict[str, Any]) -> list[str]:
    """The perturbations a run's data source asks for (none: [])."""
    rob = source.get("robustness")
    return list(rob["perturbations"]) if isinstance(rob, dict) else []


def _typos(text: str, rng: random.Random) -> str:
    letters = [i for i, ch in enumerate(text) if ch.lower() in NEIGHBOURS]
    if not letters:
        return text
    chars = list(text)
    for i in rng.sample(letters, max(1, round(TYPO_RATE * len(letters)))):
        ch = chars[i]
        new = rng.choice(NEIGHBOURS[ch.lower()])
        chars[i] = new.upper() if ch.isupper() else new
    return "".join(chars)


def _whitespace(text: str, rng: random.Random) -> str:
    parts = text.split(" ")
    gaps = len(parts) - 1
    if gaps == 0:
        return text
    extra = [rng.randint(0, 3) for _ in range(gaps)]
    if not any(extra):
        extra[rng.randrange(gaps)] = rng.randint(1, 3)
    out = [parts[0]]
    for part, more in zip(parts[1:], extra, strict=True):
        out.append(" " * (1 + more) + part)
    return "".join(out)


def _strings(value: Any, path: str, change: Any) -> Any:
    if isinstance(value, str):
        return change(value, path)
    if isinstance(value, dict):
        return {k: _strings(v, f"{path}.{k}", change) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v, f"{path}.{i}", change) for i, v in enumerate(value)]
    return value


def perturb(
    item: dict[str, Any], name: str, seed: int, index: int, options: list[str]
) -> dict[str, Any]:
    """A perturbed copy of item `index` (`options`: the fields marked as options)."""

    def rng(path: str) -> random.Random:
        return random.Random(f"{seed}/{index}/{name}/{path}")

    if name == "lowercase":
        out: dict[str, Any] = _strings(item, "item", lambda s, _: s.lower())
        return out
    if name == "typos":
        out = _strings(item, "item", lambda s, p: _typos(s, rng(p)))
        return out
    if name == "whitespace":
        out = _strings(item, "item", lambda s, p: _whitespace(s, rng(p)))
        return out
    if name == "reorder_options":
        out = dict(item)
        for key in options:
            value = item.get(key)
            if not isinstance(value, list) or len(value) < 2:
                continue
            order = list(range(len(value)))
            rng(f"item.{key}").shuffle(order)
            if order == sorted(order):
                order = order[1:] + order[:1]
            out[key] = [value[i] for i in order]
        return out
    raise ValueError(name)


__all__ = [
    "OPTIONS",
    "PERTURBATIONS",
    "RobustnessInvalid",
    "check",
    "check_marks",
    "options_fields",
    "perturb",
    "perturbations_of",
]
