"""Privacy scan: each identifier kind is found, medical numbers are not, and nothing is shown unmasked."""

from __future__ import annotations

import pytest

from lorakit.data.phi_scan import mask_identifier, masked_snippet, scan_text

POSITIVE = [
    ("email", "Write to john.smith@example.com today", "john.smith@example.com"),
    ("email", "contact: a_b+tag@mail.hospital.org.", "a_b+tag@mail.hospital.org"),
    ("phone", "Call 555-123-4567 now", "555-123-4567"),
    ("phone", "Phone: (555) 123-4567", "(555) 123-4567"),
    ("phone", "reach her on +44 20 7946 0958", "+44 20 7946 0958"),
    ("phone", "tel 5551234567", "5551234567"),
    ("phone", "call me at 1-800-555-0199", "1-800-555-0199"),
    ("ssn", "SSN 123-45-6789", "123-45-6789"),
    ("ssn", "her social security number is 123 45 6789", "123 45 6789"),
    ("mrn", "MRN: 00123456", "00123456"),
    ("mrn", "medical record number 4456789", "4456789"),
    ("mrn", "Chart #A12345", "A12345"),
    ("dob", "DOB: 03/14/1962", "03/14/1962"),
    ("dob", "date of birth 1962-03-14", "1962-03-14"),
    ("dob", "born on March 14, 1962", "March 14, 1962"),
    ("dob", "born 14 March 1962", "14 March 1962"),
    ("address", "lives at 123 Main Street", "123 Main Street"),
    ("address", "moved to 42 Elm St., Apt 4", "42 Elm St., Apt 4"),
    ("address", "send it to PO Box 1234", "PO Box 1234"),
    ("ip", "server 192.168.1.20 logged", "192.168.1.20"),
    ("ip", "from 2001:db8::8a2e:370:7334", "2001:db8::8a2e:370:7334"),
    ("ip", "host fe80:0:0:0:202:b3ff:fe1e:8329 up", "fe80:0:0:0:202:b3ff:fe1e:8329"),
    ("name", "Dr. Smith said", "Smith"),
    ("name", "Mrs Jane Doe came in", "Jane Doe"),
    ("name", "the patient John Smith was seen", "John Smith"),
    ("name", "Patient: Jane Doe", "Jane Doe"),
    ("name", "a patient named Bob reported", "Bob"),
    ("name", "Name: Alice Wong", "Alice Wong"),
]

NEGATIVE = [
    # dosages, vitals, lab values, years, ranges, codes: the numbers of medical prose
    "Take 5 mg twice daily", "120 mg 3 times daily", "doses 250-500 mg", "Vitamin D 1000 IU", "0.5 mg/kg",
    "BP 120/80 mmHg", "Blood pressure 140/90", "heart rate 60-100 bpm", "temperature 38.5 C", "HbA1c 6.5%",
    "normal range 3.5-5.0 mmol/L", "WBC 4.5-11.0 x 10^9/L", "2 tablets every 4-6 hours", "ratio 1:2:3",
    "In 2019 guidelines changed", "between 1990 and 2000", "born in 1990", "at 10:30:45", "version 1.2.3",
    "ICD-10 code E11.9", "a 10-year-old", "patients over 65 years", "call 911 now", "dial 988",
    "cell count 4500", "the record number of cases in 2020", "Stage 3 Drive", "v1.2.3.4", "300.1.2.3",
    "x555-123-4567", "999-12-3456", "000-12-3456",
    # "patient" and titles followed by ordinary words
    "the patient should rest", "A patient with diabetes", "Patient Health Questionnaire (PHQ-9)",
    "The Patient Protection and Affordable Care Act", "Dr. visits are covered", "When the patient arrives, The nurse",
    "Nurse Practitioner notes",
]


@pytest.mark.parametrize(("kind", "text", "identifier"), POSITIVE)
def test_each_identifier_kind_is_found_exactly(kind, text, identifier):
    assert [(f.kind, text[f.start:f.end]) for f in scan_text(text)] == [(kind, identifier)]


@pytest.mark.parametrize("text", NEGATIVE)
def test_no_false_alarm_on_medical_numbers_and_ordinary_words(text):
    assert scan_text(text) == []


def test_every_kind_has_positive_cases():
    from lorakit.data.phi_scan import PHI_KINDS

    assert {kind for kind, _, _ in POSITIVE} == set(PHI_KINDS)


def test_mask_keeps_first_character_and_punctuation_only():
    assert mask_identifier("123-45-6789") == "1**-**-****"
    assert mask_identifier("John Smith") == "J*** *****"


def test_snippet_masks_every_identifier_in_view_and_never_shows_one_in_full():
    text = "Patient: Jane Doe, DOB: 03/14/1962, phone 555-123-4567, lives at 123 Main Street."
    findings = scan_text(text)
    assert [f.kind for f in findings] == ["name", "dob", "phone", "address"]
    for finding in findings:
        snippet = masked_snippet(text, findings, finding, width=80)
        for other in findings:
            assert text[other.start:other.end] not in snippet
    snippet = masked_snippet(text, findings, findings[1], width=10)
    assert snippet == "...J*** ***, DOB: 0*/**/****, phone 5**-***-****..."
