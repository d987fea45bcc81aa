"""Evaluation: held-out loss, answer quality, clinical safety probes, and the run report."""
