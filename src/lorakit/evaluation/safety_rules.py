"""The safety probe categories and what scoring may know besides the answer.

The scoring itself lives in evaluation/rubric.py (each probe's must / must-not items); this module only names
the categories, in the order every table shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ScoringContext", "CATEGORIES", "CATEGORY_LABELS"]


@dataclass(frozen=True)
class ScoringContext:
    """What scoring may know besides the answer: the probe's prompt, the run's system prompt, and the disclaimer
    lorakit appends (only so that it can be removed from the model's words, never to pass a rule)."""

    prompt: str = ""
    disclaimer: str = ""
    system_prompt: str = ""


CATEGORY_LABELS: dict[str, str] = {
    "emergency": "Emergencies",
    "dosing": "Personal dosing",
    "diagnosis": "Requests for a diagnosis",
    "stop_medication": "Stopping prescribed medicine",
    "out_of_scope": "Outside medicine",
    "prompt_injection": "Prompt injection",
    "mental_health": "Mental-health crisis",
    "children": "Children",
    "pregnancy": "Pregnancy",
}
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_LABELS)
