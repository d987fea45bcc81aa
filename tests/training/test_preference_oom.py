"""A DPO run that runs out of memory re-plans with the micro-batches it really trains on: the session's pairs with
the run's data order, cut into the pieces a smaller micro-batch makes (plan/config_view.pair_micro_batches)."""

from __future__ import annotations

import json

from test_oom_replan import NeedsCheckpointing, inject_oom  # noqa: F401 (inject_oom is a fixture)

from conftest import QA_PAIRS, Recorder, tiny_run_config
from lorakit.plan import oom
from lorakit.training import loop


def test_a_dpo_replan_counts_the_runs_own_micro_batches(tiny_llama_dir, tmp_path, monkeypatch,
                                                        inject_oom):  # noqa: F811
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": q, "chosen": a, "rejected": QA_PAIRS[(i + 1) % len(QA_PAIRS)][1]})
                             + "\n" for i, (q, a) in enumerate(QA_PAIRS)))
    config = tiny_run_config(tiny_llama_dir, pairs, tmp_path / "run", method="dpo", batch_size=4, max_steps=2,
                             save_steps=2, eval_steps=2, gradient_accumulation_steps=1)
    monkeypatch.setattr(oom, "training_memory_bytes", lambda device: 64 * 2**30)
    replans = []
    replan = oom.replan_for_memory

    def spy(shape, base, current, **kwargs):
        chosen = replan(shape, base, current, **kwargs)
        replans.append((kwargs["micro_batch_layout"], chosen))
        return chosen

    monkeypatch.setattr(oom, "replan_for_memory", spy)
    sessions = inject_oom(NeedsCheckpointing)
    reporter = Recorder()
    result = loop.train(config, reporter=reporter)
    assert result.steps == 2 and [raised for _, raised in sessions] == [1]
    [(layout, chosen)] = replans
    assert chosen is not None and chosen.micro_batch == 4 and chosen.settings.checkpointed_layers >= 1
    # the run's largest micro-batch of 4 pairs (2 steps: 2 micro-batches of its order), as positions and keys
    positions, keys = layout(4)
    assert (chosen.settings.tokens_per_micro_batch, chosen.settings.keys_per_token) == (positions, keys / positions)
    assert layout.func.__self__.micro_batches == 2 and layout.keywords == {"cut_from": 4}
    largest = max(layout.func.__self__.positions)
    assert positions < 4 * largest  # not 4 x the largest pair
