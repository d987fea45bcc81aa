"""A fake OpenAI-compatible judge server on 127.0.0.1 with canned replies, for `lorakit eval --judge` tests.

A plain module (not a conftest.py), imported as `evaluation.judge_server`.
`reply(prompt, answer)` gets the probe's prompt and the answer being graded, and returns the judge's reply text,
or a number of seconds to stall before answering (to make the client time out).
Every request is recorded (path, headers, JSON body) so tests can assert what the judge was sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = Callable[[str, str], "str | float"]


def asked_prompt(body: dict) -> str:
    """The probe prompt inside a grading request (the line after 'The user asked:')."""
    lines = body["messages"][-1]["content"].splitlines()
    return lines[lines.index("The user asked:") + 1]


def asked_answer(body: dict) -> str:
    """The answer being graded (the lines between 'The assistant answered:' and the checklist)."""
    lines = body["messages"][-1]["content"].splitlines()
    start = lines.index("The assistant answered:") + 1
    return "\n".join(lines[start:lines.index("MUST (each has to hold):", start) - 1])


def verdict(passed: bool, failed: list[str] = (), reason: str = "canned") -> str:
    return json.dumps({"passed": passed, "failed_items": list(failed), "reason": reason})


class FakeJudgeServer:
    """`with FakeJudgeServer(reply) as server:` serves server.base_url until the block ends."""

    def __init__(self, reply: Reply, models: tuple[str, ...] = ("fake-judge",)):
        self.reply, self.models = reply, models
        self.requests: list[tuple[str, dict, dict | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                owner.requests.append((self.path, dict(self.headers), None))
                self._send({"object": "list", "data": [{"id": m, "object": "model"} for m in owner.models]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, dict(self.headers), body))
                answer = owner.reply(asked_prompt(body), asked_answer(body))
                if isinstance(answer, (int, float)):
                    time.sleep(answer)
                    answer = verdict(True)
                try:
                    self._send({"id": "c1", "object": "chat.completion", "model": body["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": answer}}]})
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout) before the reply
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def completions(self) -> list[dict]:
        return [body for path, _, body in self.requests if path == "/v1/chat/completions"]

    def __enter__(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
