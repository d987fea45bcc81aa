"""Process-level concerns: device and dtype choice, seeding, logging."""
