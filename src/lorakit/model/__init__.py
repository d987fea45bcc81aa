"""Base model and tokenizer loading, quantization and LoRA adapters."""
