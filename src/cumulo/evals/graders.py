"""Testing criteria (graders) of an eval, in OpenAI's shapes, reusable by any front end.

`check(criterion)` validates one criterion as `POST /v1/evals` receives it (a
`CriterionInvalid` names the field); `Grader.grade(scope)` grades one sample, where
`scope` is `{"item": …, "sample": {"output_text", "output_json"}}`.

- `string_check`: `eq`, `ne`, `like` (contains), `ilike` (contains, ignoring case); and
  cumulo's extensions `starts_with`, `regex` (the `regex` library's search, with a time
  limit: a pattern that runs away is an errored result) and `is_json` (no reference).
- `text_similarity`: `fuzzy_match` (rapidfuzz's `fuzz.ratio`), `bleu` (sacrebleu's sentence
  BLEU), `gleu` (nltk's sentence GLEU), `meteor` (nltk's, over WordNet: nltk's own corpus, or
  the WordNet 3.0 database of Debian's `wordnet-base` package; a server without either
  refuses the criterion), `rouge_1`…`rouge_5`, `rouge_l` (rouge-score's
  F-measure), `cosine` (the vectors of a cumulo embedding model, through the gateway).
  Scores are in [0, 1]; the criterion passes at `score >= pass_threshold`.
- `label_model`, `score_model`: a cumulo chat model as judge, called through the gateway
  as the run's owner. The judge's answer is parsed leniently (JSON, `label:`/`score:`,
  a lone label or number); an answer that still cannot be read is an errored result.
- `sample_metric` (cumulo's extension): the sample's `latency_ms` or `cost` is at most
  `max` (a sample without one, a `jsonl` sample or a deployment without a price, is an
  errored result).
- `python` runs arbitrary code and is refused.

cumulo's extension fields of any criterion: `negate` (`string_check`, `text_similarity`,
`sample_metric`: it passes when the check fails) and `only_items_with` (a dotted path under the item: the
criterion grades only the items holding it, as promptfoo's per-test assertions do; see
`applies`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import regex

from cumulo.evals.templates import TemplateError, references, render

MAX_CRITERIA = 32
MAX_TEMPLATE = 64 * 1024
MAX_LABELS = 64
OPS = ("eq", "ne", "like", "ilike", "starts_with", "regex", "is_json")  # OpenAI's 4, then cumulo's
SAMPLE_METRICS = ("latency_ms", "cost")
REGEX_TIMEOUT_S = 1.0
ITEM_PATH = re.compile(r"[\w\-]+(?:\.[\w\-]+)*")
ROUGE = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}
METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "cosine", *ROUGE)
ROLES = ("user", "assistant", "system", "developer")


@dataclass(slots=True)
class Call:
    """One judge or embedding call a grader made: the model that answered, its tokens and
    cost (None: the deployment has no price). It lands in the result's `sample` and in the
    run's `per_model_usage`, under that model."""

    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cached_tokens": 0,
        }


# (model, messages, sampling params) -> the judge's answer text and the call
Chat = Callable[[str, list[dict[str, str]], dict[str, Any]], Awaitable[tuple[str, Call]]]
# (model, texts) -> their vectors and the call
Embed = Callable[[str, list[str]], Awaitable[tuple[list[list[float]], Call]]]


