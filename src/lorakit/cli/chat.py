"""`lorakit chat RUN_DIR`."""
