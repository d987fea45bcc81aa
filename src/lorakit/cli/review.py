"""`lorakit review export RUN`: a clinician's reviews of a run become SFT rows and preference pairs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from lorakit.cli.console import console

review_app = typer.Typer(help="Turn reviews of a run's answers into training data.", no_args_is_help=True)


@review_app.command("export")
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="output_dir of a training run (holds review.jsonl)."),
    sft: Path | None = typer.Option(None, "--sft", help="Write corrected answers here as instruction/response rows."),
    preferences: Path | None = typer.Option(None, "--preferences", help="Write (better, worse) answer pairs here "
                                            "as prompt/chosen/rejected rows."),
    conversational: bool = typer.Option(False, "--conversational", help="Write pairs as message lists (TRL's "
                                        "conversational form) instead of plain text."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist."),
) -> None:
    """Corrected answers -> SFT rows; corrected or good vs bad answers -> preference pairs. Safety probes are never
    exported (the eval would grade answers the model trained on): they are listed as refused."""
    from lorakit.review.export import export_reviews

    result = export_reviews(run_dir, sft, preferences, conversational=conversational, overwrite=overwrite)
    if sft is not None:
        console.print(Text(f"{sft}: {len(result.sft_rows)} SFT rows (corrected answers)"), highlight=False,
                      soft_wrap=True)
    if preferences is not None:
        console.print(Text(f"{preferences}: {len(result.preference_rows)} preference pairs"), highlight=False,
                      soft_wrap=True)
    for refused in result.refused:
        console.print(Text(f"refused {refused.item_id}: safety probe {', '.join(refused.probe_ids)} (an evaluated "
                           "probe never becomes training data)", style="yellow"), highlight=False, soft_wrap=True)
    for item in dict.fromkeys(result.contradictory):
        console.print(Text(f"skipped {item}: the answer judged good and the one judged bad are the same text",
                           style="yellow"), highlight=False, soft_wrap=True)
