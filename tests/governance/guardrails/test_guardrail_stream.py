"""Streamed output checked incrementally: PII split across chunks, a stream turning bad."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumulo.governance.guardrails import (
    DeniedTopicConfig,
    Guardrail,
    GuardrailConfig,
    GuardrailSet,
    PiiConfig,
    StreamCheck,
)
from cumulo.governance.guardrails.chain import ChainedStreamChecker
from cumulo.governance.guardrails.stream import StreamChecker

DATA = Path(__file__).parents[2] / "data" / "guardrails"
PII = Guardrail(GuardrailConfig(id="pii", pii=PiiConfig()))
WORDS = Guardrail(
    GuardrailConfig(id="words", denied_words=["project falcon"],
                    blocked_output_message="That answer was withheld.")
)  # fmt: skip
REPLY = (
    "Thanks for waiting. I found the customer: write to maria.gonzalez@acme-corp.com or call "
    "+44 20 7946 0958. The refund goes to IBAN GB82 WEST 1234 5698 7654 32, and the card on file "
    "is 4111 1111 1111 1111. Let me know if anything else is needed today."
)


def chunks(text: str, size: int) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


def run(
    checker: StreamChecker | ChainedStreamChecker, pieces: Iterator[str]
) -> tuple[str, StreamCheck | None]:
    """Feed everything; return what was sent and the blocking step, if one blocked."""
    sent = []
    for piece in pieces:
        step = checker.feed(piece)
        if step.blocked:
            return "".join(sent), step
        sent.append(step.text)
    end = checker.finish()
    if end.blocked:
        return "".join(sent), end
    return "".join(sent) + end.text, None


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 64, 1000])
def test_streamed_output_is_anonymized_exactly_as_the_whole_text(size: int) -> None:
    sent, blocked = run(PII.stream_checker(), chunks(REPLY, size))
    assert blocked is None
    assert sent == PII.check(REPLY, "OUTPUT").text
    assert "{EMAIL}" in sent and "{PHONE}" in sent and "{CREDIT_DEBIT_CARD_NUMBER}" in sent
    assert "{INTERNATIONAL_BANK_ACCOUNT_NUMBER}" in sent and "maria" not in sent


def test_a_value_split_across_chunks_never_leaks_a_part() -> None:
    checker = PII.stream_checker()
    sent = []
    for piece in ["My card: 4111 ", "1111 ", "1111 ", "1111", " thanks, and mail bob@", "example.com",
                  " " + "padding " * 20]:  # fmt: skip
        sent.append(checker.feed(piece).text)
        assert "4111" not in "".join(sent) and "bob@" not in "".join(sent)
    sent.append(checker.finish().text)
    assert "".join(sent).startswith("My card: {CREDIT_DEBIT_CARD_NUMBER} thanks, and mail {EMAIL} ")
    assert [f.type for f in checker.findings] == ["CREDIT_DEBIT_CARD_NUMBER", "EMAIL"]


def test_a_stream_that_turns_bad_is_stopped_before_the_bad_part_is_sent() -> None:
    good = "Here is a long and perfectly harmless introduction to our roadmap for next year. " * 3
    bad = "The secret plan is Project Falcon, launching in May. "
    rest = "More text follows here. " * 5
    for size in (1, 4, 9, 32):
        checker = WORDS.stream_checker()
        sent, blocked = run(checker, chunks(good + bad + rest, size))
        assert blocked is not None, size
        assert blocked.message == "That answer was withheld."
        assert [f.type for f in blocked.findings] == ["project falcon"]
        assert "falcon" not in sent.lower()
        assert (good + bad).startswith(sent)  # what was sent is the good part, unchanged
        assert len(sent) >= len(good) - 2 * WORDS.holdback  # ... most of it, not nothing
        assert checker.feed("anything").blocked  # and the stream stays stopped


def test_a_match_at_the_end_waits_for_the_next_chunk() -> None:
    g = Guardrail(GuardrailConfig(id="w", denied_words=["foo"]))
    checker = g.stream_checker()
    steps = [checker.feed(p) for p in ["x " * 20, "foo", "d is tasty " * 5]]
    assert not any(s.blocked for s in steps)  # "foo" became "food"
    assert not checker.finish().blocked
    checker = g.stream_checker()
    checker.feed("x " * 20)
    checker.feed("foo")
    assert checker.finish().blocked  # the stream ended on "foo"


def test_a_topic_stops_a_stream() -> None:
    g = Guardrail(GuardrailConfig(id="t", denied_topics=[DeniedTopicConfig(
        name="investment advice", keywords=["buy shares"])]))  # fmt: skip
    sent, blocked = run(
        g.stream_checker(), chunks("Well. " * 30 + "You should buy shares of X.", 5)
    )
    assert blocked is not None and "buy" not in sent


def test_a_guardrail_not_applied_to_outputs_passes_the_stream_through() -> None:
    g = Guardrail(GuardrailConfig(id="in", pii=PiiConfig(), applies_to=["input"]))
    checker = g.stream_checker()
    assert checker.feed("mail a@b.io").text == "mail a@b.io"
    assert checker.finish().text == ""


def test_chained_checkers_anonymize_then_block() -> None:
    both = GuardrailSet([PII, WORDS])
    sent, blocked = run(both.stream_checker(), chunks(REPLY, 4))
    assert blocked is None and sent == PII.check(REPLY, "OUTPUT").text
    checker = both.stream_checker()
    sent, blocked = run(checker, chunks("mail a@b.io now. " * 10 + "about project falcon. " * 3, 6))
    assert blocked is not None and "falcon" not in sent and "a@b.io" not in sent
    assert checker.blocked and {f.guardrail_id for f in checker.findings} == {"pii", "words"}


def test_a_secret_arriving_after_its_name_is_still_recognised() -> None:
    """`Authorization: Bearer` and its token are held together: the token is only a secret
    next to its name, so the name is not let out before the value has been seen."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlF"
    for head in ("curl -H 'Authorization: Bearer ", "DATABASE_PRODUCTION_CLIENT_SECRET =\n    "):
        checker = PII.stream_checker()
        sent = [checker.feed("Run this: " + "word " * 20 + head)]
        sent += [checker.feed(token[i : i + 5]) for i in range(0, len(token), 5)]
        sent += [checker.feed("' and retry. " + "more " * 20), checker.finish()]
        out = "".join(s.text for s in sent)
        assert token[:12] not in out and out.count("{SECRET}") == 1, out


