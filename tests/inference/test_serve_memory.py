"""Issue 22, row 11: the memory of a `lorakit serve` process stays flat under abuse. The real command runs in its
own process (so that only the server's memory is measured, not the clients'); after warm-up rounds, more rounds
of concurrent requests on a small queue, clients killed mid-stream, invalid JSON, 2 MiB bodies and a huge
max_tokens leave its resident memory (RSS) where it was."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from conftest import free_port
from evaluation.eval_runs import trained_tiny_run
from inference.serve_harness import open_stream, read_until

REPO = Path(__file__).resolve().parents[2]
QUESTION = [{"role": "user", "content": "What is anemia?"}]
WARM_UP_ROUNDS, MEASURED_ROUNDS = 1, 3
# Measured on the tiny run (RSS ~463 MiB), over the 3 rounds after one warm-up round: +0.05, +0.18 and +0.53 MiB
# (the first rounds settle the allocator and the batch's tensors; 12 rounds in a row added +0.8 MiB in all). 3 MiB
# is over 5 times the worst of those, and a leak of over 1 MiB a round (~80 KB for each of its 13 requests) exceeds
# it: keeping each decoding step's logits (192 KB a row) grew the server by 6.2 MiB over the 3 rounds, and this
# test failed.
RSS_GROWTH_BOUND_MIB = 3.0


def _post(port: int, body: bytes | dict) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    connection.request("POST", "/v1/chat/completions", body=payload, headers={"Content-Type": "application/json"})
    status = connection.getresponse().status
    connection.close()
    return status


def _health(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/health")
    health = json.loads(connection.getresponse().read())
    connection.close()
    return health


def _wait_idle(port: int, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (health := _health(port))["generating"] or health["waiting"]:
        assert time.monotonic() < deadline, f"server still busy after {timeout_s} s: {health}"
        time.sleep(0.05)
    return health


def _abuse(port: int) -> None:
    """One round: 2 clients killed mid-stream, 8 clients at once on a batch of 2 and a queue of 2, then invalid
    JSON, a 2 MiB body and a max_tokens of a billion; each answered as it must be."""
    for _ in range(2):
        sock = open_stream(port, {"messages": QUESTION, "temperature": 1.0, "seed": 1, "max_tokens": 1500})
        read_until(sock, b'"delta": {"content": ', timeout_s=30)  # generating; then the client is gone
        sock.close()
    statuses: list[int] = []
    start = threading.Barrier(8)

    def ask(seed: int) -> None:
        start.wait(timeout=30)
        statuses.append(_post(port, {"messages": QUESTION, "temperature": 1.0, "seed": seed, "max_tokens": 4}))

    clients = [threading.Thread(target=ask, args=(seed,)) for seed in range(8)]
    for client in clients:
        client.start()
    bad = [_post(port, b'{"messages": ['),
           _post(port, json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode()),
           _post(port, {"messages": QUESTION, "max_tokens": 10**9})]
    for client in clients:
        client.join(60)
    assert bad == [400, 413, 400]
    # Answered, or told to retry (how many of each depends on how fast the 8 arrive: test_serve.py counts them).
    assert len(statuses) == 8 and set(statuses) <= {200, 503} and 200 in statuses, statuses
    health = _wait_idle(port)
    assert set(health["finished"]) <= {"length", "stop", "cancelled"}, health  # no generation failed


def test_serve_memory_stays_flat_under_abuse(tiny_llama_dir, tmp_path_factory):
    run_dir = trained_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("serve-memory"))
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LORAKIT_API_KEY", None)
    server = subprocess.Popen([sys.executable, "-m", "lorakit", "serve", str(run_dir), "--port", str(port),
                               "--batch-size", "2", "--queue-size", "2"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                _health(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "lorakit serve did not come up in 90 s"
                time.sleep(0.1)
        process = psutil.Process(server.pid)
        for _ in range(WARM_UP_ROUNDS):
            _abuse(port)
        rss_mib = [process.memory_info().rss / 2**20]
        for _ in range(MEASURED_ROUNDS):
            _abuse(port)
            rss_mib.append(process.memory_info().rss / 2**20)
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0, output
    assert "Traceback" not in output, output
    assert rss_mib[-1] - rss_mib[0] < RSS_GROWTH_BOUND_MIB, f"server RSS after each round (MiB): {rss_mib}"
