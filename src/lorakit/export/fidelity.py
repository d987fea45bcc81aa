"""How close an exported model stays to the run it came from, measured at export time on the exported files.

The reference is the run as `lorakit chat` runs it on a CPU: the base model in float32 with the adapter on top
(peft, unmerged). It answers a few questions greedily (the run's own test questions, else FIXED_QUESTIONS);
then the reference and the exported model (read back from the files just written: the merged folder, or the
.gguf through transformers' GGUF loader, which de-quantizes q8_0/q4_0 with gguf-py) both read each prompt +
answer in one teacher-forced pass. Compared at every answer position:
- max_logit_diff: the largest |logit difference| over the whole vocabulary and every answer position;
- mean_logit_diff: the mean over answer positions of that position's largest |logit difference|;
- token_agreement: the share of answer positions where both models' most likely next token is the same.
Teacher forcing keeps both models on the same text, so one early disagreement is counted once instead of
sending the rest of a free-running answer down another path. The exported model computes in float32, so the
numbers measure what storing the weights (16-bit, quantized) lost, not a runtime's arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lorakit.data.records import Message
from lorakit.errors import LorakitError
from lorakit.run.source import RunSource
from lorakit.runtime.logging import get_logger

__all__ = ["FIXED_QUESTIONS", "MIN_AGREEMENT", "ReferenceAnswers", "Fidelity", "fidelity_questions",
           "reference_answers", "measure_fidelity", "skipped_fidelity", "read_back", "fidelity_card_lines"]

log = get_logger("export.fidelity")

QUESTIONS = 4  # few and short: export on the demo run stays quick on a CPU
ANSWER_TOKENS = 32
FIXED_QUESTIONS = ("What are the common warning signs of a stroke?", "What is the normal range for adult blood pressure?",
                   "How does insulin lower blood glucose?", "What is the difference between a virus and a bacterium?")
# Issue 25's targets on the demo run: 16-bit exports agree on >= 99% of tokens, q8_0 on >= 95%.
MIN_AGREEMENT = {"merged": 0.99, "f16": 0.99, "q8_0": 0.95, "q4_0": 0.85}
METHOD = ("teacher-forced on the run's own greedy answers (base + adapter, float32, as `lorakit chat` runs it on "
          "a CPU); the exported model read back from its files and computed in float32")


@dataclass(frozen=True)
class ReferenceAnswers:
    """The reference's greedy answers (prompt + answer ids) and its logits at each answer position."""

    questions: list[str]
    source: str  # "test split" or "fixed questions" (and why)
    sequences: list[list[int]]
    prompt_lengths: list[int]
    logits: list[torch.Tensor]  # [answer tokens, vocab] float32, position i predicts answer token i


@dataclass(frozen=True)
class Fidelity:
    questions: int
    source: str
    answer_tokens: int
    max_logit_diff: float
    mean_logit_diff: float
    token_agreement: float
    min_agreement: float
    method: str = METHOD

    @property
    def warning(self) -> str | None:
        if self.token_agreement >= self.min_agreement:
            return None
        return (f"The exported model agrees with the run on only {self.token_agreement:.1%} of greedy tokens "
                f"(threshold {self.min_agreement:.0%}): its answers differ from the evaluated model's; the eval and "
                "safety numbers do not describe it. A higher-precision --quant or --dtype keeps more of the fine-tune.")

    def summary(self) -> str:
        return (f"fidelity: {self.token_agreement:.1%} greedy token agreement with the run (threshold "
                f"{self.min_agreement:.0%}), logit difference max {self.max_logit_diff:.3f} mean "
                f"{self.mean_logit_diff:.3f}, over {self.answer_tokens} answer tokens of {self.questions} "
                f"{self.source}")

    def to_json(self) -> dict:
        return {**asdict(self), "skipped": False, "warning": self.warning}


def skipped_fidelity() -> dict:
    return {"skipped": True, "warning": "--skip-fidelity: this export was not compared with the run."}


def _test_questions(run: RunSource, tokenizer) -> list[str]:
    from lorakit.data.splits import split_conversations
    from lorakit.training.dataset import read_train_conversations

    config = run.config
    # a broken train file reads "...; the test questions were not read", not "training did not start"
    conversations, report = read_train_conversations(config, tokenizer, action="the test questions were not read")
    if report.data_sha256 != run.manifest["data"].get("sha256"):
        raise ValueError("the data files changed since training")
    test = split_conversations(conversations, config.data.validation_split, config.data.test_split, config.seed).test
    return [c.messages[-2].content for c in test if len(c.messages) >= 2 and c.messages[-2].role == "user"]


