"""Inference: load a run's adapter over its base model, generate (streamed) answers, serve them."""
