"""The DPO run of the preference demo on the SFT run's own test questions, scored as `lorakit eval` scores them.

`lorakit eval` scores each run on its own test split: the SFT run on 9 questions of examples/medical_qa.jsonl, the
DPO run on the held-out pairs of the review (one question, whose chosen answer is a model's own answer). To put
SFT and DPO side by side on the same questions, this script answers the SFT run's test questions with the DPO
adapter (greedy, the eval's generation settings), scores them against the dataset's reference answers (ROUGE-L,
token F1) and measures the loss on them, exactly as the SFT run's eval did; the SFT numbers are read from its
eval folder. Those questions are the ones the review judged, so most of them became DPO training pairs: each
question is labelled with the DPO split it landed in, and the numbers are given for all 9 and for the held-out ones.

    python bench/preference_demo_same_questions.py SFT_RUN DPO_RUN [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from lorakit.evaluation.quality import score_answer
from lorakit.evaluation.run_eval import EvalRequest, _settings, _split_at_last_answer, _split_conversations
from lorakit.inference.generate import generate_answers, load_run
from lorakit.run.layout import ANSWERS_FILE, EVAL, EVAL_FILE
from lorakit.training.dataset import prepare_data
from lorakit.training.held_out_loss import split_loss


def _dpo_split_of(dpo, prompts: list[str]) -> dict[str, str]:
    """Which DPO split (train / validation / test) each prompt's pairs landed in ('-': not a DPO pair)."""
    where = {}
    for name, conversations in _split_conversations(dpo).items():
        for conversation in conversations:
            where[conversation.messages[-2].content] = name
    return {prompt: where.get(prompt, "-") for prompt in prompts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sft", type=Path, help="the SFT run folder (evaluated: eval/answers.jsonl)")
    parser.add_argument("dpo", type=Path, help="the DPO run folder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    sft_eval = json.loads((args.sft / EVAL / EVAL_FILE).read_text())
    sft_rows = [json.loads(line) for line in (args.sft / EVAL / ANSWERS_FILE).read_text().splitlines() if line]
    sft = load_run(args.sft)  # only its config and split: the DPO model below answers
    test = _split_conversations(sft)["test"]
    test_examples = prepare_data(sft.config, sft.tokenizer).splits.test
    tokenizer = sft.tokenizer
    del sft

    dpo = load_run(args.dpo)
    settings = _settings(dpo, EvalRequest())
    assert settings == _settings_of(sft_eval), f"generation settings differ: {settings} vs {sft_eval['quality']}"
    prompts = [_split_at_last_answer(c) for c in test]
    answers = generate_answers(dpo, [p for p, _ in prompts], settings, batch_size=dpo.config.eval.batch_size,
                               mixed_batches=False)
    loss = split_loss(dpo.model, test_examples, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    where = _dpo_split_of(dpo, [p[-1].content for p, _ in prompts])
    by_item = {f"{r['source']}:{r['line']}": r for r in sft_rows}
    rows = []
    for conversation, (prompt, reference), answer in zip(test, prompts, answers):
        item = f"{conversation.source}:{conversation.line}"
        rows.append({"item": item, "dpo_split": where[prompt[-1].content],
                     "sft": {k: by_item[item]["tuned"][k] for k in ("rouge_l", "token_f1")},
                     "dpo": {**asdict(score_answer(answer.text, reference)), "answer": answer.text,
                             "truncated": answer.truncated},
                     "sft_answer": by_item[item]["tuned"]["answer"]})

    def means(subset: list[dict], model: str) -> dict:
        return {k: round(sum(r[model][k] for r in subset) / len(subset), 4) for k in ("rouge_l", "token_f1")}

    held_out = [r for r in rows if r["dpo_split"] != "train"]
    result = {"questions": len(rows), "dpo_train_questions": len(rows) - len(held_out),
              "all": {"sft": {**means(rows, "sft"), "loss": sft_eval["quality"]["tuned"]["loss"]},
                      "dpo": {**means(rows, "dpo"), "loss": loss}},
              "held_out": {"items": [r["item"] for r in held_out],
                           "sft": means(held_out, "sft") if held_out else None,
                           "dpo": means(held_out, "dpo") if held_out else None},
              "generation": asdict(settings), "rows": rows}
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


def _settings_of(sft_eval: dict):
    from lorakit.inference.generate import GenerationSettings

    generation = {k: v for k, v in sft_eval["quality"]["generation"].items() if k != "greedy"}
    return GenerationSettings(**generation)


if __name__ == "__main__":
    main()
