"""promptfoo configs (`promptfooconfig.yaml`) as cumulo evals: the common subset.

`load(path)` reads a config and gives a `Plan`: the eval's testing criteria, its items
(one per test) and one run per provider and prompt. Anything outside the subset is a
`ConfigInvalid` naming the file, the key path and the test's index, before anything runs.

- `prompts`: strings, chat messages (a list of `{role, content}`, or a string holding
  them as JSON), `{raw|id, label}`, and `file://` files relative to the config (`.txt`
  prompts separated by a `---` line, `.json`/`.yaml` chat messages). `{{var}}` and
  `{{var.path}}` name a test's vars; other nunjucks syntax is refused.
- `providers`: `openai:chat:<model>`, `openai:<model>` or `<model>` (a cumulo model), as
  strings or `{id, label, config}` with `temperature`, `max_tokens`, `top_p`, `seed`.
- `tests` (a list, or a `file://` CSV, YAML, JSON or JSONL file) with `vars`, `assert`,
  `description`, `options.provider`; `defaultTest` with the same keys.
- Assertions and the criteria they map onto, each graded only on the tests that hold it
  (`only_items_with`): `equals` (`string_check` `eq`), `contains` (`like`), `icontains`
  (`ilike`), `starts-with`, `regex`, `is-json` (cumulo's `string_check` operations),
  `similar` (`text_similarity` `cosine`, threshold 0.75 as promptfoo's), `llm-rubric`
  (`score_model` on promptfoo's `<Output>`/`<Rubric>` prompt, range 0 to 1, passing at
  the assertion's threshold or 0.5), `latency` and `cost` (cumulo's `sample_metric`);
  `not-` forms of all but `llm-rubric` (`negate`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cumulo.evals.graders import MAX_CRITERIA
from cumulo.evals.items import MAX_ITEMS

__all__ = ["ConfigInvalid", "Plan", "RunSpec", "load", "model_of"]

MAX_CONFIG_BYTES = 16 << 20
MAX_PROMPTS = 16
MAX_PROVIDERS = 16
MAX_RUNS = 32
PROMPTFOO_MAX_TOKENS = 1024  # promptfoo's default for OpenAI providers
SIMILAR_THRESHOLD = 0.75  # promptfoo's default
VAR = re.compile(r"\{\{\s*([A-Za-z_]\w*(?:\.[\w\-]+)*)\s*\}\}")
NUNJUCKS = re.compile(r"\{%|\{#|\{\{(?![\s]*[A-Za-z_]\w*(?:\.[\w\-]+)*\s*\}\})")
OPENAI_KINDS = ("chat", "completion", "embedding", "embeddings", "responses", "assistant")
PROVIDER_CONFIG = ("temperature", "max_tokens", "top_p", "seed")
# Keys of an OpenAI provider's config that mean where to send calls: cumulo is the server.
PROVIDER_IGNORED = ("apiBaseUrl", "apiHost", "apiKey", "apiKeyEnvar", "organization")
TEST_KEYS = ("vars", "assert", "description", "options", "metadata")
ASSERT_KEYS = ("type", "value", "threshold", "provider", "metric", "weight")
STRING_OPS = {
    "equals": "eq",
    "contains": "like",
    "icontains": "ilike",
    "starts-with": "starts_with",
    "regex": "regex",
    "is-json": "is_json",
}
TYPES = (*STRING_OPS, "similar", "llm-rubric", "latency", "cost")
NEGATABLE = (*STRING_OPS, "similar", "latency", "cost")
# promptfoo's llm-rubric prompt (its DEFAULT_GRADING_PROMPT, without the examples).
RUBRIC_SYSTEM = (
    "You are grading output according to a user-specified rubric. If the statement in the "
    "rubric is true, then the output passes the test. You respond with a JSON object with "
    "this structure: {reason: string, pass: boolean, score: number}"
)
RUBRIC_USER = (
    "<Output>\n{{sample.output_text}}\n</Output>\n<Rubric>\n{{item.expected.%s}}\n</Rubric>"
)


class ConfigInvalid(ValueError):
    """A config outside the subset: the message names the file and the key path."""


@dataclass(slots=True)
class RunSpec:
    label: str
    model: str
    template: list[dict[str, str]]
    sampling: dict[str, Any]


@dataclass(slots=True)
class Plan:
    name: str
    criteria: list[dict[str, Any]]
    items: list[dict[str, Any]]
    runs: list[RunSpec]
    item_schema: dict[str, Any] = field(
        default_factory=lambda: {
            "type": "object",
            "properties": {"vars": {"type": "object"}, "expected": {"type": "object"}},
            "required": ["vars", "expected"],
        }
    )


def model_of(provider_id: Any, where: str) -> str:
    """The cumulo model a promptfoo provider id names (`openai:chat:m`, `openai:m`, `m`)."""
    if not isinstance(provider_id, str) or not provider_id.strip():
        raise ConfigInvalid(f"{where}: a provider id must be a string")
    parts = provider_id.split(":")
    if parts[0] == "openai" and len(parts) >= 2:
        if parts[1] in ("chat", "embedding", "embeddings") and len(parts) >= 3:
            return ":".join(parts[2:])
        if parts[1] not in OPENAI_KINDS:
            return ":".join(parts[1:])
    if len(parts) == 1 and provider_id.strip() == provider_id:
        return provider_id
    raise ConfigInvalid(
        f"{where}: provider {provider_id!r} is not supported (use openai:chat:<model>, "
        "openai:<model> or a cumulo model's name)"
    )


class _Loader:
    def __init__(self, path: Path, judge: str | None, embedder: str | None) -> None:
        self.path = path
        self.base = path.parent
        self.judge = judge
        self.embedder = embedder
        self.criteria: list[dict[str, Any]] = []
        self.slots: dict[tuple[Any, ...], str] = {}

    def fail(self, where: str, message: str) -> ConfigInvalid:
        return ConfigInvalid(f"{self.path}: {where}: {message}")

    def read(self, ref: str, where: str) -> tuple[Path, str]:
        rel = ref.removeprefix("file://")
        target = (self.base / rel).resolve()
        if not target.is_file():
            raise self.fail(where, f"{ref}: no such file")
        if target.stat().st_size > MAX_CONFIG_BYTES:
            raise self.fail(where, f"{ref}: larger than {MAX_CONFIG_BYTES} bytes")
        return target, target.read_text(encoding="utf-8")

    # -- prompts -----------------------------------------------------------------------

    def messages(self, raw: Any, where: str) -> list[dict[str, str]]:
        if isinstance(raw, str):
            text = raw.strip()
            if text.startswith("["):
                try:
                    raw = json.loads(text)
                except json.JSONDecodeError:
                    return [{"role": "user", "content": self.template(raw, where)}]
            else:
                return [{"role": "user", "content": self.template(raw, where)}]
        if not isinstance(raw, list) or not raw or len(raw) > 64:
            raise self.fail(where, "a prompt is a string or a list of 1 to 64 chat messages")
        out = []
        for i, m in enumerate(raw):
            if (
                not isinstance(m, dict)
                or m.get("role") not in ("system", "user", "assistant", "developer")
                or not isinstance(m.get("content"), str)
            ):
                raise self.fail(
                    f"{where}[{i}]", "a chat message is {role: system|user|assistant, content}"
                )
            out.append({"role": m["role"], "content": self.template(m["content"], f"{where}[{i}]")})
        return out

    def template(self, text: str, where: str) -> str:
        if NUNJUCKS.search(text):
            raise self.fail(where, "only {{var}} templating is supported (no tags or filters)")
        return VAR.sub(lambda m: "{{item.vars." + m.group(1) + "}}", text)

    def prompts(self, raw: Any) -> list[tuple[str, list[dict[str, str]]]]:
        if raw is None:
            raise self.fail("prompts", "at least one prompt is needed")
        entries = raw if isinstance(raw, list) else [raw]
        out: list[tuple[str, list[dict[str, str]]]] = []
        for i, p in enumerate(entries):
            where = f"prompts[{i}]"
            label = None
            if isinstance(p, dict) and ("raw" in p or "id" in p):
                label = p.get("label")
                p = p.get("raw", p.get("id"))
            if isinstance(p, str) and p.startswith("file://"):
                target, text = self.read(p, where)
                if target.suffix in (".json", ".yaml", ".yml"):
                    try:
                        loaded = yaml.safe_load(text)
                    except yaml.YAMLError as exc:
                        raise self.fail(where, f"{p}: {exc}") from None
                    out.append((label or target.name, self.messages(loaded, where)))
                else:
                    parts = re.split(r"^---\s*$", text, flags=re.M)
                    for j, part in enumerate(pt for pt in parts if pt.strip()):
                        name = label or (target.name if len(parts) == 1 else f"{target.name}#{j}")
                        out.append((name, self.messages(part.strip(), where)))
            else:
                out.append((label or f"prompt {i + 1}", self.messages(p, where)))
        if not out or len(out) > MAX_PROMPTS:
            raise self.fail("prompts", f"1 to {MAX_PROMPTS} prompts")
        return out

    # -- providers ---------------------------------------------------------------------

    def providers(self, raw: Any) -> list[tuple[str, str, dict[str, Any]]]:
        entries = raw if isinstance(raw, list) else [raw] if raw is not None else []
        if not entries or len(entries) > MAX_PROVIDERS:
            raise self.fail("providers", f"1 to {MAX_PROVIDERS} providers")
        out = []
        for i, p in enumerate(entries):
            where = f"providers[{i}]"
            if isinstance(p, dict) and "id" not in p and len(p) == 1:
                ((pid, body),) = p.items()  # promptfoo's {id: {config, label}} form
                p = {"id": pid, **(body or {})}
            if isinstance(p, str):
                p = {"id": p}
            if not isinstance(p, dict):
                raise self.fail(where, "a provider is a string or {id, label, config}")
            unknown = set(p) - {"id", "label", "config"}
            if unknown:
                raise self.fail(where, f"{sorted(unknown)[0]} is not supported")
            model = self.model(p.get("id"), f"{where}.id")
            cfg = p.get("config") or {}
            if not isinstance(cfg, dict):
                raise self.fail(f"{where}.config", "must be an object")
            for key in cfg:
                if key not in PROVIDER_CONFIG and key not in PROVIDER_IGNORED:
                    raise self.fail(
                        f"{where}.config.{key}",
                        f"not supported (supported: {', '.join(PROVIDER_CONFIG)})",
                    )
            sampling: dict[str, Any] = {"temperature": 0, "max_completion_tokens": None}
            for key, to in (("temperature", "temperature"), ("top_p", "top_p")):
                if key in cfg:
                    v = cfg[key]
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        raise self.fail(f"{where}.config.{key}", "must be a number")
                    sampling[to] = v
            for key, to in (("max_tokens", "max_completion_tokens"), ("seed", "seed")):
                if key in cfg:
                    v = cfg[key]
                    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                        raise self.fail(f"{where}.config.{key}", "must be an integer >= 0")
                    sampling[to] = v
            label = p.get("label") or model
            out.append((str(label), model, sampling))
        return out

    def model(self, pid: Any, where: str) -> str:
        try:
            return model_of(pid, where)
        except ConfigInvalid as exc:
            raise ConfigInvalid(f"{self.path}: {exc}") from None

    def grading(self, options: Any, where: str) -> tuple[str | None, str | None]:
        """(judge, embedding model) an `options.provider` names."""
        if not isinstance(options, dict) or options.get("provider") is None:
            return None, None
        p = options["provider"]
        where = f"{where}.options.provider"
        if isinstance(p, dict) and ("text" in p or "embedding" in p):
            judge = self._provider_id(p.get("text"), f"{where}.text")
            embed = self._provider_id(p.get("embedding"), f"{where}.embedding")
            return judge, embed
        return self._provider_id(p, where), None

    def _provider_id(self, p: Any, where: str) -> str | None:
        if p is None:
            return None
        if isinstance(p, dict):
            p = p.get("id")
        return self.model(p, where)

    # -- tests -------------------------------------------------------------------------

    def tests(self, raw: Any) -> list[Any]:
        if isinstance(raw, str) and raw.startswith("file://"):
            target, text = self.read(raw, "tests")
            if target.suffix == ".csv":
                rows = list(csv.DictReader(io.StringIO(text)))
                for j, row in enumerate(rows):
                    for col in row:
                        if col and col.startswith("__") and col != "__description":
                            raise self.fail(f"tests[{j}]", f"CSV column {col} is not supported")
                return [
                    {
                        "vars": {k: v for k, v in r.items() if k and not k.startswith("__")},
                        **({"description": r["__description"]} if r.get("__description") else {}),
                    }
                    for r in rows
                ]
            try:
                if target.suffix == ".jsonl":
                    return [json.loads(line) for line in text.splitlines() if line.strip()]
                if target.suffix in (".yaml", ".yml", ".json"):
                    loaded = yaml.safe_load(text)
                    return loaded if isinstance(loaded, list) else [loaded]
            except (json.JSONDecodeError, yaml.YAMLError) as exc:
                raise self.fail("tests", f"{raw}: {exc}") from None
            raise self.fail("tests", f"{raw}: CSV, YAML, JSON or JSONL")
        if raw is None:
            return [{}]
        if not isinstance(raw, list):
            raise self.fail("tests", "a list of tests, or file://tests.csv|yaml|json|jsonl")
        return raw

    def test(self, t: Any, where: str) -> dict[str, Any]:
        if not isinstance(t, dict):
            raise self.fail(where, "a test is an object")
        for key in t:
            if key not in TEST_KEYS:
                raise self.fail(f"{where}.{key}", "not supported")
        vars_ = t.get("vars") or {}
        if not isinstance(vars_, dict):
            raise self.fail(f"{where}.vars", "must be an object")
        for k, v in vars_.items():
            if isinstance(v, list):
                raise self.fail(f"{where}.vars.{k}", "a list of values is not supported")
            if isinstance(v, str) and v.startswith("file://"):
                raise self.fail(f"{where}.vars.{k}", "file:// values are not supported")
        asserts = t.get("assert") or []
        if not isinstance(asserts, list):
            raise self.fail(f"{where}.assert", "must be a list")
        return {"vars": vars_, "assert": asserts, "options": t.get("options") or {}}

    def criterion(
        self, a: Any, where: str, vars_: dict[str, Any], judge: str | None, embed: str | None
    ) -> tuple[dict[str, Any], tuple[Any, ...], Any]:
        """(the criterion, what makes it one, the item's value for it)."""
        if not isinstance(a, dict) or not isinstance(a.get("type"), str):
            raise self.fail(where, "an assertion is {type, value, threshold}")
        for k in a:
            if k not in ASSERT_KEYS:
                raise self.fail(f"{where}.{k}", "not supported")
        kind = a["type"]
        negate = kind.startswith("not-")
        base = kind.removeprefix("not-")
        if base not in TYPES or (negate and base not in NEGATABLE):
            raise self.fail(
                f"{where}.type",
                f"assertion type {kind!r} is not supported (supported: {', '.join(TYPES)}; "
                f"not- forms of {', '.join(NEGATABLE)})",
            )
        value = a.get("value")
        threshold = a.get("threshold")
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float))
        ):
            raise self.fail(f"{where}.threshold", "must be a number")
        if a.get("provider") is not None:
            pid = self._provider_id(a["provider"], f"{where}.provider")
            judge = embed = pid
        if base == "is-json":
            if value is not None:
                raise self.fail(f"{where}.value", "is-json with a JSON schema is not supported")
            value = True
        elif base in ("latency", "cost"):
            if threshold is None:
                raise self.fail(f"{where}.threshold", f"{base} needs a threshold")
            value = True
        else:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise self.fail(f"{where}.value", f"{kind} needs a string value")
            value = self.filled(value, vars_, f"{where}.value")
        key: tuple[Any, ...]
        if base in STRING_OPS:
            key = (kind,)
            c: dict[str, Any] = {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "" if base == "is-json" else "{{item.expected.%s}}",
                "operation": STRING_OPS[base],
            }
        elif base == "similar":
            if embed is None:
                raise self.fail(
                    where,
                    "similar needs an embedding model: defaultTest.options.provider.embedding, "
                    "the assertion's provider, or --embedding-model",
                )
            t = SIMILAR_THRESHOLD if threshold is None else float(threshold)
            key = (kind, t, embed)
            c = {
                "type": "text_similarity",
                "input": "{{sample.output_text}}",
                "reference": "{{item.expected.%s}}",
                "evaluation_metric": "cosine",
                "pass_threshold": t,
                "model": embed,
            }
        elif base == "llm-rubric":
            if judge is None:
                raise self.fail(
                    where,
                    "llm-rubric needs a judge model: defaultTest.options.provider, the "
                    "assertion's provider, or --judge",
                )
            t = 0.5 if threshold is None else float(threshold)
            key = (kind, t, judge)
            c = {
                "type": "score_model",
                "model": judge,
                "input": [],
                "range": [0, 1],
                "pass_threshold": t,
            }
        else:
            key = (kind, float(threshold))  # type: ignore[arg-type]
            c = {
                "type": "sample_metric",
                "metric": "latency_ms" if base == "latency" else "cost",
                "max": float(threshold),  # type: ignore[arg-type]
            }
        if negate:
            c["negate"] = True
        return c, key, value

    def slot(self, key: tuple[Any, ...], kind: str, c: dict[str, Any]) -> str:
        if key in self.slots:
            return self.slots[key]
        slot = f"a{len(self.criteria)}"
        names = {x["name"] for x in self.criteria}
        name = kind if kind not in names else f"{kind}-{len(self.criteria) + 1}"
        c = {**c, "name": name, "only_items_with": f"expected.{slot}"}
        if c["type"] == "score_model":
            c["input"] = [
                {"role": "system", "content": RUBRIC_SYSTEM},
                {"role": "user", "content": RUBRIC_USER % slot},
            ]
        elif c["type"] in ("string_check", "text_similarity") and c["reference"]:
            c["reference"] = c["reference"] % slot
        self.criteria.append(c)
        self.slots[key] = slot
        return slot

    def filled(self, text: str, vars_: dict[str, Any], where: str) -> str:
        if NUNJUCKS.search(text):
            raise self.fail(where, "only {{var}} templating is supported (no tags or filters)")

        def var(m: re.Match[str]) -> str:
            value: Any = vars_
            for part in m.group(1).split("."):
                if not isinstance(value, dict) or part not in value:
                    raise self.fail(where, f"{{{{{m.group(1)}}}}}: no such var in the test")
                value = value[part]
            return value if isinstance(value, str) else json.dumps(value)

        return VAR.sub(var, text)


