"""Training: data preparation, the loop, its schedule, early stopping, metrics and checkpoints."""
