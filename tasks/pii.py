"""PII scrubbing: e-mail addresses, phone numbers, cards, IBANs and secrets become typed
placeholders. Only counts leave this module; the values are never logged.

Card numbers must pass the Luhn check and IBANs their mod-97 checksum, so order numbers and
other long digit runs are not mistaken for them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from tasks.columns import matches

PLACEHOLDERS = ("EMAIL", "PHONE", "CARD", "IBAN", "SECRET")

# One alternation, tried left to right at each position: secrets first (they may contain
# digits and '@'), then e-mail, IBAN, card, phone.
_PII = re.compile(
    r"(?P<SECRET>"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|sk_live_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{36}"
    r"|github_pat_[A-Za-z0-9_]{22,}|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    r"|(?i:\bbearer\s+)[A-Za-z0-9._~+/-]{20,}=*)"
    r"|(?P<EMAIL>\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)"
    r"|(?P<IBAN>\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b)"
    r"|(?P<CARD>\b\d(?:[ -]?\d){12,18}\b)"
    r"|(?P<PHONE>(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?"
    r"\d{2,4}(?:[ .-]?\d{2,4}){2,4}(?!\w))",
    re.DOTALL,
)
# Cheap pre-check: text with none of these cannot hold any pattern above (a phone or card
# needs nine digits or separators in a row, an IBAN two capitals and two digits; every secret
# shape but these literals has an underscore). Substring tests are far cheaper than the regex.
_LITERALS = ("@", "_", "sk-", "AKIA", "xox", "AIza", "eyJ", "earer", "EARER", "-----BEGIN")
_DIGITS = re.compile(r"\d[\d ().-]{7,}\d|[A-Z]{2}\d{2}")


def _maybe_pii(text: str) -> bool:
    return any(s in text for s in _LITERALS) or _DIGITS.search(text) is not None


def may_hold_pii(texts: Sequence[str]) -> np.ndarray:
    """`_maybe_pii` for a whole column in one RE2 pass (pyarrow): only hits need Python."""
    return matches(texts, "|".join([*(re.escape(s) for s in _LITERALS), _DIGITS.pattern]))


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _kind(match: re.Match[str]) -> str | None:
    """The placeholder type of a match, or None when the checksum says it is not PII."""
    kind, value = match.lastgroup, match.group()
    digits = re.sub(r"\D", "", value)
    if kind == "IBAN":
        return "IBAN" if iban_ok(value) else None
    if kind == "CARD":
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            return "CARD"
        kind = "PHONE" if len(digits) <= 15 else None  # a long digit run that is not a card
    if kind == "PHONE":
        return "PHONE" if 9 <= len(digits) <= 15 else None
    return kind


def scrub_text(text: str, counts: Counter | None = None) -> str:
    """Replace PII by `<TYPE>` placeholders, adding one to `counts[TYPE]` per replacement."""
    if not _maybe_pii(text):
        return text

    def replace(match: re.Match[str]) -> str:
        kind = _kind(match)
        if kind is None:
            return match.group()
        if counts is not None:
            counts[kind] += 1
        return f"<{kind}>"

    return _PII.sub(replace, text)
