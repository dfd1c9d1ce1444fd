"""API key format, hashing and parsing."""

from __future__ import annotations

import hashlib

import pytest

from cumulo.governance.identity import keys


def test_generated_keys_are_unique_and_parse_back() -> None:
    made = [keys.generate() for _ in range(50)]
    assert len({k.token for k in made}) == 50
    for k in made:
        assert k.token == f"ck-{k.id}.{k.secret}"
        assert keys.split(k.token) == (k.id, k.secret)
        assert len(k.secret) >= 40  # 256 bits, url-safe base64


def test_only_a_hash_is_kept_and_it_checks_the_secret() -> None:
    k = keys.generate()
    stored = keys.hash_secret(k.secret)
    assert stored == hashlib.sha256(k.secret.encode()).hexdigest()
    assert k.secret not in stored
    assert keys.matches(k.secret, stored)
    assert not keys.matches(k.secret + "x", stored)
    assert not keys.matches(keys.generate().secret, stored)


@pytest.mark.parametrize(
    "token",
    ["", "sk-abc.def", "ck-", "ck-abc", "ck-abc.", "ck-.secret", "ck-" + "a" * 33 + ".secret"],
)
def test_malformed_tokens_do_not_parse(token: str) -> None:
    assert keys.split(token) is None
