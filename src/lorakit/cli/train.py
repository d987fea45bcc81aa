"""`lorakit train CONFIG`."""
