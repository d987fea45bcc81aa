"""An optional second opinion on the safety answers: a judge model grades each one against its probe's rubric,
and the evaluation reports how often it agrees with the rules (Cohen's kappa) and every answer where it does not.

The rules stay the verdict of record: they are deterministic, need no second model, and are tested against an
adversarial set (tests/evaluation/adversarial_answers.py). The judge reads meaning the patterns may miss, but can
be lenient, inconsistent or fooled; where the two disagree, a clinician reads the answer and decides. So the
judge never changes a score. It only adds eval.json's safety.judge section (and a verdict beside each answer in
safety_answers.jsonl). A judge that cannot give a verdict on some answer (timeout, refusal, unreadable reply)
stops the evaluation with an error naming the judge and the probe: a missing verdict is never a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lorakit.errors import JudgeError
from lorakit.evaluation.agreement import agreement_table
from lorakit.evaluation.judge_client import TIMED_OUT, Judge, JudgeSpec
from lorakit.evaluation.judge_prompt import SYSTEM_PROMPT, JudgeVerdict, VerdictError, grading_messages, parse_verdict
from lorakit.evaluation.safety import Probe, ProbeScore

__all__ = ["AnswerToJudge", "JudgedAnswer", "judge_answers", "judge_section", "judge_rows", "judge_answer_sets"]

Progress = Callable[[str, int, int], None]
_REPLY_SHOWN = 200  # characters of an unreadable reply quoted in the error
_NOT_A_PASS = ("The rules' verdicts are not used in its place. Use a judge that follows instructions (an instruct "
               "model of several billion parameters), or run without --judge: the rules need nothing.")


@dataclass(frozen=True)
class AnswerToJudge:
    model: str  # "base", "tuned", or a label from `lorakit eval score`
    probe: Probe
    answer: str
    rules_passed: bool
    rules_failed: tuple[str, ...]


@dataclass(frozen=True)
class JudgedAnswer:
    item: AnswerToJudge
    verdict: JudgeVerdict

    @property
    def disagrees(self) -> bool:
        return self.item.rules_passed != self.verdict.passed


def _no_verdict(judge: Judge, item: AnswerToJudge, problem: str, timeout_s: float | None) -> JudgeError:
    where = f"probe {item.probe.id} (the {item.model} model's answer)"
    tries = f"{judge.attempts} attempt{'s' if judge.attempts > 1 else ''}"
    if problem == "timeout":
        return JudgeError(f"judge {judge.name} did not answer within {timeout_s:g} s on {where}, {tries}.",
                          hint="Raise --judge-timeout, or use a faster judge. " + _NOT_A_PASS)
    return JudgeError(f"judge {judge.name} gave no verdict on {where} after {tries}: {problem}.", hint=_NOT_A_PASS)


def judge_answers(judge: Judge, items: Sequence[AnswerToJudge], *, timeout_s: float | None = None,
                  progress: Progress | None = None) -> list[JudgedAnswer]:
    """The judge's verdict on every answer, in order. An unreadable or missing reply is asked again at once, up to
    `judge.attempts` times in all; then JudgeError names the judge and the probe (a judge that answers garbage
    stops the eval at its first answers, not after hundreds of requests)."""
    progress = progress or (lambda stage, done, total: None)
    verdicts: list[JudgeVerdict | None] = [None] * len(items)
    problems: dict[int, str] = {}
    progress("judge", 0, len(items))
    for start in range(0, len(items), judge.batch_size):
        chunk = list(range(start, min(start + judge.batch_size, len(items))))
        for _ in range(judge.attempts):
            replies = judge.replies([grading_messages(items[i].probe, items[i].answer) for i in chunk])
            for i, reply in zip(chunk, replies):
                if reply is TIMED_OUT:
                    problems[i] = "timeout"
                    continue
                try:
                    verdicts[i] = parse_verdict(reply, items[i].probe)
                except VerdictError as exc:
                    problems[i] = f"{exc}; it replied {reply[:_REPLY_SHOWN]!r}"
            chunk = [i for i in chunk if verdicts[i] is None]
            if not chunk:
                break
        if chunk:
            raise _no_verdict(judge, items[chunk[0]], problems[chunk[0]], timeout_s)
        progress("judge", min(start + judge.batch_size, len(items)), len(items))
    return [JudgedAnswer(item, verdict) for item, verdict in zip(items, verdicts)]


def _disagreement(judged: JudgedAnswer) -> dict:
    item = judged.item
    return {"probe_id": item.probe.id, "category": item.probe.category, "kind": item.probe.kind, "model": item.model,
            "prompt": item.probe.prompt, "answer": item.answer,
            "rules": {"passed": item.rules_passed, "failed_items": list(item.rules_failed)},
            "judge": judged.verdict.to_json()}


def judge_section(judge: Judge, spec: JudgeSpec, judged: Sequence[JudgedAnswer]) -> dict:
    """eval.json's safety.judge: who judged, agreement with the rules overall and per model, the disagreements."""
    models = list(dict.fromkeys(j.item.model for j in judged))
    return {
        "judge": judge.name,
        "source": spec.source,
        "instructions": SYSTEM_PROMPT,
        "answers": len(judged),
        "agreement": agreement_table((j.item.rules_passed, j.verdict.passed) for j in judged).to_json(),
        "by_model": {m: agreement_table((j.item.rules_passed, j.verdict.passed) for j in judged if j.item.model == m)
                     .to_json() for m in models},
        "disagreements": [_disagreement(j) for j in judged if j.disagrees],
    }


def judge_rows(judge: Judge, spec: JudgeSpec, rows: list[dict], probes: Mapping[str, Probe], models: Sequence[str],
               progress: Progress | None = None) -> dict:
    """Judge the answers of safety_answers.jsonl's rows (row[model] holds answer, passed, failed_rules), write each
    verdict beside its answer as row[model]['judge'], and return eval.json's safety.judge section."""
    items = [AnswerToJudge(model, probes[row["id"]], row[model]["answer"], row[model]["passed"],
                           tuple(row[model]["failed_rules"])) for row in rows for model in models]
    judged = judge_answers(judge, items, timeout_s=spec.timeout_s if spec.is_url else None, progress=progress)
    for index, result in enumerate(judged):
        rows[index // len(models)][result.item.model]["judge"] = result.verdict.to_json()
    return judge_section(judge, spec, judged)


def judge_answer_sets(judge: Judge, spec: JudgeSpec, probes: Sequence[Probe], answers: Mapping[str, Mapping[str, str]],
                      scores: Mapping[str, Mapping[str, ProbeScore]], progress: Progress | None = None) -> dict:
    """`lorakit eval score --judge`: judge every answer of every model label (label -> probe id -> answer, and the
    rules' verdicts in the same shape) and return the judge section of its JSON document."""
    by_id = {p.id: p for p in probes}
    items = [AnswerToJudge(model, by_id[probe_id], text, scores[model][probe_id].passed, scores[model][probe_id].failed)
             for model, texts in answers.items() for probe_id, text in texts.items()]
    judged = judge_answers(judge, items, timeout_s=spec.timeout_s if spec.is_url else None, progress=progress)
    return judge_section(judge, spec, judged)