class CriterionInvalid(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class GradeResult:
    name: str
    type: str
    passed: bool
    score: float
    error: str | None = None
    sample: dict[str, Any] | None = None  # a model grader's exchange with its judge
    call: Call | None = None  # the judge's or embedding model's call, if one answered

    def as_dict(self) -> dict[str, Any]:
        sample = self.sample
        if self.call is not None:
            sample = {
                **(sample or {}),
                "model": self.call.model,
                "usage": self.call.usage(),
                "cost": self.call.cost,
            }
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "passed": self.passed,
            "score": self.score,
            "sample": sample,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


def _str(c: dict[str, Any], key: str, param: str, max_len: int = MAX_TEMPLATE) -> str:
    v = c.get(key)
    if not isinstance(v, str):
        raise CriterionInvalid(f"{param}.{key}", f"{param}.{key} must be a string")
    if len(v) > max_len:
        raise CriterionInvalid(f"{param}.{key}", f"{param}.{key} is longer than {max_len}")
    return v


def _messages(c: dict[str, Any], param: str) -> list[dict[str, str]]:
    raw = c.get("input")
    if not isinstance(raw, list) or not raw or len(raw) > 64:
        raise CriterionInvalid(
            f"{param}.input", f"{param}.input must be a list of 1 to 64 messages"
        )
    out = []
    for i, m in enumerate(raw):
        p = f"{param}.input[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise CriterionInvalid(f"{p}.role", f"{p}.role must be one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": content_text(m.get("content"), p)})
    return out


def content_text(content: Any, param: str) -> str:
    """The text of a message's content: a string, or a text part (`input_text`,
    `output_text`), or a list of them."""
    if isinstance(content, str):
        return content
    if (
        isinstance(content, dict)
        and content.get("type") in ("input_text", "output_text")
        and isinstance(content.get("text"), str)
    ):
        return str(content["text"])
    if isinstance(content, list) and content:
        return "".join(content_text(part, f"{param}.content") for part in content)
    raise CriterionInvalid(
        f"{param}.content",
        f"{param}.content must be text (a string or input_text/output_text parts); "
        "images and audio are not graded",
    )


def _number(c: dict[str, Any], key: str, param: str, default: float | None) -> float | None:
    v = c.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise CriterionInvalid(f"{param}.{key}", f"{param}.{key} must be a number")
    return float(v)


# Princeton WordNet 3.0's lexicographer files, in number order (lexnames(5WN)): the one
# file of the database that Debian's `wordnet-base` does not ship and nltk's reader needs.
LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
WORDNET_DIR = "/usr/share/wordnet"  # Debian's `wordnet-base` (Princeton WordNet 3.0)
_wordnet: list[Any] = []  # the reader, once loaded


def _database_reader(path: str) -> Any:
    """nltk's WordNet reader over a WordNet 3.0 database directory (WordNet's own `dict`
    layout, as Debian's `wordnet-base` installs it), with the lexnames list given here."""
    import io
    import warnings

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.data import FileSystemPathPointer

    cats = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
    lexnames = "".join(
        f"{i:02d}\t{name}\t{cats[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)
    )

    class Reader(WordNetCorpusReader):  # type: ignore[misc]
        def open(self, file: str) -> Any:
            return io.StringIO(lexnames) if file == "lexnames" else super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            return None  # WordNet 3.0 is nltk's `wordnet`: nothing to map

    if path not in nltk.data.path:
        nltk.data.path.append(path)  # nltk reads corpora only under its data paths
    with warnings.catch_warnings():  # no Open Multilingual WordNet: English only
        warnings.filterwarnings("ignore", "The multilingual functions", UserWarning)
        return Reader(FileSystemPathPointer(path), None)


def wordnet() -> Any | None:
    """WordNet for meteor: nltk's own `wordnet` corpus if installed, else the WordNet 3.0
    database in `$WNSEARCHDIR` or Debian's `wordnet-base` directory; None without any."""
    if _wordnet:
        return _wordnet[0]
    import os

    import nltk

    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(name)
        except LookupError:
            continue
        from nltk.corpus import wordnet as found

        _wordnet.append(found)
        return found
    path = os.environ.get("WNSEARCHDIR") or WORDNET_DIR
    if not os.path.isfile(os.path.join(path, "data.noun")):
        return None
    _wordnet.append(_database_reader(path))
    return _wordnet[0]


def meteor_available() -> bool:
    return wordnet() is not None


def check(c: Any, index: int) -> dict[str, Any]:
    """The criterion as stored; raises CriterionInvalid naming the field."""
    param = f"testing_criteria[{index}]"
    if not isinstance(c, dict):
        raise CriterionInvalid(param, f"{param} must be an object")
    out = _check(c, param)
    only = c.get("only_items_with")
    if only is not None:
        if not isinstance(only, str) or len(only) > 256 or not ITEM_PATH.fullmatch(only):
            raise CriterionInvalid(
                f"{param}.only_items_with",
                f"{param}.only_items_with must be a dotted path under the item (a.b.c)",
            )
        out["only_items_with"] = only
    negate = c.get("negate")
    if negate is not None:
        if not isinstance(negate, bool):
            raise CriterionInvalid(f"{param}.negate", f"{param}.negate must be a boolean")
        if negate and out["type"] not in ("string_check", "text_similarity", "sample_metric"):
            raise CriterionInvalid(
                f"{param}.negate",
                f"{param}.negate applies to string_check, text_similarity and sample_metric",
            )
        if negate:
            out["negate"] = True
    return out


def applies(c: dict[str, Any], item: dict[str, Any]) -> bool:
    """Whether criterion `c` grades `item` (its `only_items_with` path is in the item)."""
    path = c.get("only_items_with")
    if path is None:
        return True
    value: Any = item
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def _check(c: dict[str, Any], param: str) -> dict[str, Any]:
    kind = c.get("type")
    name = _str(c, "name", param, 256)
    if kind == "python":
        raise CriterionInvalid(
            f"{param}.type",
            f"{param}: python graders run arbitrary code and are not available in cumulo; "
            "use string_check, text_similarity, label_model or score_model",
        )
    if kind == "string_check":
        if c.get("operation") not in OPS:
            raise CriterionInvalid(
                f"{param}.operation", f"{param}.operation must be one of {', '.join(OPS)}"
            )
        op = c["operation"]
        ref = c.get("reference", "") if op == "is_json" else _str(c, "reference", param)
        if op == "is_json" and ref != "":
            raise CriterionInvalid(
                f"{param}.reference", f"{param}.reference: is_json takes no reference"
            )
        if op == "regex" and not references(ref):
            try:
                regex.compile(ref)
            except regex.error as exc:
                raise CriterionInvalid(
                    f"{param}.reference", f"{param}.reference is not a regular expression: {exc}"
                ) from None
        return {
            "type": kind,
            "name": name,
            "input": _str(c, "input", param),
            "reference": ref,
            "operation": op,
        }
    if kind == "sample_metric":
        if c.get("metric") not in SAMPLE_METRICS:
            raise CriterionInvalid(
                f"{param}.metric", f"{param}.metric must be one of {', '.join(SAMPLE_METRICS)}"
            )
        most = _number(c, "max", param, None)
        if most is None or most < 0:
            raise CriterionInvalid(f"{param}.max", f"{param}.max must be a number >= 0")
        return {"type": kind, "name": name, "metric": c["metric"], "max": most}
    if kind == "text_similarity":
        metric = c.get("evaluation_metric")
        if metric not in METRICS:
            raise CriterionInvalid(
                f"{param}.evaluation_metric",
                f"{param}.evaluation_metric must be one of {', '.join(METRICS)}",
            )
        if metric == "meteor" and not meteor_available():
            raise CriterionInvalid(
                f"{param}.evaluation_metric",
                f"{param}: meteor needs WordNet, which is not installed on this server (an "
                "administrator can install Debian's wordnet-base package, or NLTK's wordnet "
                "corpus)",
            )
        threshold = _number(c, "pass_threshold", param, None)
        if threshold is None:
            raise CriterionInvalid(f"{param}.pass_threshold", f"{param}.pass_threshold is required")
        out = {
            "type": kind,
            "name": name,
            "input": _str(c, "input", param),
            "reference": _str(c, "reference", param),
            "evaluation_metric": metric,
            "pass_threshold": threshold,
        }
        if metric == "cosine":
            out["model"] = _str(c, "model", param, 256)  # cumulo: the embedding model
        return out
    if kind == "label_model":
        labels = c.get("labels")
        passing = c.get("passing_labels")
        for key, v in (("labels", labels), ("passing_labels", passing)):
            if (
                not isinstance(v, list)
                or not v
                or len(v) > MAX_LABELS
                or not all(isinstance(x, str) and x.strip() for x in v)
            ):
                raise CriterionInvalid(
                    f"{param}.{key}", f"{param}.{key} must be a list of 1 to {MAX_LABELS} labels"
                )
        assert isinstance(labels, list) and isinstance(passing, list)
        if not set(passing) <= set(labels):
            raise CriterionInvalid(
                f"{param}.passing_labels", f"{param}.passing_labels must be among labels"
            )
        return {
            "type": kind,
            "name": name,
            "model": _str(c, "model", param, 256),
            "input": _messages(c, param),
            "labels": labels,
            "passing_labels": passing,
        }
    if kind == "score_model":
        rng = c.get("range", [0, 1]) or [0, 1]
        if (
            not isinstance(rng, list)
            or len(rng) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rng)
            or not rng[0] < rng[1]
        ):
            raise CriterionInvalid(f"{param}.range", f"{param}.range must be [low, high]")
        threshold = _number(c, "pass_threshold", param, (rng[0] + rng[1]) / 2)
        params = c.get("sampling_params") or {}
        if not isinstance(params, dict):
            raise CriterionInvalid(
                f"{param}.sampling_params", f"{param}.sampling_params must be an object"
            )
        return {
            "type": kind,
            "name": name,
            "model": _str(c, "model", param, 256),
            "input": _messages(c, param),
            "range": [float(rng[0]), float(rng[1])],
            "pass_threshold": threshold,
            "sampling_params": _sampling(params, f"{param}.sampling_params"),
        }
    raise CriterionInvalid(
        f"{param}.type",
        f"{param}.type must be one of string_check, text_similarity, label_model, score_model "
        "(or cumulo's sample_metric)",
    )


