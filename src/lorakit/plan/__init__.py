"""The memory planner: from a model's config.json and a run config to the settings that fit a GPU (or a CPU's
RAM) and how fast they run, and what to change after an out-of-memory error. Numbers, not tensors: it reads
model shapes, never loads weights."""
