"""Continuous batching (inference/running_batch.py) against one-at-a-time `model.generate`, the path `lorakit
chat` takes: rows of different prompt lengths join mid-batch and leave at their own end, token for token equal."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from evaluation.eval_runs import trained_tiny_run
from lorakit.data.records import Message
from lorakit.data.render import render_prompt_ids
from lorakit.inference.generate import GenerationSettings, generate_answer, load_run, stop_token_ids
from lorakit.inference.running_batch import RowRequest, RunningBatch, batching_blocker

GREEDY = GenerationSettings(max_new_tokens=10, temperature=0.0, repetition_penalty=1.1)
LONG = (Message("user", "My grandmother has had a persistent dry cough for three weeks and now a mild fever. "
                        "What could cause that, and when should she see a doctor? She is 84 and on warfarin."),)
SHORT = (Message("user", "Fever?"),)
# (step at which the row joins, its conversation, its max_new_tokens); `stop` ends at its own end-of-turn.
SCHEDULE = {
    "insulin": (0, (Message("user", "What is insulin?"),), 12),
    "kidneys": (0, (Message("user", "What do kidneys do all day long?"),), 5),
    "long": (2, LONG, 9),  # longer than the running rows: they are padded on the left to join it
    "short": (4, SHORT, 7),
    "turns": (4, (Message("user", "Fever?"), Message("assistant", "A raised body temperature."),
                  Message("user", "And chills?")), 3),
    "stop": (5, (Message("user", "What are platelets?"),), 10),
}


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    return load_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.getbasetemp() / "eval-workspace"))


def _prompt(run, conversation) -> list[int]:
    return render_prompt_ids(conversation, run.tokenizer, run.system_prompt)


def _drive(run, requests_by_step: dict[int, list[RowRequest]]):
    """Run the batch to its end: rows join at their step; returns tokens and finish reason per key, and after
    every join or step the cache length with the longest live row's real tokens in the cache."""
    batch = RunningBatch(run.model, stop_ids=stop_token_ids(run), pad_id=0, device=run.device)
    tokens, reasons, lengths, step = {}, {}, [], 0
    prompts = {r.key: len(r.prompt) for rs in requests_by_step.values() for r in rs}

    def record(new_tokens) -> None:
        for new in new_tokens:
            tokens.setdefault(new.key, []).append(new.token)
            if new.finish_reason:
                reasons[new.key] = new.finish_reason
        live = [prompts[key] + len(tokens[key]) - 1 for key in batch.keys]  # the last token is not fed yet
        lengths.append((batch.length, max(live, default=0)))

    while step <= max(requests_by_step) or batch:
        if step in requests_by_step:
            record(batch.join(requests_by_step[step]))
        if batch:
            record(batch.step())
        step += 1
    return {k: tuple(v) for k, v in tokens.items()}, reasons, lengths


def test_rows_joining_mid_batch_and_leaving_at_their_own_end_equal_one_at_a_time(run, monkeypatch):
    longest = replace(GREEDY, max_new_tokens=max(n for _, _, n in SCHEDULE.values()))
    free = {key: tuple(generate_answer(run, conversation, longest)[1]) for key, (_, conversation, _) in SCHEDULE.items()}
    # A token that "stop"'s answer says early and no other answer says becomes an end-of-turn token.
    stop = next(token for token in free["stop"][1:] if all(token not in free[k] for k in SCHEDULE if k != "stop"))
    monkeypatch.setattr(run.model.generation_config, "eos_token_id", [run.tokenizer.eos_token_id, stop])
    # One at a time, each stops at its max_new_tokens (a prefix of its longer answer) or at the new stop token.
    expected = {key: free[key][:n] for key, (_, _, n) in SCHEDULE.items()}
    expected["stop"] = tuple(generate_answer(run, SCHEDULE["stop"][1], GREEDY)[1])
    assert expected["stop"][-1] == stop and len(expected["stop"]) < GREEDY.max_new_tokens

    by_step: dict[int, list[RowRequest]] = {}
    for key, (step, conversation, n) in SCHEDULE.items():
        by_step.setdefault(step, []).append(RowRequest(key, _prompt(run, conversation), replace(GREEDY, max_new_tokens=n)))
    tokens, reasons, lengths = _drive(run, by_step)

    assert tokens == expected
    assert reasons == {key: "stop" if key == "stop" else "length" for key in SCHEDULE}
    # The cache is never longer than its longest live row: the padding of rows that left is cut away.
    assert all(length == longest for length, longest in lengths), lengths
    assert max(length for length, _ in lengths) >= len(_prompt(run, LONG)) > lengths[-2][0]


