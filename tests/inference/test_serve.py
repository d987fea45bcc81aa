"""`lorakit serve` on loopback against the tiny trained run, driven by the official `openai` client and raw HTTP."""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import json
import re
import threading
import time
import tracemalloc
from dataclasses import replace

import openai
import psutil
import pytest

from evaluation.eval_runs import trained_tiny_run
from inference.serve_harness import ServerThread, open_stream, read_until
from lorakit.config import ServeConfig
from lorakit.data.conversation import Message
from lorakit.data.render import render_prompt_ids
from lorakit.inference.generate import GenerationSettings, generate_answer, load_run
from lorakit.inference.running_batch import RunningBatch
from lorakit.inference.serve import create_app

DISCLAIMER = "Not medical advice."  # the tiny run's inference.disclaimer (tests/conftest.py)
QUESTION = [{"role": "user", "content": "What is anemia?"}]
CONTEXT = 2048  # the tiny model's max_position_embeddings


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    return load_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("serve")))


def serving(run, **options) -> ServerThread:
    return ServerThread(create_app(run, ServeConfig(**options)))


@pytest.fixture(scope="module")
def server(run):
    with serving(run) as server:
        yield server


def client(server: ServerThread, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=60)


def chat_answer(run, messages: list[dict], **settings) -> str:
    """What `lorakit chat` answers (the same generate.py path), for comparison."""
    turns = tuple(Message(m["role"], m["content"]) for m in messages)
    return generate_answer(run, turns, replace(GenerationSettings.from_config(run.config), **settings))[0]


def prompt_tokens(run, messages: list[dict]) -> int:
    return len(render_prompt_ids(tuple(Message(m["role"], m["content"]) for m in messages), run.tokenizer,
                                 run.system_prompt))


def test_plain_completion_is_chats_answer_with_run_system_prompt_and_disclaimer(run, server):
    reply = client(server).chat.completions.create(model="run", messages=QUESTION)
    expected = chat_answer(run, QUESTION)
    assert reply.choices[0].message.content == f"{expected}\n\n{DISCLAIMER}"
    assert reply.choices[0].message.role == "assistant"
    assert reply.model == "run"
    # The run's system prompt ("Be careful.") was rendered in: the prompt holds its tokens.
    assert reply.usage.prompt_tokens == prompt_tokens(run, QUESTION)
    assert reply.usage.prompt_tokens == prompt_tokens(run, [{"role": "system", "content": "Be careful."}, *QUESTION])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_request_system_prompt_replaces_the_runs(run, server):
    messages = [{"role": "system", "content": "Answer in French, in one very short sentence please."}, *QUESTION]
    reply = client(server).chat.completions.create(model="run", messages=messages)
    assert reply.usage.prompt_tokens == prompt_tokens(run, messages)
    assert reply.usage.prompt_tokens != prompt_tokens(run, QUESTION)
    assert reply.choices[0].message.content == f"{chat_answer(run, messages)}\n\n{DISCLAIMER}"