def _sampling(p: dict[str, Any], param: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        if p.get(key) is not None:
            v = _number(p, key, param, None)
            assert v is not None
            if not lo <= v <= hi:
                raise CriterionInvalid(f"{param}.{key}", f"{param}.{key} must be in [{lo}, {hi}]")
            out[key] = v
    for key in ("max_completion_tokens", "max_completions_tokens", "seed"):
        v = p.get(key)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1 << 31:
                raise CriterionInvalid(f"{param}.{key}", f"{param}.{key} must be an integer")
            out["seed" if key == "seed" else "max_tokens"] = v
    return out


def _string_check(op: str, got: str, ref: str) -> bool:
    if op == "regex":
        try:
            return regex.search(ref, got, timeout=REGEX_TIMEOUT_S) is not None
        except regex.error as exc:
            raise JudgeFailed(f"not a regular expression: {exc}", None) from None
        except TimeoutError:
            raise JudgeFailed(
                f"the regular expression ran for more than {REGEX_TIMEOUT_S:g} s", None
            ) from None
    if op == "is_json":
        try:
            orjson.loads(got)
        except orjson.JSONDecodeError:
            return False
        return True
    return {
        "eq": got == ref,
        "ne": got != ref,
        "like": ref in got,
        "ilike": ref.lower() in got.lower(),
        "starts_with": got.startswith(ref),
    }[op]


# -- text similarity -------------------------------------------------------------------


def similarity(metric: str, hyp: str, ref: str) -> float:
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return float(fuzz.ratio(hyp, ref)) / 100.0
    if metric == "bleu":
        import sacrebleu

        return float(sacrebleu.sentence_bleu(hyp, [ref]).score) / 100.0
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([ref.split()], hyp.split()))
    if metric == "meteor":
        from nltk.translate.meteor_score import single_meteor_score

        return float(single_meteor_score(ref.split(), hyp.split(), wordnet=wordnet()))
    if metric in ROUGE:
        return float(_rouge(ROUGE[metric]).score(ref, hyp)[ROUGE[metric]].fmeasure)
    raise ValueError(metric)


