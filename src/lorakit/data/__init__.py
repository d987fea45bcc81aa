"""Pure data transforms: JSONL records -> conversations -> token ids + loss labels -> batches. No model, no GPU."""