def test_random_chunkings_of_the_labelled_texts_give_the_whole_text_verdict() -> None:
    """Any cut of any mix of the labelled texts: the same text out as checking it whole, or a
    block where the whole text blocks, with nothing blocked or anonymized let out before."""
    g = Guardrail(GuardrailConfig(
        id="mix", pii=PiiConfig(overrides={"IN_AADHAAR": "block"}),
        denied_words=["project falcon", "blue harbor"],
        denied_topics=[DeniedTopicConfig(name="shares", keywords=["buy shares", "which stock*"])],
    ))  # fmt: skip
    lines = [json.loads(line)["text"] for name in ("pii.dev.jsonl", "pii.test.jsonl")
             for line in (DATA / name).read_text().splitlines()]  # fmt: skip
    lines += ["we discussed Project\nFalcon", "blue harbors", "the Blue Harbor.", "buy shares"]
    rng = random.Random(7)
    for _ in range(200):
        text = " ".join(rng.sample(lines, 4))
        whole = g.check(text, "OUTPUT")
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(1, 15)
            pieces.append(text[i : i + n])
            i += n
        sent, blocked = run(g.stream_checker(), iter(pieces))
        assert (blocked is not None) == whole.blocked, text
        if blocked is None:
            assert sent == whole.text, text
        for f in whole.findings:
            assert not f.match or f.match not in sent, (f.type, text)
