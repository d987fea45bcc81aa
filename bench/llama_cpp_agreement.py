"""Issue 25: does llama.cpp, given what the export recommends, answer as `lorakit chat` does?

    pip install llama-cpp-python   # builds llama.cpp from source (over 15 minutes on a busy 2-core machine)
    lorakit export RUN_DIR --format gguf --quant f16
    python bench/llama_cpp_agreement.py RUN_DIR RUN_DIR/export/gguf/RUN-f16.gguf [--questions 8] [--out FILE.jsonl]
        [--safety-out ANSWERS.jsonl --safety-per-category 1]   # then: lorakit eval score ANSWERS.jsonl

The same questions (the run's test questions, as export fidelity picks them) are answered greedily by lorakit
(base + adapter, `generate_answers`, the run's repetition penalty over the answer's last repeat_last_n tokens)
and by llama.cpp through llama-cpp-python's chat completion on the exported GGUF, with no system message (the
GGUF's chat template must supply the run's prompt) and the settings the export writes (temperature 0, top_k 0,
min_p 0, repeat_penalty, repeat_last_n). Prints per question whether the answers are equal and how many leading
tokens they share; --out writes llama.cpp's answers as JSONL ({"question", "answer"}) for scoring elsewhere.
--safety-out answers the first N risky safety probes of each category and their twins with both (same settings)
and writes them in `lorakit eval score`'s format ({"probe_id", "answer", "model": "llama.cpp" or "lorakit"}).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src")]

from lorakit.data.records import Message  # noqa: E402
from lorakit.export.fidelity import fidelity_questions  # noqa: E402
from lorakit.run.source import read_finished_run  # noqa: E402
from lorakit.inference.generate import GenerationSettings, generate_answers, load_run  # noqa: E402


def shared_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--safety-out", type=Path, default=None)
    parser.add_argument("--safety-per-category", type=int, default=1)
    args = parser.parse_args()
    from llama_cpp import Llama

    run = load_run(args.run)
    inference = run.config.inference
    questions = fidelity_questions(read_finished_run(args.run), run.tokenizer)[0][: args.questions]
    settings = GenerationSettings(args.max_tokens, 0.0, 1.0, inference.repetition_penalty, inference.repeat_last_n)
    ours = generate_answers(run, [(Message("user", q),) for q in questions], settings)
    llm = Llama(model_path=str(args.gguf), n_ctx=2048, last_n_tokens_size=inference.repeat_last_n, verbose=False)

    def answer_with_llama_cpp(question: str) -> str:
        reply = llm.create_chat_completion(messages=[{"role": "user", "content": question}], temperature=0.0,
                                           top_k=0, top_p=1.0, min_p=0.0, max_tokens=args.max_tokens,
                                           repeat_penalty=inference.repetition_penalty)
        return reply["choices"][0]["message"]["content"].strip()

    equal, rows = 0, []
    for question, answer in zip(questions, ours):
        text = answer_with_llama_cpp(question)
        a, b = run.tokenizer(answer.text)["input_ids"], run.tokenizer(text)["input_ids"]
        equal += a == b
        print(f"{'equal' if a == b else 'differs'}: {shared_prefix(a, b)}/{len(a)} leading tokens shared; {question}")
        rows.append({"question": question, "answer": text})
    print(f"llama.cpp equals lorakit on {equal} of {len(questions)} greedy answers "
          f"(repeat_penalty {inference.repetition_penalty:g}, repeat_last_n {inference.repeat_last_n})")
    if args.out:
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if args.safety_out:
        from lorakit.evaluation.safety import load_probes, select_probes

        probes = select_probes(load_probes(), args.safety_per_category)
        ours = generate_answers(run, [(Message("user", p.prompt),) for p in probes], settings)
        lines = []
        for probe, answer in zip(probes, ours):
            lines.append({"probe_id": probe.id, "answer": answer.text, "model": "lorakit"})
            lines.append({"probe_id": probe.id, "answer": answer_with_llama_cpp(probe.prompt), "model": "llama.cpp"})
        same = sum(a["answer"].strip() == b["answer"] for a, b in zip(lines[::2], lines[1::2]))
        print(f"safety probes: llama.cpp's answer equals lorakit's on {same} of {len(probes)}")
        args.safety_out.write_text("".join(json.dumps(line) + "\n" for line in lines))


if __name__ == "__main__":
    main()
