"""Issue 22, fault matrix row 5: out of GPU memory in serve's batched generation answers the requests of that
batch 503 with Retry-After, naming what to lower (was a 500 with a traceback in the log), frees the batch, and the
server goes on answering. (Out of memory in eval's generation: tests/cli/test_out_of_memory_messages.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from evaluation.eval_runs import trained_tiny_run
from inference.serve_harness import ServerThread
from lorakit.config import ServeConfig
from lorakit.inference.generate import load_run
from lorakit.inference.running_batch import RunningBatch
from lorakit.inference.serve import create_app

BODY = {"model": "x", "messages": [{"role": "user", "content": "What is anemia?"}], "max_tokens": 3}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_out_of_memory_in_batched_generation_is_a_503_and_the_server_goes_on(tiny_llama_dir, tmp_path_factory,
                                                                             monkeypatch, caplog, stream):
    run = load_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("serve-oom")))
    step, failures = RunningBatch.step, []

    def step_once_out_of_memory(self):
        if not failures:
            failures.append(len(self.keys))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        return step(self)

    monkeypatch.setattr(RunningBatch, "step", step_once_out_of_memory)
    with ServerThread(create_app(run, ServeConfig(batch_size=2))) as server:
        status, headers, body = server.request("POST", "/v1/chat/completions", {**BODY, "stream": stream},
                                               text=stream)
        if stream:  # the stream had begun (200): the error is its last event before [DONE]
            assert status == 200 and body.rstrip().endswith("data: [DONE]")
            error = json.loads(body.split("data: ")[-2])["error"]
        else:
            assert status == 503 and {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"
            error = body["error"]
        assert error["code"] == "out_of_memory" and error["message"] == (
            "Out of GPU memory while generating 1 answer(s) together; the batch was freed and the server goes on. "
            "Retry, or ask for a lower max_tokens; if it happens often, restart `lorakit serve` with a lower "
            "--batch-size (now 2).")
        again, _, answer = server.request("POST", "/v1/chat/completions", BODY)
        assert again == 200 and answer["choices"][0]["finish_reason"] in ("stop", "length")
        health = server.health()
    assert failures == [1] and health["status"] == "ok" and health["batch"] == 0
    assert health["finished"]["error"] == 1 and "Traceback" not in caplog.text
