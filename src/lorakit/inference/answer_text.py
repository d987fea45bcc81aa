"""Shape streamed answer text: cut at the request's stop strings and trim outer whitespace, piece by piece.

A streamed answer must add up to exactly the non-streamed one, so text that might be the start of a stop
string, or trailing whitespace, is held back until the next piece shows what it is (as vLLM does for stop).
"""

from __future__ import annotations

__all__ = ["AnswerText"]


class AnswerText:
    """Feed generated pieces; `feed` returns the text safe to send now, `finish` the rest.

    The pieces sent add up to the answer up to the first stop string (excluded), stripped at both ends.

    >>> text = AnswerText(stop=("END",))
    >>> [text.feed(p) for p in ["  Rest", " and", " fluids.", " E", "ND more"]]
    ['Rest', ' and', ' fluids.', '', '']
    >>> text.stopped, text.finish(), text.sent
    (True, '', 'Rest and fluids.')
    >>> text = AnswerText(stop=())
    >>> text.feed("Yes. \\n"), text.finish(), text.sent
    ('Yes.', '', 'Yes.')
    """

    def __init__(self, stop: tuple[str, ...]):
        self.stop = tuple(s for s in stop if s)
        self.stopped = False
        self.sent = ""
        self._pending = ""

    def feed(self, piece: str) -> str:
        """Text to send now; once a stop string appeared, nothing more."""
        if self.stopped:
            return ""
        self._pending += piece
        if not self.sent:
            self._pending = self._pending.lstrip()
        cut = min((i for i in (self._pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._send(self._pending[:cut].rstrip(), rest="")
        # Hold back what may begin a stop string, and the whitespace before it (it may end the answer).
        split = len(self._pending[: len(self._pending) - self._stop_prefix_length()].rstrip())
        return self._send(self._pending[:split], rest=self._pending[split:])

    def finish(self) -> str:
        """The held-back text once generation ended without a stop string (trailing whitespace dropped)."""
        return "" if self.stopped else self._send(self._pending.rstrip(), rest="")

    def _stop_prefix_length(self) -> int:
        """Length of the longest end of the pending text that begins some stop string."""
        for length in range(min(len(self._pending), max((len(s) for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(self._pending[-length:]) for s in self.stop):
                return length
        return 0

    def _send(self, text: str, rest: str) -> str:
        self._pending = rest
        self.sent += text
        return text
