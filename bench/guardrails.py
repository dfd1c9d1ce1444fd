"""Guardrails: detection quality on the labelled sets, and the CPU cost of a check.

Quality: precision and recall of the prompt-attack scorer (at each strength's
threshold) and of each sensitive-information type, on both halves of
tests/data/guardrails (the held-out `test` half is the honest figure; the
patterns were tuned on `dev`).

Cost: p50 and p99 microseconds per call, in this process, of

  attack    the prompt-attack scorer alone
  pii       the sensitive-information scanner alone (all types)
  default   Guardrail.check with the embedded default `pii-anonymize`
  strict    Guardrail.check with prompt attacks + all PII + 20 denied words + 3 topics
  stream    the strict guardrail's stream checker, per 4-character chunk of a reply

on a short prompt (~100 characters), a short prompt holding PII, and long
texts (~8,000 characters: plain prose, and prose with PII and code). Rounds
alternate between the cases, so that a change in the machine's load affects
all alike; the garbage collector is off while timing.

    python bench/guardrails.py [--rounds 2000] [--only quality|cost]

`check_cost(check, text, rounds)` and `strict_guardrail()` are importable, for a
gateway benchmark that wants the same cases.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cumulo.governance.guardrails import (
    DeniedTopicConfig,
    Guardrail,
    GuardrailConfig,
    PiiConfig,
    PromptAttackConfig,
    attacks,
    build_guardrails,
    default_guardrails,
)
from cumulo.governance.guardrails.config import PII_TYPES
from cumulo.governance.guardrails.pii import PiiScanner
from cumulo.governance.guardrails.quality import attack_scores, pii_scores, pii_scores_by_type

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "guardrails"

SHORT = "Can you summarise the main differences between TCP and UDP for my networking class?"
SHORT_PII = (
    "Please email the invoice to maria.gonzalez@acme-corp.com and call me on +44 20 7946 0958."
)
PROSE = (
    "The old lighthouse keeper walked along the shore every morning, collecting shells and "
    "watching the fishing boats come back with the tide. In winter the storms kept him inside, "
    "where he repaired nets, wrote long letters to his sister and read the same three novels. "
)
CODE = (
    "def load(path):\n    with open(path) as f:\n        rows = [json.loads(line) for line in f]\n"
    "    return {r['id']: r for r in rows if r.get('active')}\n"
)
PII_LINE = (
    "Customer record: Laura Perez, laura.perez@correo.es, +34 612 345 678, card 5548 2199 3518 "
    "1903, IBAN ES91 2100 0418 4502 0005 1332, order #4521-8890-1123 on 2024-03-15. "
)


def long_text(*parts: str, size: int = 8000) -> str:
    out = ""
    while len(out) < size:
        for p in parts:
            out += p
    return out[:size]


LONG = long_text(PROSE)
LONG_MIXED = long_text(PROSE, CODE, PROSE, PII_LINE)
REPLY = long_text(PROSE, PII_LINE, size=2000)


def strict_guardrail() -> Guardrail:
    """A guardrail with every policy on: the upper end of what a request pays."""
    return Guardrail(
        GuardrailConfig(
            id="bench-strict",
            pii=PiiConfig(),
            prompt_attack=PromptAttackConfig(strength="high"),
            denied_words=[f"codename{i}" for i in range(18)] + ["project falcon", "blue harbor"],
            denied_topics=[
                DeniedTopicConfig(name="investment advice",
                                  keywords=["which stock*", "invest in", "buy shares"]),
                DeniedTopicConfig(name="medical diagnosis",
                                  keywords=["diagnos*", "what illness", "prescribe"]),
                DeniedTopicConfig(name="competitors", keywords=["acme cloud", "globex ai"]),
            ],
        )
    )  # fmt: skip


def check_cost(check: Callable[[str], object], text: str, rounds: int) -> list[float]:
    """Microseconds for each of `rounds` calls of `check(text)`."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        check(text)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def stream_cost(guard: Guardrail, reply: str, chunk: int = 4) -> list[float]:
    """Microseconds per chunk fed to a fresh stream checker over the whole reply (and finish)."""
    checker = guard.stream_checker()
    out = []
    for i in range(0, len(reply), chunk):
        t0 = time.perf_counter_ns()
        checker.feed(reply[i : i + chunk])
        out.append((time.perf_counter_ns() - t0) / 1000)
    t0 = time.perf_counter_ns()
    checker.finish()
    out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def quality() -> None:
    print("Prompt attacks (per prompt)")
    print(f"  {'set':<6} {'strength':<8} {'threshold':>9} {'precision':>9} {'recall':>7}  tp/fp/fn")
    for half in ("dev", "test"):
        for strength, threshold in attacks.STRENGTH_THRESHOLD.items():
            s = attack_scores(DATA / f"prompt_attacks.{half}.jsonl", threshold)
            print(f"  {half:<6} {strength:<8} {threshold:>9.1f} {s.precision:>9.3f} {s.recall:>7.3f}"
                  f"  {s.tp}/{s.fp}/{s.fn}")  # fmt: skip
    print("\nSensitive information (per (type, value) pair)")
    print(f"  {'type':<34} {'dev P':>6} {'dev R':>6} {'test P':>7} {'test R':>7}")
    dev = pii_scores_by_type(DATA / "pii.dev.jsonl")
    test = pii_scores_by_type(DATA / "pii.test.jsonl")
    for kind in sorted(set(dev) | set(test)):
        d, t = dev.get(kind), test.get(kind)
        cells = [f"{x:.2f}" if x is not None else "-" for x in (
            d and d.precision, d and d.recall, t and t.precision, t and t.recall)]  # fmt: skip
        print(f"  {kind:<34} {cells[0]:>6} {cells[1]:>6} {cells[2]:>7} {cells[3]:>7}")
    for half in ("dev", "test"):
        s = pii_scores(DATA / f"pii.{half}.jsonl")
        print(f"  {'all (' + half + ')':<34} P {s.precision:.3f}  R {s.recall:.3f}  "
              f"tp/fp/fn {s.tp}/{s.fp}/{s.fn}")  # fmt: skip
        for e in s.errors:
            print(f"    {e}")


