from collections import Counter

import pytest

from tasks.pii import iban_ok, luhn_ok, scrub_text


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB83 WEST 1234 5698 7654 32")


@pytest.mark.parametrize(
    "text",
    [
        "Horizon costs $52 per month with 10 GB.",
        "Order 12345678 shipped on 2026-11-29 at 10:30.",
        "Version 1.2.3 of the app; 1,299.99 total; call 911.",
        "Nimbus Mobile has no Nebula plan.",
    ],
)
def test_ordinary_numbers_are_left_alone(text):
    counts = Counter()
    assert scrub_text(text, counts) == text and not counts


def test_secret_shapes():
    counts = Counter()
    text = "AKIAIOSFODNN7EXAMPLE, ghp_" + "x" * 36 + ", Authorization: Bearer " + "t" * 30
    assert scrub_text(text, counts) == "<SECRET>, <SECRET>, Authorization: <SECRET>"
    assert counts == {"SECRET": 3}