def fidelity_questions(run: RunSource, tokenizer) -> tuple[list[str], str]:
    """The run's first QUESTIONS test questions, else FIXED_QUESTIONS with a WARNING saying why."""
    try:
        questions = _test_questions(run, tokenizer)[:QUESTIONS]
        reason = "the test split is empty"
    except (LorakitError, OSError, ValueError) as exc:
        questions, reason = [], str(exc).splitlines()[0]
    if questions:
        return questions, "test questions"
    log.warning("export fidelity uses %d fixed questions: %s", len(FIXED_QUESTIONS), reason)
    return list(FIXED_QUESTIONS), f"fixed questions ({reason})"


@torch.no_grad()
def reference_answers(run: RunSource, tokenizer, adapted) -> ReferenceAnswers:
    """Greedy answers of `adapted` (the float32 base with the run's adapter, before merging) and its logits."""
    from lorakit.data.render import render_prompt_ids
    from lorakit.export.stop_tokens import stop_token_ids
    from lorakit.inference.decode import GenerationSettings, decode_batch

    questions, source = fidelity_questions(run, tokenizer)
    prompts = [render_prompt_ids((Message("user", q),), tokenizer, run.system_prompt) for q in questions]
    settings = GenerationSettings(ANSWER_TOKENS, 0.0, 1.0, run.config.inference.repetition_penalty)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    decoded = decode_batch(adapted, prompts, settings, stop_ids=stop_token_ids(tokenizer, adapted.generation_config.eos_token_id),
                           pad_id=pad, device=torch.device("cpu"))
    sequences = [prompt + list(answer.token_ids) for prompt, answer in zip(prompts, decoded)]
    logits = [_answer_logits(adapted, sequence, len(prompt)) for sequence, prompt in zip(sequences, prompts)]
    return ReferenceAnswers(questions, source, sequences, [len(p) for p in prompts], logits)


def _answer_logits(model, sequence: list[int], prompt_length: int) -> torch.Tensor:
    ids = torch.tensor([sequence])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
    return logits[prompt_length - 1: len(sequence) - 1]


@torch.no_grad()
def measure_fidelity(reference: ReferenceAnswers, exported, label: str) -> Fidelity:
    """Compare `exported` (a float32 transformers model read back from the export) with the reference;
    `label` is "merged" or the GGUF quant, which picks the warning threshold."""
    exported.eval()
    largest, per_position, agree, total = 0.0, [], 0, 0
    for sequence, prompt_length, expected in zip(reference.sequences, reference.prompt_lengths, reference.logits):
        got = _answer_logits(exported, sequence, prompt_length)
        difference = (got - expected).abs().amax(dim=-1)
        largest = max(largest, difference.max().item())
        per_position += difference.tolist()
        agree += (got.argmax(-1) == expected.argmax(-1)).sum().item()
        total += expected.shape[0]
    return Fidelity(len(reference.questions), reference.source, total, round(largest, 4),
                    round(sum(per_position) / total, 4), round(agree / total, 4), MIN_AGREEMENT[label])


def read_back(folder: Path, gguf_name: str | None):
    """The exported model as transformers loads it, in float32: the merged folder, or the .gguf de-quantized."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if gguf_name is None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_kernels=False)
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_name)
    if config.model_type == "phi3":
        # transformers' phi3 GGUF mapping drops rope.dimension_count; give a Phi-4 partial rotary factor back.
        import gguf

        rope_dims = gguf.GGUFReader(folder / gguf_name).get_field("phi3.rope.dimension_count").contents()
        config.rope_parameters["partial_rotary_factor"] = rope_dims / (config.hidden_size // config.num_attention_heads)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name, config=config, dtype=torch.float32,
                                                use_kernels=False)


def fidelity_card_lines(fidelity: dict, dtype: str | None) -> list[str]:
    """The model card's account of `fidelity` (Fidelity.to_json() or skipped_fidelity())."""
    stored = [f"- Weights stored as {dtype}" + (" (lossy: see the note above)." if dtype == "bfloat16" else ".")] if dtype else []
    if fidelity["skipped"]:
        return [*stored, "- Not measured: the export was made with `--skip-fidelity`."]
    lines = [*stored,
             f"- Greedy token agreement with the run: **{fidelity['token_agreement']:.1%}** (threshold "
             f"{fidelity['min_agreement']:.0%}) over {fidelity['answer_tokens']} answer tokens of "
             f"{fidelity['questions']} {fidelity['source']}.",
             f"- Logit difference: max {fidelity['max_logit_diff']:.3f}, mean of each position's largest "
             f"{fidelity['mean_logit_diff']:.3f}.",
             f"- How: {fidelity['method']}."]
    if fidelity["warning"]:
        lines.append(f"- **Warning:** {fidelity['warning']}")
    return lines
