"""The run folder (a training run's output_dir): its layout, checkpoints, manifest, adapter file record, lock,
model card, and the one reader every later command uses. Training writes the folder through this package;
evaluation, export, inference, serve, the studio and the report read it only through it."""
