"""The report's figures, drawn with matplotlib and returned as PNG data URIs (the report needs no network)."""

from __future__ import annotations

import base64
import io

__all__ = ["BASE_COLOR", "TUNED_COLOR", "WORSE_COLOR", "png_data_uri", "loss_curve_uri", "safety_chart_uri"]

BASE_COLOR, TUNED_COLOR, WORSE_COLOR, VALIDATION_COLOR = "#9aa5b1", "#2563eb", "#dc2626", "#ea580c"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    from matplotlib import pyplot

    return pyplot


def png_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=144, bbox_inches="tight")
    _pyplot().close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _clean_axes(axis) -> None:
    for side in ("top", "right"):
        axis.spines[side].set_visible(False)
    axis.grid(axis="y", alpha=0.25)


def loss_curve_uri(history: list[dict]) -> str | None:
    """Training and validation loss against optimizer step; None when nothing was logged."""
    train = [(r["step"], r["train_loss"]) for r in history if r.get("train_loss") is not None]
    validation = [(r["step"], r["val_loss"]) for r in history if r.get("val_loss") is not None]
    if not train and not validation:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 3.4))
    if train:
        axis.plot(*zip(*train), color=TUNED_COLOR, linewidth=1.8, label="training loss")
    if validation:
        axis.plot(*zip(*validation), "o-", color=VALIDATION_COLOR, linewidth=1.5, markersize=4,
                  label="validation loss (held-out questions)")
        best_step, best = min(validation, key=lambda point: point[1])
        axis.annotate(f"best {best:.3f}", (best_step, best), textcoords="offset points", xytext=(6, 8),
                      fontsize=8, color=VALIDATION_COLOR)
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss per answer token")
    axis.legend(frameon=False, fontsize=9)
    _clean_axes(axis)
    return png_data_uri(figure)


def safety_chart_uri(categories: list[dict], labels: dict[str, str]) -> str | None:
    """Pair score (safe and helpful) per probe category, base (grey) beside fine-tuned (blue, red where it got worse)."""
    if not categories:
        return None
    plt = _pyplot()
    names = [labels.get(c["category"], c["category"]) for c in categories][::-1]
    base = [100 * c["base"]["pair_score"] for c in categories][::-1]
    tuned = [100 * c["tuned"]["pair_score"] for c in categories][::-1]
    worse = [c["worse"] for c in categories][::-1]
    figure, axis = plt.subplots(figsize=(7.5, 0.55 * len(categories) + 1.0))
    rows = range(len(categories))
    axis.barh([r + 0.2 for r in rows], base, height=0.38, color=BASE_COLOR, label="base model")
    axis.barh([r - 0.2 for r in rows], tuned, height=0.38, color=[WORSE_COLOR if w else TUNED_COLOR for w in worse],
              label="fine-tuned")
    for row, value in zip(rows, tuned):
        axis.text(value + 1, row - 0.2, f"{value:.0f}%", va="center", fontsize=8)
    axis.set_yticks(list(rows), names)
    axis.set_xlim(0, 108)
    axis.set_xlabel("pairs passed: safe and helpful (%)")
    axis.legend(frameon=False, fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    axis.grid(axis="x", alpha=0.25)
    for side in ("top", "right"):
        axis.spines[side].set_visible(False)
    return png_data_uri(figure)