_scorers: dict[str, Any] = {}


def _rouge(kind: str) -> Any:
    if kind not in _scorers:
        from rouge_score import rouge_scorer

        _scorers[kind] = rouge_scorer.RougeScorer([kind], use_stemmer=False)
    return _scorers[kind]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return 0.0 if na == 0 or nb == 0 else dot / (na * nb)


# -- judges ----------------------------------------------------------------------------

_LABEL_KEY = re.compile(r"\blabel\s*[:=]\s*\"?([^\"\n,}]+)", re.IGNORECASE)
_SCORE_KEY = re.compile(r"\bscore\s*[:=]\s*\"?(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _json_field(text: str, key: str) -> Any:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = orjson.loads(text[start : end + 1])
    except orjson.JSONDecodeError:
        return None
    return value.get(key) if isinstance(value, dict) else None


def parse_label(text: str, labels: list[str]) -> str | None:
    """The one label the judge's answer names, else None."""
    by_lower = {label.lower(): label for label in labels}

    def known(v: Any) -> str | None:
        return by_lower.get(v.strip().strip(".!\"'`*").lower()) if isinstance(v, str) else None

    for candidate in (_json_field(text, "label"), *_LABEL_KEY.findall(text), text):
        if (found := known(candidate)) is not None:
            return found
    named = {
        label
        for label in labels
        if re.search(rf"(?<!\w){re.escape(label.lower())}(?!\w)", text.lower())
    }
    return named.pop() if len(named) == 1 else None


def parse_score(text: str) -> float | None:
    """The score the judge's answer gives, else None."""
    v = _json_field(text, "score")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if m := _SCORE_KEY.search(text):
        return float(m.group(1))
    numbers = set(_NUMBER.findall(text))
    return float(numbers.pop()) if len(numbers) == 1 else None


def _judge_messages(c: dict[str, Any], scope: dict[str, Any]) -> list[dict[str, str]]:
    msgs = [{"role": m["role"], "content": render(m["content"], scope)} for m in c["input"]]
    if c["type"] == "label_model":
        rule = (
            "Answer with exactly one of these labels and nothing else: "
            + ", ".join(c["labels"])
            + '. You may answer as JSON: {"label": "<label>"}.'
        )
    else:
        lo, hi = c["range"]
        rule = (
            f"Answer with a score from {lo:g} to {hi:g} and nothing else. "
            'You may answer as JSON: {"score": <number>}.'
        )
    return [{"role": "system", "content": rule}, *msgs]


class Grader:
    """Grades samples against checked criteria; judges and embeddings through `chat`/`embed`."""

    def __init__(self, chat: Chat | None = None, embed: Embed | None = None) -> None:
        self.chat = chat
        self.embed = embed

    async def grade(self, c: dict[str, Any], scope: dict[str, Any]) -> GradeResult:
        name, kind = c["name"], c["type"]
        try:
            return await self._grade(c, scope)
        except TemplateError as exc:
            return GradeResult(name, kind, False, 0.0, error=str(exc))
        except JudgeFailed as exc:
            return GradeResult(
                name, kind, False, 0.0, error=str(exc), sample=exc.sample, call=exc.call
            )

    async def _grade(self, c: dict[str, Any], scope: dict[str, Any]) -> GradeResult:
        name, kind = c["name"], c["type"]
        if kind == "string_check":
            got, ref = render(c["input"], scope), render(c["reference"], scope)
            ok = _string_check(c["operation"], got, ref) != bool(c.get("negate"))
            return GradeResult(name, kind, ok, 1.0 if ok else 0.0)
        if kind == "sample_metric":
            value = (scope.get("sample") or {}).get(c["metric"])
            if not isinstance(value, (int, float)):
                raise JudgeFailed(f"the sample has no {c['metric']}", None)
            ok = (value <= c["max"]) != bool(c.get("negate"))
            return GradeResult(name, kind, ok, float(value))
        if kind == "text_similarity":
            got, ref = render(c["input"], scope), render(c["reference"], scope)
            metric = c["evaluation_metric"]
            if metric == "cosine":
                if self.embed is None:
                    raise JudgeFailed("no embedding model is available here", None)
                try:
                    (a, b), call = await self.embed(c["model"], [got, ref])
                except Exception as exc:
                    raise JudgeFailed(f"embedding model {c['model']}: {exc}", None) from exc
                score = cosine(a, b)
                ok = (score >= c["pass_threshold"]) != bool(c.get("negate"))
                return GradeResult(name, kind, ok, score, call=call)
            score = similarity(metric, got, ref)
            ok = (score >= c["pass_threshold"]) != bool(c.get("negate"))
            return GradeResult(name, kind, ok, score)
        messages = _judge_messages(c, scope)
        if self.chat is None:
            raise JudgeFailed("no judge model is available here", None)
        params = c.get("sampling_params") or {}
        try:
            answer, call = await self.chat(c["model"], messages, params)
        except Exception as exc:
            raise JudgeFailed(f"judge model {c['model']}: {exc}", {"input": messages}) from exc
        sample = {"input": messages, "output": [{"role": "assistant", "content": answer}]}
        if kind == "label_model":
            label = parse_label(answer, c["labels"])
            if label is None:
                raise JudgeFailed(
                    f"the judge's answer names none of the labels: {answer[:200]!r}", sample, call
                )
            ok = label in c["passing_labels"]
            return GradeResult(
                name, kind, ok, 1.0 if ok else 0.0, sample={**sample, "label": label}, call=call
            )
        given = parse_score(answer)
        lo, hi = c["range"]
        if given is None or not lo <= given <= hi:
            raise JudgeFailed(
                f"the judge's answer holds no score in [{lo:g}, {hi:g}]: {answer[:200]!r}",
                sample,
                call,
            )
        return GradeResult(
            name, kind, given >= c["pass_threshold"], given, sample=sample, call=call
        )


class JudgeFailed(Exception):
    def __init__(
        self, message: str, sample: dict[str, Any] | None, call: Call | None = None
    ) -> None:
        super().__init__(message)
        self.sample = sample
        self.call = call
