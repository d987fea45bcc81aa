"""The report's knowledge section: base vs fine-tuned accuracy per benchmark, with intervals and controls.

Rendered apart from report_template.html (which the page includes as one fragment), with the same escaping,
so the knowledge table can change without touching the rest of the page.
"""

from __future__ import annotations

from markupsafe import Markup

__all__ = ["knowledge_html", "knowledge_markdown"]

_TEMPLATE = """
<section id="knowledge">
<h2>Medical knowledge (multiple choice)</h2>
{% if knowledge %}
<p class="lead">Zero-shot multiple choice on public benchmarks shipped with lorakit: each option's letter is scored by
its likelihood after the question, rendered with the run's chat template and system prompt.
{% if knowledge.limit_per_benchmark %}<strong>A fixed sample of at most {{ knowledge.limit_per_benchmark }} items per
benchmark</strong> (<code>--limit</code>); intervals are wide.{% else %}Every shipped item.{% endif %}
Accuracy is shown with its 95% bootstrap interval; the verdict needs McNemar's paired test at p &lt; 0.05.
{% if knowledge.get('precision', '').startswith('bfloat16') %}<strong>Scored in bfloat16</strong>
(<code>--knowledge-bf16</code>): faster, but some near-tied answers differ from the model's own precision.{% endif %}</p>
<table>
  <tr><th>Benchmark</th><th>Items</th><th>Base model</th><th>Fine-tuned</th><th>Change [95% interval]</th>
      <th>Chance / best constant answer</th><th>McNemar p</th><th>Verdict</th></tr>
  {% for b in knowledge.benchmarks %}
  <tr><td>{{ b.label }}</td><td>{{ b['items'] }}</td>
    <td>{{ pct(b.base.accuracy) }} <span style="color:var(--muted)">[{{ pct(b.base.ci95[0]) }}, {{ pct(b.base.ci95[1]) }}]</span></td>
    <td>{{ pct(b.tuned.accuracy) }} <span style="color:var(--muted)">[{{ pct(b.tuned.ci95[0]) }}, {{ pct(b.tuned.ci95[1]) }}]</span></td>
    <td>{{ "%+.1f"|format(100 * b.difference.value) }} pts <span style="color:var(--muted)">[{{ "%+.1f"|format(100 * b.difference.ci95[0]) }},
        {{ "%+.1f"|format(100 * b.difference.ci95[1]) }}]</span></td>
    <td>{{ pct(b.controls.chance) }} / {{ pct(b.controls.best_constant) }} (always {{ b.controls.best_constant_letter }})</td>
    <td>{{ "%.3f"|format(b.mcnemar.p_value) }} <span style="color:var(--muted)">({{ b.mcnemar.base_only_correct }} lost,
        {{ b.mcnemar.tuned_only_correct }} gained)</span></td>
    <td><span class="badge {{ {'gained': 'better', 'lost': 'worse'}.get(b.verdict, 'same') }}">{{ b.verdict }}</span></td></tr>
  {% endfor %}
</table>
<p class="lead">A model near chance or near the best constant answer knows little that this test can see; small
models (about 100M parameters) sit there. These questions test recall of textbook facts, not clinical competence.</p>
{% else %}
<div class="empty">Medical knowledge has not been measured for this adapter. Run <code>lorakit eval {{ run_dir }} --knowledge</code>.</div>
{% endif %}
</section>
"""


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def knowledge_html(knowledge: dict | None, run_dir: str) -> Markup:
    """The section as safe HTML for report_template.html (values escaped by the template engine)."""
    from jinja2 import Environment, StrictUndefined, select_autoescape

    environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True),
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = environment.from_string(_TEMPLATE)
    return Markup(template.render(knowledge=knowledge, run_dir=run_dir, pct=_percent))


def knowledge_markdown(knowledge: dict) -> list[str]:
    """The knowledge table for a model card (Markdown lines), intervals and controls included."""
    limit = knowledge["limit_per_benchmark"]
    sample = f"a fixed sample of at most {limit} items per benchmark" if limit else "every shipped item"
    if knowledge.get("precision", "").startswith("bfloat16"):  # older eval.json files have no precision
        sample += "; scored in bfloat16, where some near-tied answers differ from float32"
    rows = ["| benchmark | items | base [95% CI] | fine-tuned [95% CI] | chance / best constant | McNemar p | verdict |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for b in knowledge["benchmarks"]:
        base, tuned, c = b["base"], b["tuned"], b["controls"]
        rows.append(f"| {b['label']} | {b['items']} | {_percent(base['accuracy'])} [{_percent(base['ci95'][0])}, "
                    f"{_percent(base['ci95'][1])}] | {_percent(tuned['accuracy'])} [{_percent(tuned['ci95'][0])}, "
                    f"{_percent(tuned['ci95'][1])}] | {_percent(c['chance'])} / {_percent(c['best_constant'])} | "
                    f"{b['mcnemar']['p_value']:.3f} | {b['verdict']} |")
    return [f"Medical knowledge (zero-shot multiple choice by option likelihood, {sample}; multiple-choice recall, "
            "not clinical competence):", "", *rows]
