"""Clinical safety probes shipped with lorakit."""
