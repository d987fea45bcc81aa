"""Library logging: plain text through the `lorakit` logger; the CLI decides how it is shown."""

from __future__ import annotations

import logging

__all__ = ["get_logger"]


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"lorakit.{name}" if not name.startswith("lorakit") else name)
