"""Find likely patient identifiers (PHI) in text, and show them only masked.

Kinds: e-mail addresses, phone numbers, US social security numbers, medical record numbers, dates of
birth, street addresses, IP addresses, and names introduced by a title ("Dr. Smith") or by "patient".
The patterns favour precision on medical prose: dosages ("5 mg"), vitals ("120/80"), ranges and bare years
never match; record numbers and birth dates are only recognised after a keyword ("MRN", "DOB", "born on").
Nothing here logs or prints: callers get spans and masked snippets, never the identifier itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PHI_KINDS", "PhiFinding", "scan_text", "mask_identifier", "masked_snippet"]

PHI_KINDS = {
    "email": "e-mail address",
    "phone": "phone number",
    "ssn": "US social security number",
    "mrn": "medical record number",
    "dob": "date of birth",
    "address": "street address",
    "ip": "IP address",
    "name": "person's name",
}

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = (rf"(?i:\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:\d{{4}}|\d{{2}})|\d{{4}}-\d{{1,2}}-\d{{1,2}}"
         rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH},?\s+\d{{4}})(?!\d)")
_NAME_WORD = r"[A-Z][a-z]+(?:['\u2019-][A-Za-z]+)?"
_NAME = rf"(?:[A-Z]\.\s?)?{_NAME_WORD}(?:[ \t]+(?:[A-Z]\.\s?)?{_NAME_WORD})?"
_STREET_TYPES = ("Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
                 "Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Trail")
_HEX = r"[0-9A-Fa-f]{1,4}"


@dataclass(frozen=True)
class _Pattern:
    """One identifier pattern. For speed it is only run when one of its `needles` occurs (in the lowercased
    text, or in the text itself when `case_sensitive`), and patterns start with a literal or a digit so the
    regex engine can skip ahead; what a leading look-behind would check is done by `_plausible` instead."""

    kind: str
    regex: re.Pattern[str]
    group: int = 0
    needles: tuple[str, ...] | None = None
    case_sensitive: bool = False


def _p(kind: str, pattern: str, group: int = 0, needles: tuple[str, ...] | None = None, case_sensitive=False):
    return _Pattern(kind, re.compile(pattern), group, needles, case_sensitive)


_PATTERNS: tuple[_Pattern, ...] = (
    _p("email", r"[A-Za-z0-9][\w.%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", needles=("@",)),
    _p("ssn", r"\d{3}-\d{2}-\d{4}(?![\w-])", needles=("-",)),
    _p("ssn", r"(?i:(?:\bssn|\bss#|\bsocial security(?:\s+(?:number|no\.?|#))?)\s*(?:is|was)?\s*[:#]?\s*)"
              r"(\d{3}[- ]?\d{2}[- ]?\d{4})(?!\d)", 1, ("ss", "social")),
    _p("phone", r"(?:1[-.])?\d{3}([-.])\d{3}\1\d{4}(?![\w/-]|\.\d)", needles=("-", ".")),
    _p("phone", r"(?:\+1[ .-]?)?\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}(?![\w/-]|\.\d)", needles=("(",)),
    _p("phone", r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w/-]|\.\d)", needles=("+",)),
    _p("phone", r"(?i:(?:\bphone|\btel|\btelephone|\bmobile|\bcell|\bfax|\bcall(?:\s+me)?(?:\s+(?:at|on))?)\b"
                r"(?:\s*(?:number|no\.?|#))?\s*(?:is)?\s*[:#]?\s*)(\+?\d[\d ().-]{5,18}\d)(?![\w/])", 1,
       ("phone", "tel", "mobile", "cell", "fax", "call")),
    _p("mrn", r"(?i:(?:\bmrn|\bmedical record(?:\s+(?:number|no\.?|#))?|\b(?:record|chart|hospital)\s+"
              r"(?:number|no\.?|#)|\bpatient\s+(?:id|number|no\.?|#))\s*(?:is|was)?\s*[:#]?\s*)"
              r"([A-Z]{0,4}-?\d[\dA-Z-]{3,})(?![\w-])", 1, ("mrn", "record", "chart", "hospital", "patient")),
    _p("dob", rf"(?i:(?:\bdob|\bd\.o\.b\.?|\bdate\s+of\s+birth|\bbirth\s?date|\bborn(?:\s+on)?)\s*(?:is|was)?\s*"
              rf"[:,-]?\s*)({_DATE})", 1, ("dob", "d.o.b", "birth", "born")),
    _p("address", rf"\d{{1,6}}[A-Za-z]?\s+(?:[NSEW]\.?\s+)?(?:{_NAME_WORD}|\d{{1,3}}(?:st|nd|rd|th))"
                  rf"(?:\s+{_NAME_WORD}){{0,3}}\s+(?:{_STREET_TYPES})\b\.?"
                  r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit)\.?\s*#?\s*\w+)?",
       needles=tuple(_STREET_TYPES.split("|")), case_sensitive=True),
    _p("address", r"(?i:\bP\.?\s?O\.?\s+Box\s+\d+\b)", needles=("box",)),
    _p("ip", r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\w|\.\d)", needles=(".",)),
    _p("ip", rf"[0-9A-Fa-f]{{1,4}}:(?:{_HEX}:){{6}}{_HEX}(?![\w:])", needles=(":",)),
    _p("ip", rf"[0-9A-Fa-f]{{1,4}}:(?=[0-9A-Fa-f:]*::)(?:{_HEX}:){{0,5}}(?::{_HEX}){{1,6}}(?![\w:])", needles=("::",)),
    _p("name", rf"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Doctor|Nurse)\.?[ \t]+({_NAME})", 1,
       ("Mr", "Ms", "Miss", "Mx", "Dr", "Prof", "Doctor", "Nurse"), case_sensitive=True),
    _p("name", rf"(?i:(?:\bpatient|\bclient|\bresident)\b(?:\s+(?:named|called|whose\s+name\s+is)\s+|\s*:\s*|"
               rf"[ \t]+)|\bname\s*(?:is|:)\s*)({_NAME})", 1, ("patient", "client", "resident", "name")),
)

# Capitalised words that follow "patient" or a title without being a name ("Patient Health Questionnaire").
_NOT_NAMES = frozenset("""
    A An The This That These Those It He She They We You I If When Then And But Or In On At For With As After Before
    During Ask Tell Call Who What Which Where Why How Is Are Was Were Be Do Does Not No Yes All Any Some Each
    Health Care Education Safety Questionnaire Portal Protection Assessment Information Rights Privacy Advocate
    Advocacy Experience Reported Outcome Outcomes Centered Centred Controlled Analgesia Data Record Records
    Satisfaction History Consent Intake Monitoring Handout Guide Instructions Resources Support Services Zero
    Practitioner Practitioners Assistant Assistants Specialist Navigator Note Notes Level Levels Summary Medicine