def load(path: Path, judge: str | None = None, embedding_model: str | None = None) -> Plan:
    """The eval a promptfoo config describes; raises ConfigInvalid."""
    ld = _Loader(path, judge, embedding_model)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ld.fail("file", f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ld.fail("file", f"not YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise ld.fail("file", "a promptfoo config is a mapping")
    prompts = ld.prompts(cfg.get("prompts"))
    providers = ld.providers(cfg.get("providers", cfg.get("targets")))
    default = ld.test(cfg.get("defaultTest") or {}, "defaultTest")
    d_judge, d_embed = ld.grading(default["options"], "defaultTest")
    raw_tests = ld.tests(cfg.get("tests"))
    if not raw_tests or len(raw_tests) > MAX_ITEMS:
        raise ld.fail("tests", f"1 to {MAX_ITEMS} tests")
    items = []
    for i, raw in enumerate(raw_tests):
        where = f"tests[{i}]"
        t = ld.test(raw, where)
        t_judge, t_embed = ld.grading(t["options"], where)
        vars_ = {**default["vars"], **t["vars"]}
        expected: dict[str, Any] = {}
        seen: dict[tuple[Any, ...], int] = {}
        for j, a in enumerate([*default["assert"], *t["assert"]]):
            own = j - len(default["assert"])
            at = f"{where}.assert[{own}]" if own >= 0 else f"defaultTest.assert[{j}]"
            c, key, value = ld.criterion(
                a,
                at,
                vars_,
                t_judge or d_judge or judge,
                t_embed or d_embed or embedding_model,
            )
            seen[key] = seen.get(key, 0) + 1  # the second regex of a test is another slot
            expected[ld.slot((*key, seen[key]), a["type"], c)] = value
            if len(ld.criteria) > MAX_CRITERIA:
                raise ld.fail(at, f"more than {MAX_CRITERIA} distinct assertions")
        for label, messages in prompts:
            for m in messages:
                for ref in re.findall(r"\{\{item\.vars\.([\w.\-]+)\}\}", m["content"]):
                    if ref.split(".")[0] not in vars_:
                        raise ld.fail(where, f"prompt {label!r} uses {{{{{ref}}}}}: no such var")
        items.append({"vars": vars_, "expected": expected})
    if not ld.criteria:
        raise ld.fail("tests", "no assertions: a cumulo eval needs at least one")
    runs = [
        RunSpec(label if len(prompts) == 1 else f"{label} [{plabel}]", model, messages, sampling)
        for label, model, sampling in providers
        for plabel, messages in prompts
    ]
    if len(runs) > MAX_RUNS:
        raise ld.fail("providers", f"providers x prompts is more than {MAX_RUNS} runs")
    name = cfg.get("description")
    return Plan(
        name=name if isinstance(name, str) and name else path.stem,
        criteria=ld.criteria,
        items=items,
        runs=runs,
    )
