"""A decoding step's events, handed to the server's event loop with one wake-up for every request.

Why (issue 23, bench/results/serve_batching/step_profile_h100_session11): the generation thread and uvicorn's
event loop share the GIL, and each `call_soon_threadsafe` wakes the loop (a write to its self-pipe, a turn of the
loop, a task switch). One wake-up per row per token cost the http path ~1.9 ms per added row per step on an H100.
The worker now collects a step's events in an `Outbox` and flushes it once: the events bound for one event loop
go over in one call, which puts each on its own request's asyncio.Queue in the order they were emitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LoopInbox", "Outbox"]


@dataclass(frozen=True, eq=False)
class LoopInbox:
    """A request's queue on an asyncio event loop; as a job's `emit` (from any thread) it delivers one event."""

    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue

    def __call__(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def _put_all(deliveries: list[tuple[asyncio.Queue, Any]]) -> None:
    for events, event in deliveries:
        events.put_nowait(event)


class Outbox:
    """Events held back until `flush` (the worker thread's own: not thread-safe).

    `add(emit, event, on_closed)`: `emit` is a job's callable; when it is a LoopInbox the event joins its loop's
    batch, otherwise it is called at flush, in order. `on_closed` runs when delivery fails because the loop has
    closed (server shutdown: nobody listens any more)."""

    def __init__(self) -> None:
        self._held: list[tuple[Callable[[Any], None], Any, Callable[[], None]]] = []

    def add(self, emit: Callable[[Any], None], event: Any, on_closed: Callable[[], None]) -> None:
        self._held.append((emit, event, on_closed))

    def flush(self) -> None:
        held, self._held = self._held, []
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for emit, event, on_closed in held:
            if isinstance(emit, LoopInbox):
                by_loop.setdefault(emit.loop, []).append((emit.events, event, on_closed))
            else:
                _deliver(lambda emit=emit, event=event: emit(event), [on_closed])
        for loop, items in by_loop.items():
            deliveries = [(events, event) for events, event, _ in items]
            _deliver(lambda loop=loop, d=deliveries: loop.call_soon_threadsafe(_put_all, d), [c for *_, c in items])


def _deliver(send: Callable[[], None], on_closed: list[Callable[[], None]]) -> None:
    try:
        send()
    except RuntimeError:  # the server's event loop closed (shutdown)
        for closed in on_closed:
            closed()
