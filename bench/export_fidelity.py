"""Issues 10 and 25: how much of the fine-tune each export format and dtype keeps, in one run.

    python bench/export_fidelity.py [--run RUN_DIR] [--out bench/results/export_fidelity.txt]

RUN_DIR: a finished run (the README's demo run); without it, the embedded SmolLM2-135M-Instruct with a small
random r=8 q/v adapter (tests/export/embedded_run.py). Each format is exported through the public
`lorakit.export.run_export.export_run` and read back by plain transformers (GGUF through `gguf_file=`, which
de-quantizes q8_0/q4_0 with gguf-py). Two measures:
- weights: ||W_exported - (W_base + delta)|| / ||delta|| over every LoRA-adapted matrix (one norm over all of
  them), with delta = (alpha / r) * B @ A merged in float32: 0 keeps the whole change, 1 loses as much as it;
- fidelity: what the export itself measured and wrote into lorakit_export.json (export/fidelity.py): greedy
  token agreement with the run (base + adapter, float32), teacher-forced on the run's own greedy answers, and
  the largest logit difference; plus the file size and the export's wall time (a shared machine: indicative).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from lorakit.export.fidelity import read_back  # noqa: E402
from lorakit.run.source import read_finished_run  # noqa: E402
from lorakit.export.merge import attach_adapter, load_base_for_merge  # noqa: E402
from lorakit.export.run_export import ExportRequest, export_run  # noqa: E402

FORMATS = [("merged", "bf16"), ("merged", "fp16"), ("merged", "fp32"), ("gguf", "f16"), ("gguf", "q8_0"), ("gguf", "q4_0")]


def lora_weights(run) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Base weight and float32 delta of every adapted matrix, by transformers parameter name."""
    base = load_base_for_merge(run)
    adapted = attach_adapter(run, base)
    originals, deltas = {}, {}
    for name, module in adapted.named_modules():
        if hasattr(module, "lora_A") and module.lora_A:
            key = name.removeprefix("base_model.model.") + ".weight"
            originals[key] = module.base_layer.weight.detach().float().clone()
            deltas[key] = module.get_delta_weight(module.active_adapters[0]).detach().float()
    return originals, deltas


def relative_error(state: dict[str, torch.Tensor], originals: dict, deltas: dict) -> float:
    error = sum(((state[k].float() - (originals[k] + deltas[k])) ** 2).sum().item() for k in deltas)
    return (error / sum((d ** 2).sum().item() for d in deltas.values())) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "export_fidelity.txt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.run is None:
            from export.embedded_run import embedded_adapter_run

            run_dir, what = embedded_adapter_run(Path(scratch)), "SmolLM2-135M-Instruct + random r=8 q/v adapter"
        else:
            run_dir, what = args.run, f"run {args.run.name}"
        run = read_finished_run(run_dir)
        originals, deltas = lora_weights(run)
        rows = []
        for format, kind in FORMATS:
            quant, dtype = (kind, "auto") if format == "gguf" else ("f16", kind)
            started = time.perf_counter()
            result = export_run(run.run_dir, ExportRequest(format, output=Path(scratch) / f"{format}-{kind}",
                                                           quant=quant, dtype=dtype))
            seconds = time.perf_counter() - started
            gguf_name = next((p.name for p in result.output.glob("*.gguf")), None)
            state = read_back(result.output, gguf_name).state_dict()
            size = sum(p.stat().st_size for p in result.output.iterdir() if p.suffix in (".safetensors", ".gguf"))
            fidelity = json.loads((result.output / "lorakit_export.json").read_text())["fidelity"]
            rows.append((f"{format} {kind}", relative_error(state, originals, deltas), fidelity, size / 2**20, seconds))
            del state
    first = rows[0][2]
    lines = [f"{what}; {len(deltas)} LoRA matrices; fidelity over {first['answer_tokens']} answer tokens of "
             f"{first['questions']} {first['source']}",
             f"{'format':<13} {'|dW|/|delta|':>12} {'agreement':>9} {'max|dlogit|':>11} {'mean|dlogit|':>12} "
             f"{'MiB':>7} {'export s':>8}"]
    lines += [f"{name:<13} {error:>12.4f} {f['token_agreement']:>9.1%} {f['max_logit_diff']:>11.3f} "
              f"{f['mean_logit_diff']:>12.3f} {mib:>7.1f} {s:>8.1f}" for name, error, f, mib, s in rows]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
