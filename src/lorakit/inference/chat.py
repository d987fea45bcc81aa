"""A multi-turn chat session over a loaded run: keeps the history, streams answers."""

from __future__ import annotations

from collections.abc import Iterator

from lorakit.data.records import Message
from lorakit.inference.generate import GenerationSettings, LoadedRun, stream_answer

__all__ = ["ChatSession"]


class ChatSession:
    """History of (user, assistant) turns; the oldest turns are dropped when the prompt would exceed max_length."""

    def __init__(self, run: LoadedRun, settings: GenerationSettings):
        self.run = run
        self.settings = settings
        self.history: list[Message] = []

    def _prompt(self, question: str) -> tuple[Message, ...]:
        from lorakit.data.render import render_prompt_ids

        turns = self.history + [Message("user", question)]
        budget = self.run.config.model.max_length
        while len(turns) > 1 and len(render_prompt_ids(tuple(turns), self.run.tokenizer, self.run.system_prompt)) > budget:
            turns = turns[2:]
        return tuple(turns)

    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer; the turn is added to the history once the answer is complete."""
        pieces: list[str] = []
        for piece in stream_answer(self.run, self._prompt(question), self.settings):
            pieces.append(piece)
            yield piece
        self.history += [Message("user", question), Message("assistant", "".join(pieces).strip())]
