"""The studio's training presets: named sets of `--set` overrides, defined here and nowhere else.

A preset is only a list of overrides on top of the config's defaults (config.py), so a run made from the page
is a YAML file that `lorakit train` runs the same way.
"""

from __future__ import annotations

__all__ = ["PRESETS", "DEFAULT_PRESET", "preset_overrides"]

PRESETS: dict[str, dict[str, tuple[str, ...] | str]] = {
    "quick": {
        "description": "A first look: 30 steps, rank 8; minutes on a GPU.",
        "overrides": ("training.max_steps=30", "lora.r=8", "lora.alpha=16", "training.eval_steps=10",
                      "training.save_steps=10", "training.logging_steps=5"),
    },
    "balanced": {
        "description": "The config's defaults: 100 steps, rank 16.",
        "overrides": (),
    },
    "thorough": {
        "description": "300 steps, rank 32, early stopping on the validation loss.",
        "overrides": ("training.max_steps=300", "lora.r=32", "lora.alpha=64", "training.eval_steps=25",
                      "training.save_steps=25", "training.early_stopping_patience=3"),
    },
}
DEFAULT_PRESET = "balanced"


def preset_overrides(name: str) -> list[str]:
    """The overrides of preset `name`; a ConfigError naming the choices for an unknown one.

    >>> preset_overrides("quick")[0]
    'training.max_steps=30'
    """
    from lorakit.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError("preset", [f"'{name}' is not one of {', '.join(PRESETS)}"])
    return list(PRESETS[name]["overrides"])