""".split())
_DIGIT_KINDS = frozenset({"ssn", "phone", "mrn", "dob", "address", "ip"})
_HAS_DIGIT = re.compile(r"\d")
# Characters that may not come just before a bare (keyword-less) identifier: "x555-123-4567" or
# "1.192.168.0.1" are parts of something longer.
_NOT_BEFORE = {"ssn": "-", "phone": "/.+-", "ip": ".:", "address": ""}


@dataclass(frozen=True)
class PhiFinding:
    """A likely identifier at text[start:end] (the identifier only, without its keyword)."""

    kind: str
    start: int
    end: int

    @property
    def label(self) -> str:
        return PHI_KINDS[self.kind]


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def _plausible(kind: str, text: str, start: int, end: int, bare: bool) -> bool:
    found = text[start:end]
    if bare and start > 0 and kind in _NOT_BEFORE:
        before = text[start - 1]
        if before.isalnum() or before == "_" or before in _NOT_BEFORE[kind]:
            return False
    if kind == "phone":
        return 7 <= _digits(found) <= 15
    if kind == "ssn" and bare:  # never issued: area 000, 666 or 9xx, group 00, serial 0000
        return not (found[:3] in ("000", "666") or found[0] == "9" or found[4:6] == "00" or found[7:] == "0000")
    if kind == "ip" and "." in found:
        return all(int(octet) <= 255 for octet in found.split("."))
    if kind == "mrn":
        return _digits(found) >= 3
    if kind == "name":
        return found.split()[0].rstrip(".") not in _NOT_NAMES
    return True


def scan_text(text: str) -> list[PhiFinding]:
    """Every likely identifier in `text`, in order, without overlaps (the longer of two overlapping wins).

    >>> [(f.kind, "contact jane.doe@example.org"[f.start:f.end]) for f in scan_text("contact jane.doe@example.org")]
    [('email', 'jane.doe@example.org')]
    >>> scan_text("Take 5 mg twice daily; BP 120/80 in 2019.")
    []
    """
    has_digit = _HAS_DIGIT.search(text) is not None
    lowered = text.lower()
    found: list[PhiFinding] = []
    for pattern in _PATTERNS:
        if pattern.kind in _DIGIT_KINDS and not has_digit:
            continue
        haystack = text if pattern.case_sensitive else lowered
        if pattern.needles is not None and not any(needle in haystack for needle in pattern.needles):
            continue
        for match in pattern.regex.finditer(text):
            start, end = match.span(pattern.group)
            if _plausible(pattern.kind, text, start, end, bare=pattern.group == 0):
                found.append(PhiFinding(pattern.kind, start, end))
    found.sort(key=lambda f: (f.start, f.start - f.end))
    kept: list[PhiFinding] = []
    for finding in found:
        if kept and finding.start < kept[-1].end:
            continue
        kept.append(finding)
    return kept


def mask_identifier(identifier: str) -> str:
    """Keep the first character and the punctuation, hide every other letter and digit.

    >>> mask_identifier("555-123-4567"), mask_identifier("jane@ex.org")
    ('5**-***-****', 'j***@**.***')
    """
    return identifier[:1] + "".join("*" if ch.isalnum() else ch for ch in identifier[1:])


def masked_snippet(text: str, findings: list[PhiFinding], finding: PhiFinding, width: int = 24) -> str:
    """Up to `width` characters around `finding`, with every identifier in view masked; one line."""
    start, end = max(0, finding.start - width), min(len(text), finding.end + width)
    for other in findings:  # never cut an identifier in half at the window's edge
        if other.start < start < other.end:
            start = other.start
        if other.start < end < other.end:
            end = other.end
    pieces, position = [], start
    for other in findings:
        if other.end <= start or other.start >= end:
            continue
        pieces.append(text[position:other.start])
        pieces.append(mask_identifier(text[other.start:other.end]))
        position = other.end
    pieces.append(text[position:end])
    snippet = " ".join("".join(pieces).split())
    return ("..." if start > 0 else "") + snippet + ("..." if end < len(text) else "")