def cost(rounds: int) -> None:
    scanner = PiiScanner(PII_TYPES)
    default = build_guardrails(default_guardrails())["pii-anonymize"]
    strict = strict_guardrail()
    checks: dict[str, Callable[[str], object]] = {
        "attack": attacks.score,
        "pii": scanner.scan,
        "default": lambda t: default.check(t, "INPUT"),
        "strict": lambda t: strict.check(t, "INPUT"),
    }
    texts = {"short": SHORT, "short+pii": SHORT_PII, "long": LONG, "long+pii+code": LONG_MIXED}
    samples: dict[tuple[str, str], list[float]] = {}
    slices = 10
    gc.collect()
    gc.disable()
    try:
        for _ in range(slices):  # interleaved, so load changes hit every case alike
            for tname, text in texts.items():
                n = max(1, rounds // slices // (20 if len(text) > 1000 else 1))
                for cname, check in checks.items():
                    samples.setdefault((cname, tname), []).extend(check_cost(check, text, n))
            samples.setdefault(("stream", "2k reply"), []).extend(stream_cost(strict, REPLY))
    finally:
        gc.enable()
    print(f"\nCost per call in µs (p50 / p99), {sys.implementation.name} "
          f"{sys.version.split()[0]}; texts: " + ", ".join(
              f"{k} {len(v)} chars" for k, v in texts.items()))  # fmt: skip
    print(f"  {'check':<8} " + " ".join(f"{t:>17}" for t in texts))
    for cname in checks:
        cells = []
        for tname in texts:
            v = samples[(cname, tname)]
            cells.append(f"{pct(v, 0.5):7.1f} / {pct(v, 0.99):7.1f}")
        print(f"  {cname:<8} " + " ".join(f"{c:>17}" for c in cells))
    v = samples[("stream", "2k reply")]
    per_reply = sum(v) / slices
    print(
        f"  stream   per 4-char chunk {pct(v, 0.5):.1f} / {pct(v, 0.99):.1f}; "
        f"{per_reply:.0f} µs per 2,000-character reply (mean {statistics.mean(v):.1f}/chunk)"
    )
    print(json.dumps({f"{c}/{t}": round(pct(v, 0.5), 1) for (c, t), v in samples.items()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2000, help="calls per check on a short text")
    ap.add_argument("--only", choices=["quality", "cost"])
    args = ap.parse_args()
    if args.only != "cost":
        quality()
    if args.only != "quality":
        cost(args.rounds)


if __name__ == "__main__":
    main()
