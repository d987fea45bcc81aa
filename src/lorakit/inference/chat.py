"""A multi-turn chat session over a loaded run: keeps the history, streams answers."""

from __future__ import annotations

from collections.abc import Iterator

from lorakit.data.records import Message
from lorakit.inference.decode import Decoded
from lorakit.inference.generate import GenerationSettings, LoadedRun, stream_answer

__all__ = ["ChatSession"]


class ChatSession:
    """History of (user, assistant) turns; the oldest turns are dropped when the prompt would exceed max_length."""

    def __init__(self, run: LoadedRun, settings: GenerationSettings):
        self.run = run
        self.settings = settings
        self.history: list[Message] = []
        self.last_truncated = False

    def _prompt(self, question: str) -> tuple[Message, ...]:
        from lorakit.data.render import render_prompt_ids

        turns = self.history + [Message("user", question)]
        budget = self.run.config.model.max_length
        while len(turns) > 1 and len(render_prompt_ids(tuple(turns), self.run.tokenizer, self.run.system_prompt)) > budget:
            turns = turns[2:]
        return tuple(turns)

    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer; the turn is added to the history once the answer is complete.

        Closing the iterator early (Ctrl-C while the answer prints) stops the generation thread before
        `close()` returns, so it never runs on into the next question; the unfinished turn is dropped.
        `last_truncated` then says whether the last complete answer was cut at max_new_tokens.
        """
        pieces: list[str] = []
        ended: list[Decoded] = []
        stream = stream_answer(self.run, self._prompt(question), self.settings, on_end=ended.append)
        try:
            for piece in stream:
                pieces.append(piece)
                yield piece
        finally:
            stream.close()
        self.last_truncated = ended[0].truncated
        self.history += [Message("user", question), Message("assistant", "".join(pieces).strip())]
