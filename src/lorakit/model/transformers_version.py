"""The oldest transformers lorakit runs a model with, checked before a model is loaded.

transformers 5.24 renamed `past_key_values` to `cache` (the model's keyword and its outputs' field), which lorakit's
decoding uses (inference/decode.py, inference/running_batch.py); with 5.18 to 5.23 (those that install next to
huggingface_hub 2.x) a model loads and then fails with an AttributeError in the first answer. Reading only the
tokenizer or config.json (`lorakit data`, `lorakit plan`) works with older releases, so only a model load checks.
"""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

from lorakit.errors import ModelLoadError

__all__ = ["MIN_TRANSFORMERS", "require_supported_transformers"]

MIN_TRANSFORMERS = "5.24.0"  # keep in step with pyproject.toml's transformers>=


def require_supported_transformers(installed: str | None = None) -> None:
    """A ModelLoadError saying which transformers lorakit needs and how to get it, when the installed one (or
    `installed`) is older than MIN_TRANSFORMERS.

    >>> require_supported_transformers("5.25.0")
    >>> require_supported_transformers("5.23.0")
    Traceback (most recent call last):
    ...
    lorakit.errors.ModelLoadError: lorakit needs transformers>=5.24.0; you have 5.23.0.
    pip install -U transformers
    """
    installed = installed or version("transformers")
    if Version(installed).release < Version(MIN_TRANSFORMERS).release:  # a 5.24 pre-release has the rename too
        raise ModelLoadError(
            f"lorakit needs transformers>={MIN_TRANSFORMERS}; you have {installed}.", hint="pip install -U transformers"
        )
