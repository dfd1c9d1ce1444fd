"""Sensitive information: check digits, each type found, anonymized or blocked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cumulo.governance.guardrails import (
    Guardrail,
    GuardrailConfig,
    PiiConfig,
    RegexConfig,
    build_guardrails,
    default_guardrails,
)
from cumulo.governance.guardrails import checksums as cs
from cumulo.governance.guardrails.pii import PiiScanner

ALL = PiiScanner(PiiConfig().entities)


def found(text: str) -> list[tuple[str, str]]:
    return [(s.type, text[s.start : s.end]) for s in ALL.scan(text)]


def test_luhn_accepts_real_card_numbers_and_rejects_a_changed_digit() -> None:
    for card in ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"):
        assert cs.luhn(card) and cs.card_brand_ok(card)
        changed = card[:-1] + str((int(card[-1]) + 1) % 10)
        assert not cs.luhn(changed)


def test_card_brand_needs_a_known_prefix_and_its_length() -> None:
    assert not cs.card_brand_ok("9111111111111111")  # no issuer starts with 9
    assert not cs.card_brand_ok("411111111111111")  # Visa with 15 digits
    assert not cs.card_brand_ok("37828224631000")  # Amex with 14


def test_iban_mod97_and_country_length() -> None:
    assert cs.iban("GB82WEST12345698765432")
    assert cs.iban("DE89370400440532013000")
    assert not cs.iban("GB82WEST12345698765433")  # one digit off
    assert not cs.iban("GB82WEST1234569876543")  # one character short for GB
    assert not cs.iban("QQ82WEST12345698765432")  # no such country


def test_national_id_rules() -> None:
    assert cs.aadhaar("234123412346") and not cs.aadhaar("234123412345")
    assert not cs.aadhaar("134123412346")  # Aadhaar never starts with 0 or 1
    assert cs.spanish_id("12345678", "Z") and not cs.spanish_id("12345678", "A")
    assert cs.spanish_id("X1234567", "L")  # NIE: X counts as 0
    assert cs.us_ssn("536", "22", "8714")
    assert not any(
        cs.us_ssn(*p)
        for p in (
            ("000", "12", "3456"),
            ("666", "12", "3456"),
            ("912", "12", "3456"),
            ("536", "00", "8714"),
        )
    )
    assert cs.uk_nino("AB") and not cs.uk_nino("GB")


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to ana.ruiz+news@mail.example.es today", "EMAIL", "ana.ruiz+news@mail.example.es"),
        ("call (415) 555-0132 now", "PHONE", "(415) 555-0132"),
        ("or +44 20 7946 0958 in London", "PHONE", "+44 20 7946 0958"),
        ("pay with 4111-1111-1111-1111 please", "CREDIT_DEBIT_CARD_NUMBER", "4111-1111-1111-1111"),
        ("to GB82 WEST 1234 5698 7654 32 today", "INTERNATIONAL_BANK_ACCOUNT_NUMBER",
         "GB82 WEST 1234 5698 7654 32"),
        ("SSN 536-22-8714 on file", "US_SOCIAL_SECURITY_NUMBER", "536-22-8714"),
        ("NI number RK 12 34 56 C", "UK_NATIONAL_INSURANCE_NUMBER", "RK 12 34 56 C"),
        ("DNI 12345678Z y NIE", "ES_NATIONAL_ID", "12345678Z"),
        ("Aadhaar 2341 2341 2346.", "IN_AADHAAR", "2341 2341 2346"),
        ("key AKIAIOSFODNN7EXAMPLE here", "AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE"),
        ("use sk-proj-4fKq9LmZ2pX8vN4rT7wB1yC6 now", "API_KEY", "sk-proj-4fKq9LmZ2pX8vN4rT7wB1yC6"),
        ("token ghp_" + "a1B2" * 9 + " leaked", "API_KEY", "ghp_" + "a1B2" * 9),
        ("SLACK=xoxb-2048375610-Kd8sL2mQ9vX4", "API_KEY", "xoxb-2048375610-Kd8sL2mQ9vX4"),
        ("client_secret = 'Zx9Qw2Er7Ty4Ui1Op6As3Df8'", "SECRET", "Zx9Qw2Er7Ty4Ui1Op6As3Df8"),
        ("DB_PASSWORD=T7#kq9!Lm2", "SECRET", "T7#kq9!Lm2"),
    ],
)  # fmt: skip
def test_each_type_is_found_with_its_exact_extent(text: str, kind: str, value: str) -> None:
    assert found(text) == [(kind, value)]


def test_a_pem_private_key_is_found_whole_even_unterminated() -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg\n-----END EC PRIVATE KEY-----"
    assert found(f"key:\n{pem}\nthanks") == [("PRIVATE_KEY", pem)]
    cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B"
    assert found(f"here: {cut}") == [("PRIVATE_KEY", cut)]


@pytest.mark.parametrize(
    "text",
    [
        "Order #4521-8890-1123 shipped",
        "reference 4595711777741215 (16 digits, not Luhn-valid)",
        "2024-03-15 14:22:07.531 took 30000 ms",
        "unix time 1710512527",
        "upgrade v2.14.3 to 10.0.0.1",
        "ISBN 978-3-16-148410-0",
        "IBAN DE70584744529078454749 has a bad check",
        "SSN 000-12-3456 is invalid",
        "DNI 18628964T has the wrong letter",
        "Aadhaar-like 547887838483",
        "api_key=YOUR_API_KEY_HERE",
        "password = os.environ['DB_PASSWORD']",
        "risk-free task-based sk-learn",
        "the @app.route decorator",
    ],
)
def test_hard_negatives_are_left_alone(text: str) -> None:
    assert found(text) == []


def test_the_default_guardrail_anonymizes_every_type_both_ways() -> None:
    guards = build_guardrails(default_guardrails())
    assert list(guards) == ["pii-anonymize"]
    guard = guards["pii-anonymize"]
    text = "I'm bob@example.com, card 4111 1111 1111 1111, phone +1 (312) 555-0148."
    for source in ("INPUT", "OUTPUT"):
        v = guard.check(text, source)
        assert v.action == "GUARDRAIL_INTERVENED" and not v.blocked
        assert v.text == "I'm {EMAIL}, card {CREDIT_DEBIT_CARD_NUMBER}, phone {PHONE}."
        assert [f.match for f in v.findings] == [
            "bob@example.com",
            "4111 1111 1111 1111",
            "+1 (312) 555-0148",
        ]


def test_clean_text_passes_unchanged() -> None:
    guard = build_guardrails(default_guardrails())["pii-anonymize"]
    v = guard.check("What is the capital of France?", "INPUT")
    assert (v.action, v.blocked, v.text, v.findings) == (
        "NONE",
        False,
        "What is the capital of France?",
        (),
    )


def test_block_action_and_per_type_override() -> None:
    guard = Guardrail(
        GuardrailConfig(
            id="cards",
            pii=PiiConfig(entities=["EMAIL", "CREDIT_DEBIT_CARD_NUMBER"],
                          overrides={"CREDIT_DEBIT_CARD_NUMBER": "block"}),
            blocked_input_message="No card numbers, please.",
        )
    )  # fmt: skip
    v = guard.check("mail a@b.io", "INPUT")
    assert (v.blocked, v.text) == (False, "mail {EMAIL}")
    v = guard.check("mail a@b.io card 4111111111111111 +44 20 7946 0958", "INPUT")
    assert v.blocked and v.text == "No card numbers, please."
    assert {(f.type, f.action) for f in v.findings} == {
        ("EMAIL", "ANONYMIZED"),
        ("CREDIT_DEBIT_CARD_NUMBER", "BLOCKED"),
    }  # the phone is not among this guardrail's types


def test_custom_regex_is_anonymized_under_its_name() -> None:
    guard = Guardrail(
        GuardrailConfig(
            id="tickets",
            pii=PiiConfig(entities=[], regexes=[RegexConfig(name="TICKET", pattern=r"TCK-\d{6}")]),
        )
    )
    v = guard.check("see TCK-004211 and TCK-12", "OUTPUT")
    assert v.text == "see {TICKET} and TCK-12"
    assert [(f.policy, f.type, f.match) for f in v.findings] == [("regex", "TICKET", "TCK-004211")]


def test_summary_for_logs_holds_no_matched_text() -> None:
    guard = build_guardrails(default_guardrails())["pii-anonymize"]
    v = guard.check("key sk-proj-4fKq9LmZ2pX8vN4rT7wB1yC6 and a@b.io", "INPUT")
    summary = v.summary()
    assert summary == {
        "action": "GUARDRAIL_INTERVENED", "blocked": False, "guardrails": ["pii-anonymize"],
        "findings": {"sensitive_information:API_KEY": 1, "sensitive_information:EMAIL": 1},
    }  # fmt: skip
    assert "sk-proj" not in repr(summary) and "a@b.io" not in repr(summary)


def test_config_refuses_bad_regexes_and_clashing_names() -> None:
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        RegexConfig(name="x", pattern="(unclosed")
    with pytest.raises(ValidationError, match="empty string"):
        RegexConfig(name="x", pattern="a*")
    with pytest.raises(ValidationError, match="built-in type"):
        PiiConfig(regexes=[RegexConfig(name="EMAIL", pattern="x@y")])
    with pytest.raises(ValidationError):
        PiiConfig(entities=["PASSPORT"])  # type: ignore[list-item]