def test_sampled_rows_keep_their_seed_and_leave_greedy_neighbours_unchanged(run):
    question = (Message("user", "What is anemia?"),)
    sampled = replace(GREEDY, temperature=1.0, top_p=0.95, max_new_tokens=12)

    def seeded(key: str, seed: int) -> RowRequest:
        return RowRequest(key, _prompt(run, question), sampled, torch.Generator().manual_seed(seed))

    alone, _, _ = _drive(run, {0: [seeded("a", 5)]})
    crowd, _, _ = _drive(run, {0: [RowRequest("greedy", _prompt(run, LONG), GREEDY), seeded("b", 6)],
                               1: [seeded("a", 5), RowRequest("short", _prompt(run, SHORT), GREEDY)]})
    assert crowd["a"] == alone["a"]  # the same seed samples the same answer whatever shares its batch
    assert crowd["b"] != crowd["a"]
    assert crowd["greedy"] == tuple(generate_answer(run, LONG, GREEDY)[1])
    assert crowd["short"] == tuple(generate_answer(run, SHORT, GREEDY)[1])


def test_models_whose_cache_cannot_be_padded_are_named():
    from transformers import LlamaConfig, MistralConfig, Phi3Config

    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    assert batching_blocker(SimpleNamespace(config=LlamaConfig(**tiny))) is None
    # Phi-4-mini's window covers its whole context: full attention in effect.
    assert batching_blocker(SimpleNamespace(config=Phi3Config(**tiny, sliding_window=262144,
                                                              max_position_embeddings=131072))) is None
    mistral = MistralConfig(**tiny, sliding_window=4096, max_position_embeddings=32768)
    assert batching_blocker(SimpleNamespace(config=mistral)) == (
        "its cache has DynamicSlidingWindowLayer layers (window 4096 < context 32768)")


class _LookupModel:
    """Logits looked up from a fixed table by the last token: a model with no layers, so that a step of the
    running batch is only its own work."""

    def __init__(self, vocabulary: int = 50):
        self.table = torch.randn((vocabulary, vocabulary), generator=torch.Generator().manual_seed(0))

    def __call__(self, input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep):
        from transformers import DynamicCache

        cache = DynamicCache() if cache is None else cache
        column = torch.zeros((input_ids.shape[0], 1, input_ids.shape[1], 1))
        cache.update(column, column, 0)
        return SimpleNamespace(logits=self.table[input_ids[:, -1:]], cache=cache)


def test_a_step_copies_no_python_data_to_the_device_however_many_rows():
    """torch.tensor(Python data) is, on a GPU, a host-to-device copy and a stream synchronization; the
    repetition penalty once made one per row per step. A step now makes none (rows leaving make one index)."""
    from collections import Counter

    settings = replace(GREEDY, max_new_tokens=100, repetition_penalty=1.3, repeat_last_n=4)
    batch = RunningBatch(_LookupModel(), stop_ids=[], pad_id=0, device=torch.device("cpu"))
    batch.join([RowRequest(row, [row + 1, 7][: 1 + row % 2], settings) for row in range(8)])
    batch.step()
    with torch.profiler.profile() as profile:
        new = [batch.step() for _ in range(4)]
    assert Counter(event.name for event in profile.events())["aten::lift_fresh"] == 0
    assert [len(tokens) for tokens in new] == [8] * 4 and len(batch) == 8