def test_streamed_completion_adds_up_to_the_plain_one(server):
    api = client(server)
    request = dict(model="run", messages=QUESTION, temperature=1.0, seed=11, max_tokens=40)
    plain = api.chat.completions.create(**request)
    chunks = list(api.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert text.endswith(f"\n\n{DISCLAIMER}")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2  # streamed, not one piece


def test_streamed_body_writes_hold_whole_events_and_the_last_ends_the_stream(server):
    """Raw HTTP chunks (one per body write): whole SSE events only, the role chunk alone first, at most one write
    per generated token after it, and the last write carries the finish chunk, the usage chunk and [DONE]."""
    request = {"messages": QUESTION, "temperature": 1.0, "seed": 11, "max_tokens": 40,
               "stream_options": {"include_usage": True}}
    sock = open_stream(server.port, request)
    received = read_until(sock, b"\r\n0\r\n\r\n")  # the chunked body's last chunk
    sock.close()
    rest = received.partition(b"\r\n\r\n")[2]
    writes = []
    while (size := int(rest.partition(b"\r\n")[0], 16)) > 0:
        writes.append(rest.partition(b"\r\n")[2][:size].decode())
        rest = rest.partition(b"\r\n")[2][size + 2:]
    events = [[e.removeprefix("data: ") for e in w.split("\n\n")[:-1]] for w in writes]
    assert all(w.endswith("\n\n") for w in writes) and all(e and w.startswith("data: ") for e, w in zip(events, writes))
    assert json.loads(events[0][0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(events[0]) == 1
    *last_choices, usage, done = events[-1]
    assert (json.loads(last_choices[-1])["choices"][0]["finish_reason"], done) == ("length", "[DONE]")
    assert json.loads(usage)["usage"]["completion_tokens"] == 40
    assert len(writes) <= 1 + 40
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for w in events[1:] for e in w
                   if e != "[DONE]" and json.loads(e)["choices"])
    plain = client(server).chat.completions.create(model="run", messages=QUESTION, temperature=1.0, seed=11,
                                                   max_tokens=40)
    assert text == plain.choices[0].message.content


def test_seed_temperature_top_p_max_tokens_and_stop(server):
    api = client(server)
    request = dict(model="run", messages=QUESTION, temperature=1.0, top_p=0.95, seed=3, max_tokens=30)
    first = api.chat.completions.create(**request).choices[0]
    again = api.chat.completions.create(**request).choices[0]
    assert first.message.content == again.message.content  # same seed, same sample
    answer = first.message.content.removesuffix(f"\n\n{DISCLAIMER}")
    assert first.finish_reason == "length"
    stop = answer[len(answer) // 2: len(answer) // 2 + 3]
    assert stop.strip(), f"answer too short to pick a stop string: {answer!r}"
    stopped = api.chat.completions.create(**request, stop=[stop, "never appears"]).choices[0]
    assert stopped.message.content == f"{answer[:answer.index(stop)].strip()}\n\n{DISCLAIMER}"
    assert stopped.finish_reason == "stop"
    short = api.chat.completions.create(**{**request, "max_tokens": 2})
    assert short.usage.completion_tokens == 2 and short.choices[0].finish_reason == "length"


def _streamed_text(api: openai.OpenAI, messages: list[dict], max_tokens: int) -> str:
    stream = api.chat.completions.create(model="run", messages=messages, max_tokens=max_tokens, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_concurrent_streams_share_the_batch_and_each_equals_its_one_at_a_time_answer(run, server, monkeypatch):
    """Greedy requests of different lengths join while another streams and leave at their own max_tokens; a
    client that leaves mid-batch stops only its own row. Each text equals `lorakit chat`'s answer."""
    sizes: list[int] = []
    step = RunningBatch.step

    def recorded_step(batch: RunningBatch):
        sizes.append(len(batch))
        time.sleep(0.005)  # the first answer is still streaming when the others join
        return step(batch)

    monkeypatch.setattr(RunningBatch, "step", recorded_step)
    requests = [([{"role": "user", "content": "What do kidneys do all day long? Explain it in some detail."}], 12),
                ([{"role": "user", "content": "Fever?"}], 25),
                ([{"role": "system", "content": "Answer briefly."}, *QUESTION], 7)]
    before = server.health()["finished"]
    api = client(server)
    first = api.chat.completions.create(model="run", messages=QUESTION, max_tokens=60, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in itertools.islice(first, 3) if c.choices]
    leaving = open_stream(server.port, {"messages": QUESTION, "temperature": 1.0, "seed": 1, "max_tokens": 1500})
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        joined = [pool.submit(_streamed_text, client(server), messages, n) for messages, n in requests]
        read_until(leaving, b'"delta": {"content": ')
        leaving.close()
        pieces += [c.choices[0].delta.content or "" for c in first if c.choices]
        texts = [future.result(timeout=120) for future in joined]
    assert "".join(pieces) == f"{chat_answer(run, QUESTION, max_new_tokens=60)}\n\n{DISCLAIMER}"
    for (messages, n), text in zip(requests, texts):
        assert text == f"{chat_answer(run, messages, max_new_tokens=n)}\n\n{DISCLAIMER}"
    assert max(sizes) >= 3, sizes  # they did share the batch
    finished = server.wait_idle()["finished"]
    assert finished.get("cancelled", 0) - before.get("cancelled", 0) == 1


def test_models_and_health(server):
    assert [m.id for m in client(server).models.list().data] == ["run"]
    health = server.health()
    assert health["status"] == "ok" and health["model"] == "run" and health["max_waiting"] == 8


def test_disclaimer_can_be_switched_off(run):
    with serving(run, disclaimer=False) as server:
        reply = client(server).chat.completions.create(model="run", messages=QUESTION)
    assert reply.choices[0].message.content == chat_answer(run, QUESTION)


BAD_REQUESTS = {
    "malformed JSON": (b'{"messages": [', 400,
                       "The request body is not valid JSON: Expecting value (line 1, column 15)."),
    "not an object": (b"[]", 400, "The request body must be a JSON object."),
    "no messages field": ({"model": "run"}, 400, "messages: Field required."),
    "empty messages": ({"messages": []}, 400, "messages: must hold at least one message."),
    "unknown role": ({"messages": [{"role": "wizard", "content": "hi"}]}, 400,
                     'messages[0].role: unknown role "wizard"; expected one of system, user, assistant.'),
    "empty content": ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content: is empty."),
    "image content": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, 400,
                      "messages[0].content: must be a string or a list of text parts."),
    "late system": ({"messages": [*QUESTION, {"role": "system", "content": "x"}]}, 400,
                    "messages[1].role: a system message may only come first."),
    "assistant last": ({"messages": [*QUESTION, {"role": "assistant", "content": "x"}]}, 400,
                       "messages[1].role: the last message must come from the user, not 'assistant'."),
    "temperature": ({"messages": QUESTION, "temperature": 7}, 400,
                    "temperature: Input should be less than or equal to 2."),
    "max_tokens 0": ({"messages": QUESTION, "max_tokens": 0}, 400,
                     "max_tokens: Input should be greater than or equal to 1."),
    "n": ({"messages": QUESTION, "n": 3}, 400, "n: Input should be less than or equal to 1."),
    "seed": ({"messages": QUESTION, "seed": 2**64}, 400,
             "seed: Input should be less than or equal to 9223372036854775807."),
    "stop count": ({"messages": QUESTION, "stop": list("abcde")}, 400, "stop: at most 4 stop strings, got 5."),
    "lone surrogate": (b'{"messages": [{"role": "user", "content": "What is \\ud800?"}]}', 400,
                       "messages[0].content: character 9 is a lone UTF-16 surrogate (\\ud800) without its pair, "
                       "which is not text."),
    "surrogate stop": ({"messages": QUESTION, "stop": ["\udfff"]}, 400,
                       "stop[0]: character 1 is a lone UTF-16 surrogate (\\udfff) without its pair, which is not text."),
    "invalid UTF-8": (b'{"messages": [{"role": "user", "content": "What is \xff?"}]}', 400,
                      "The request body is not valid JSON: not UTF-8."),
    "absurd body": (json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode(), 413,
                    "The request body is larger than this server's limit of 1048576 bytes."),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_exact_status_and_openai_error(server, case):
    body, status, message = BAD_REQUESTS[case]
    got_status, _, error = server.request("POST", "/v1/chat/completions", body)
    assert (got_status, error["error"]["message"]) == (status, message)
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_404_in_openai_shape(server):
    status, _, error = server.request("GET", "/v1/nope")
    assert (status, error["error"]["message"]) == (404, "No route GET /v1/nope.")


def test_context_overflow_names_the_token_counts(run, server):
    prompt = prompt_tokens(run, QUESTION)
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(model="run", messages=QUESTION, max_tokens=CONTEXT)
    assert caught.value.status_code == 400
    assert caught.value.body["message"] == (
        f"This model's maximum context length is {CONTEXT} tokens. However, you requested {prompt + CONTEXT} tokens "
        f"({prompt} in the messages, {CONTEXT} in the completion). Please reduce the length of the messages or "
        "completion.")
    assert caught.value.body["code"] == "context_length_exceeded"
    long = [{"role": "user", "content": "blood " * 3000}]
    status, _, error = server.request("POST", "/v1/chat/completions", {"messages": long})
    assert (status, error["error"]["message"]) == (400, (
        f"This model's maximum context length is {CONTEXT} tokens. However, your messages resulted in "
        f"{prompt_tokens(run, long)} tokens. Please reduce the length of the messages."))
    # Exactly at the limit is allowed.
    fits = client(server).chat.completions.create(model="run", messages=QUESTION, max_tokens=CONTEXT - prompt)
    assert fits.choices[0].message.content.endswith(DISCLAIMER)


def test_api_key_required_when_set(run):
    with serving(run, api_key="s3cret-key") as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            status, response_headers, error = server.request("POST", "/v1/chat/completions",
                                                             {"messages": QUESTION}, headers)
            assert (status, error["error"]["code"]) == (401, "invalid_api_key")
            assert error["error"]["message"] == ("Missing or incorrect API key: send the key the server was started "
                                                 "with as 'Authorization: Bearer KEY'.")
            assert "s3cret-key" not in json.dumps(error)
        with pytest.raises(openai.AuthenticationError):
            client(server, api_key="wrong").models.list()
        assert client(server, api_key="s3cret-key").chat.completions.create(model="run", messages=QUESTION).choices
        assert server.health()["status"] == "ok"  # health checks need no key


def _burst(apis: list[openai.OpenAI]) -> list[object]:
    """One thread per client, released together, each sending one chat request; returns each outcome."""
    outcomes: list[object] = [None] * len(apis)
    start = threading.Barrier(len(apis))

    def ask(index: int) -> None:
        api = apis[index]
        start.wait(timeout=30)
        try:
            outcomes[index] = api.chat.completions.create(
                model="run", messages=QUESTION, temperature=1.0, seed=index, max_tokens=48)
        except openai.APIStatusError as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(apis))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a client got no answer within 120 s"
    return outcomes


def test_16_concurrent_clients_against_a_queue_of_4(run):
    """Every request is answered or refused with 503 + Retry-After, the server keeps serving, memory stays flat."""
    traced_mib, rss_mib = [], []
    tracemalloc.start()
    try:
        with serving(run, queue_size=4) as server:
            apis = [client(server) for _ in range(16)]
            for _ in range(3):
                outcomes = _burst(apis)
                answered = [o for o in outcomes if isinstance(o, openai.types.chat.ChatCompletion)]
                refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
                assert len(answered) + len(refused) == 16
                assert all(o.choices[0].message.content.endswith(DISCLAIMER) for o in answered)
                # At least 4 fit the queue; of 16 at once, at most 8 (the batch) + 4 (the queue) are answered.
                assert len(answered) >= 4 and refused, [type(o).__name__ for o in outcomes]
                for error in refused:
                    assert error.status_code == 503 and int(error.response.headers["Retry-After"]) >= 1
                    assert re.fullmatch(r"The server is busy: 4 requests are already waiting\. Retry after \d+ s\.",
                                        error.body["message"])
                health = server.wait_idle()
                assert "error" not in health["finished"]
                assert client(server).chat.completions.create(model="run", messages=QUESTION).choices  # still serving
                gc.collect()
                traced_mib.append(tracemalloc.get_traced_memory()[0] / 2**20)
                rss_mib.append(psutil.Process().memory_info().rss / 2**20)
    finally:
        tracemalloc.stop()
    # Python objects: nothing kept per request (measured flat to 0.01 MiB). RSS: glibc's per-thread arenas
    # warm up over the first bursts and then plateau (measured +57 MiB over 5 bursts, then +0.4 over 2 more).
    assert traced_mib[-1] - traced_mib[0] < 0.5, f"traced Python memory after each burst (MiB): {traced_mib}"
    assert rss_mib[-1] - rss_mib[0] < 100, f"RSS after each burst (MiB): {rss_mib}"


def test_client_killed_mid_stream_frees_its_slot_and_stops_generation(run):
    long_request = {"messages": QUESTION, "temperature": 1.0, "seed": 1, "max_tokens": 1500}
    with serving(run, queue_size=1) as server:
        sock = open_stream(server.port, long_request)
        read_until(sock, b'"delta": {"content": ', timeout_s=30)  # generation has started streaming
        sock.close()
        health = server.wait_idle(timeout_s=30)
        assert health["finished"] == {"cancelled": 1}
        assert health["tokens_generated"] < 1500  # stopped early, not run to max_tokens
        reply = client(server).chat.completions.create(model="run", messages=QUESTION)
        assert reply.choices[0].message.content.endswith(DISCLAIMER)


def test_client_gone_while_waiting_non_streamed_is_cancelled(run):
    long_request = {"messages": QUESTION, "temperature": 1.0, "seed": 1, "max_tokens": 1500}
    with serving(run, queue_size=2, batch_size=1) as server:  # a full batch, so that the second one waits
        first = open_stream(server.port, long_request)
        read_until(first, b'"delta": {"content": ', timeout_s=30)
        import socket as sockets

        payload = json.dumps(long_request).encode()
        waiting = sockets.create_connection(("127.0.0.1", server.port), timeout=30)
        waiting.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        deadline = time.monotonic() + 10
        while server.health()["waiting"] != 1:
            assert time.monotonic() < deadline, "second request never queued"
            time.sleep(0.02)
        waiting.close()
        time.sleep(1.0)  # the handler polls for a disconnect every 0.5 s
        first.close()
        health = server.wait_idle(timeout_s=30)
        assert health["finished"] == {"cancelled": 2}
        assert health["tokens_generated"] < 1500


def test_a_phi3_shaped_run_serves_plain_and_streamed_like_chat(tiny_phi3_dir, tmp_path_factory):
    """Phi-4-mini's architecture (fused qkv_proj / gate_up_proj) through the same server."""
    phi3 = load_run(trained_tiny_run(tiny_phi3_dir, tmp_path_factory.mktemp("serve-phi3")))
    assert phi3.model.config.model_type == "phi3"
    with serving(phi3) as phi3_server:
        api = client(phi3_server)
        plain = api.chat.completions.create(model="run", messages=QUESTION)
        assert plain.choices[0].message.content == f"{chat_answer(phi3, QUESTION)}\n\n{DISCLAIMER}"
        streamed = "".join(c.choices[0].delta.content or ""
                           for c in api.chat.completions.create(model="run", messages=QUESTION, stream=True)
                           if c.choices)
        assert streamed == plain.choices[0].message.content
