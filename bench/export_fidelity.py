"""Issue 10: how close each export format stays to the fine-tuned model it came from, on the embedded
SmolLM2-135M-Instruct with a small random adapter (tests/export/embedded_run.py), in one run.

    python bench/export_fidelity.py [--out bench/results/export_fidelity.txt]

Baseline: the base model + adapter (peft, float32) in the same process. For each format, exported through
the public `lorakit.export.run_export.export_run` and read back by plain transformers (`from_pretrained`,
GGUF through `gguf_file=`): the largest |logit difference| over one chat prompt (system prompt + question,
~110 positions), its ratio to the largest |logit|, the share of positions whose top-1 token agrees, the
file size, and the export's wall time (this machine is shared, so times are indicative only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from export.embedded_run import embedded_adapter_run  # noqa: E402

from lorakit.export.finished_run import read_finished_run  # noqa: E402
from lorakit.export.run_export import ExportRequest, export_run  # noqa: E402

FORMATS = [("merged", "f16"), ("gguf", "f16"), ("gguf", "q8_0"), ("gguf", "q4_0")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "export_fidelity.txt")
    args = parser.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.model.load import resolve_model_source

    with tempfile.TemporaryDirectory() as scratch:
        run = read_finished_run(embedded_adapter_run(Path(scratch)))
        source = resolve_model_source(run.config.model).directory
        tokenizer = AutoTokenizer.from_pretrained(source)
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32),
                                              run.adapter_dir).eval()
        messages = [{"role": "system", "content": run.system_prompt}, {"role": "user", "content": "What is a fever?"}]
        ids = torch.tensor([tokenizer(tokenizer.apply_chat_template(messages, tokenize=False,
                                                                    add_generation_prompt=True))["input_ids"]])
        with torch.no_grad():
            expected = reference(ids).logits
            with reference.disable_adapter():
                adapter_effect = (reference(ids).logits - expected).abs().max().item()
        rows = []
        for format, quant in FORMATS:
            started = time.perf_counter()
            result = export_run(run.run_dir, ExportRequest(format, output=Path(scratch) / f"{format}-{quant}", quant=quant))
            seconds = time.perf_counter() - started
            gguf_file = {} if format == "merged" else {"gguf_file": f"run-{quant}.gguf"}
            model = AutoModelForCausalLM.from_pretrained(result.output, dtype=torch.float32, **gguf_file).eval()
            with torch.no_grad():
                got = model(ids).logits
            size = sum(p.stat().st_size for p in result.output.iterdir() if p.suffix in (".safetensors", ".gguf"))
            difference = (got - expected).abs().max().item()
            rows.append((f"{format} {quant if format != 'merged' else 'bf16'}", difference,
                         difference / expected.abs().max().item(), (got.argmax(-1) == expected.argmax(-1)).float().mean().item(),
                         size / 2**20, seconds))
    lines = [f"SmolLM2-135M-Instruct + random r=8 q/v adapter; {ids.shape[1]} positions; max |logit| "
             f"{expected.abs().max().item():.1f}; adapter moves logits by up to {adapter_effect:.3f}",
             f"{'format':<12} {'max|dlogit|':>11} {'/max|logit|':>11} {'top-1 agree':>11} {'MiB':>8} {'export s':>9}"]
    lines += [f"{name:<12} {d:>11.4f} {r:>11.2%} {a:>11.1%} {mib:>8.1f} {s:>9.1f}" for name, d, r, a, mib, s in rows]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
