"""Synthetic chat data for the GPU benchmark: medical-sounding Q&A with lognormal answer lengths, rendered by
lorakit's own render_conversation (system prompt + ChatML template of the fixture tokenizer)."""

from __future__ import annotations

import math
import random

from lorakit.config import DEFAULT_SYSTEM_PROMPT
from lorakit.data.conversation import Conversation, Message
from lorakit.data.render import TokenizedExample, render_conversation

WORDS = (
    "the patient blood pressure heart rate kidney liver lung brain nerve muscle bone skin infection fever pain "
    "chronic acute symptom sign diagnosis treatment therapy dose risk factor common rare early late severe mild "
    "because however usually often sometimes may can should cause lead result increase decrease normal range "
    "test result imaging scan exam history family lifestyle diet exercise sleep stress weight sugar insulin "
    "glucose cholesterol artery vein clot stroke attack failure disease condition disorder syndrome cell tissue "
    "organ system immune response inflammation antibody vaccine virus bacteria antibiotic resistance culture "
    "clinician nurse pharmacist doctor hospital clinic emergency care follow monitor measure record review "
    "and or with without during after before within between among about into through over under"
).split()


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def _text(rng: random.Random, words: int) -> str:
    sentences, left = [], words
    while left > 0:
        size = min(left, rng.randint(6, 18))
        sentences.append(_sentence(rng, size))
        left -= size
    return " ".join(sentences)


def synthetic_conversations(count: int, *, seed: int, answer_median_words: float = 110, sigma: float = 0.8,
                            min_answer_words: int = 0) -> list[Conversation]:
    """`count` single-turn conversations; answer lengths lognormal(log(median), sigma) words."""
    rng = random.Random(seed)
    made = []
    for index in range(count):
        answer_words = max(min_answer_words, 3, int(rng.lognormvariate(math.log(answer_median_words), sigma)))
        question = _text(rng, rng.randint(8, 40)).rstrip(".") + "?"
        made.append(Conversation((Message("user", question), Message("assistant", _text(rng, answer_words))),
                                 source="synthetic", line=index + 1))
    return made


def rendered_examples(tokenizer, count: int, max_length: int, *, seed: int, **lengths) -> list[TokenizedExample]:
    return [render_conversation(c, tokenizer, DEFAULT_SYSTEM_PROMPT, max_length)
            for c in synthetic_conversations(count, seed=seed, **lengths)]
